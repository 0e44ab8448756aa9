"""Where an index's vectors live: embedded (usearch + SQLite) or pgvector."""
