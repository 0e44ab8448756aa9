"""``[vectors]``: vector indexes."""

from __future__ import annotations

from typing import Literal, Protocol

from tollway.core.config import DatabaseConfig, Section


class VectorsConfig(Section):
    """Vector indexes (see tollway.vectors and docs/vectors.md)."""

    backend: Literal["embedded", "pgvector"] = "embedded"
    # embedded: where the index files live; empty = vectors/ beside the SQLite
    # database (or .tollway/vectors with PostgreSQL).
    path: str = ""
    # pgvector: the PostgreSQL (with the vector extension) holding the vectors;
    # empty = the main database.
    pgvector_url: str = ""
    embeddings_model: str = "all-minilm-l6-v2"  # upsert_text / query_text


class VectorsSettings(Protocol):
    """What vectors read of the whole configuration (``tollway.settings.Settings`` is one)."""

    @property
    def vectors(self) -> VectorsConfig: ...

    @property
    def database(self) -> DatabaseConfig: ...
