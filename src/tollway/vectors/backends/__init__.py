"""Where an index's vectors live: embedded (usearch + SQLite) or pgvector."""

from tollway.core import cxx

cxx.prepare()  # before the backends import usearch: see tollway.core.cxx
