"""Vectors: a customer's indexes (config in the main database, vectors in a
backend), the Vectorize operations over them, and the text convenience that
embeds through the inference service's charge path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import FunctionType
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import conflict, invalid
from tollway.core.ids import new_id
from tollway.core.schema import vector_indexes as T
from tollway.core.storage import sqlite_path
from tollway.vectors import shapes as S
from tollway.vectors.config import VectorsSettings

if TYPE_CHECKING:
    import numpy as np

    from tollway.inference.service import Caller, Inference
    from tollway.vectors.backends.base import Backend


def data_dir(settings: VectorsSettings, engine: AsyncEngine) -> Path:
    if settings.vectors.path:
        return Path(settings.vectors.path)
    db = sqlite_path(engine)
    if db and db != ":memory:":
        return Path(db).resolve().parent / "vectors"
    return Path(".tollway/vectors")


def make_backend(settings: VectorsSettings, engine: AsyncEngine) -> Callable[[], Backend]:
    """The configured backend's maker: the configuration is checked now, the
    backend (and numpy, usearch or pgvector's driver) is made on first use."""
    if settings.vectors.backend == "pgvector":
        from tollway.core.config import ConfigError

        url = settings.vectors.pgvector_url or settings.database.url
        if not url.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
            raise ConfigError(
                "tollway.toml", "vectors.pgvector_url", 'backend = "pgvector" needs a postgresql:// URL'
            )

        def pgvector() -> Backend:
            from tollway.vectors.backends.pgvector import PgVector

            return PgVector(url)

        return pgvector
    root = data_dir(settings, engine)

    def embedded() -> Backend:
        from tollway.vectors.backends.embedded import Embedded

        return Embedded(root)

    return embedded


class Vectors:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        backend: Backend | Callable[[], Backend],
        inference: Inference | None = None,
        embeddings_model: str = "all-minilm-l6-v2",
    ) -> None:
        """``backend``: the backend, or a function making it on first use (so a
        server that never touches vectors never imports numpy or usearch)."""
        self.engine, self.clock = engine, clock
        self._backend: Backend | None = None
        self._make_backend: Callable[[], Backend] | None = None
        if isinstance(backend, FunctionType):
            self._make_backend = cast("Callable[[], Backend]", backend)
        else:
            self._backend = cast("Backend", backend)
        self.inference = inference
        self.embeddings_model = embeddings_model
        self._cache: dict[tuple[str, str], S.IndexInfo] = {}

    # ------------------------------------------------------------ indexes

    async def create_index(
        self, customer_id: str, name: Any, dimensions: Any, metric: Any, description: str = ""
    ) -> S.IndexInfo:
        name = S.check_name(name)
        dims, met = S.check_config(dimensions, metric)
        if not isinstance(description, str) or len(description) > 500:
            raise invalid(
                "invalid_description", "description is a string of at most 500 characters", "description"
            )
        info = S.IndexInfo(new_id("vix"), customer_id, name, dims, met, description, self.clock.now_us())
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    T.insert().values(
                        id=info.id,
                        customer_id=customer_id,
                        name=name,
                        dimensions=dims,
                        metric=met,
                        description=description,
                        created_at_us=info.created_at_us,
                    )
                )
        except IntegrityError:
            raise conflict("index_exists", f"an index named {name!r} exists", "name") from None
        await self.backend.create(info)
        self._cache[(customer_id, name)] = info
        return info

    async def list_indexes(self, customer_id: str) -> list[S.IndexInfo]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(sa.select(T).where(T.c.customer_id == customer_id).order_by(T.c.name))
            ).all()
        return [_info(r) for r in rows]

    async def index(self, customer_id: str, name: str, param: str = "index") -> S.IndexInfo:
        info = self._cache.get((customer_id, name))
        if info is not None:
            return info
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(T).where(T.c.customer_id == customer_id, T.c.name == name))
            ).first()
        if row is None:
            raise invalid("unknown_index", f"no index named {name!r}", param)
        info = _info(row)
        self._cache[(customer_id, name)] = info
        return info

    async def describe(self, customer_id: str, name: str) -> dict[str, Any]:
        info = await self.index(customer_id, name)
        return {
            **info.to_dict(),
            "dimensions": info.dimensions,
            "vectorCount": await self.backend.count(info),
            "processedUpToDatetime": S._iso(self.clock.now_us()),
        }

    async def delete_index(self, customer_id: str, name: str) -> None:
        info = await self.index(customer_id, name)
        async with self.engine.begin() as conn:
            await conn.execute(T.delete().where(T.c.id == info.id))
        self._cache.pop((customer_id, name), None)
        await self.backend.drop(info)

    # ------------------------------------------------------------ vectors

    async def insert(self, customer_id: str, name: str, vectors: Any) -> dict[str, Any]:
        return await self._write(customer_id, name, vectors, replace=False)

    async def upsert(self, customer_id: str, name: str, vectors: Any) -> dict[str, Any]:
        return await self._write(customer_id, name, vectors, replace=True)

    async def _write(self, customer_id: str, name: str, vectors: Any, *, replace: bool) -> dict[str, Any]:
        info = await self.index(customer_id, name)
        recs = S.records(vectors, info.dimensions)
        ids = await self.backend.write(info, recs, replace=replace)
        return {"mutationId": new_id("mut"), "count": len(ids), "ids": ids}

    async def get_by_ids(self, customer_id: str, name: str, ids: Any) -> list[dict[str, Any]]:
        info = await self.index(customer_id, name)
        got = await self.backend.get(info, _ids(ids))
        return [
            {
                "id": r.id,
                "namespace": r.namespace or None,
                "values": r.values.tolist(),
                "metadata": r.metadata if r.metadata is not None else {},
            }
            for r in got
        ]

    async def delete_by_ids(self, customer_id: str, name: str, ids: Any) -> dict[str, Any]:
        info = await self.index(customer_id, name)
        done = await self.backend.delete(info, _ids(ids))
        return {"mutationId": new_id("mut"), "count": len(done), "ids": done}

    async def query(
        self,
        customer_id: str,
        name: str,
        vector: Any = None,
        *,
        id: Any = None,
        topK: Any = 5,
        returnValues: Any = False,
        returnMetadata: Any = "none",
        namespace: Any = None,
        filter: Any = None,
        rerank: Any = None,
        mmr_lambda: Any = 0.5,
    ) -> dict[str, Any]:
        """Vectorize's query: by ``vector`` or by the ``id`` of a stored vector."""
        info = await self.index(customer_id, name)
        q = S.query(
            top_k=topK,
            namespace=namespace,
            filter=filter,
            return_values=returnValues,
            return_metadata=returnMetadata,
            rerank=rerank,
            mmr_lambda=mmr_lambda,
        )
        if (vector is None) == (id is None):
            raise invalid("invalid_query", "send a vector or the id of a stored vector", "vector")
        if id is not None:
            got = await self.backend.get(info, [S.check_id(id, "id")])
            if not got:
                raise invalid("unknown_id", f"no vector with id {id!r}", "id")
            vec = got[0].values
        else:
            vec = S.vector(vector, info.dimensions, "vector")
        if q.namespace is not None and not await self.backend.has_namespace(info, q.namespace):
            raise invalid("unknown_namespace", f"the index has no namespace {q.namespace!r}", "namespace")
        return await self._search(info, vec, q)

    async def _search(self, info: S.IndexInfo, vec: np.ndarray, q: S.Query) -> dict[str, Any]:
        if q.rerank == "mmr":
            import numpy as np

            from tollway.vectors import mmr

            fetch = min(max(4 * q.top_k, 40), S.MAX_TOP_K)
            cands = await self.backend.search(info, vec, fetch, q.namespace, q.conds, True)
            mat = np.asarray([m.values for m in cands], dtype=np.float32)
            matches = [cands[i] for i in mmr.select(vec, mat, q.top_k, q.mmr_lambda)]
        else:
            matches = await self.backend.search(info, vec, q.top_k, q.namespace, q.conds, q.return_values)
        for m in matches:
            if not q.return_values:
                m.values = None
            if q.return_metadata == "none":
                m.metadata = None
            elif q.return_metadata == "indexed":
                m.metadata = S.indexed(m.metadata) or {}
            elif m.metadata is None:
                m.metadata = {}
        return {"count": len(matches), "matches": [m.to_dict() for m in matches]}

    # ------------------------------------------------------------ text

    async def _embed(
        self, caller: Caller, texts: list[str], model: str | None
    ) -> tuple[list[list[float]], int]:
        if self.inference is None:
            raise invalid("embeddings_unavailable", "no inference service to embed with", "model")
        cfg = self.inference.model(model or self.embeddings_model, "embeddings")
        vecs, m = await self.inference.embed(caller, cfg, texts)  # charged before the vectors are used
        return vecs, m.charged

    async def upsert_text(
        self, caller: Caller, name: str, items: Any, *, model: str | None = None
    ) -> dict[str, Any]:
        """Embed ``items`` ([{id, text, namespace?, metadata?}]) and upsert them."""
        info = await self.index(caller.customer_id, name)
        if not isinstance(items, list) or not items or len(items) > S.MAX_BATCH:
            raise invalid("invalid_vectors", f"vectors is a list of 1 to {S.MAX_BATCH} items", "vectors")
        texts = []
        for i, it in enumerate(items):
            if not isinstance(it, dict) or not isinstance(it.get("text"), str) or not it["text"]:
                raise invalid("invalid_text", "each item has a non-empty text", f"vectors[{i}].text")
            texts.append(it["text"])
        # Validate ids, namespaces and metadata before paying for embeddings.
        S.records([{**_strip(it), "values": [0.0] * info.dimensions} for it in items], info.dimensions)
        vecs, charged = await self._embed(caller, texts, model)
        if len(vecs[0]) != info.dimensions:
            raise invalid(
                "wrong_dimensions",
                f"the model embeds in {len(vecs[0])} dimensions, the index has {info.dimensions}",
                "model",
            )
        out = await self.upsert(
            caller.customer_id, name, [{**_strip(it), "values": v} for it, v in zip(items, vecs, strict=True)]
        )
        out["charged"] = charged
        return out

    async def query_text(
        self, caller: Caller, name: str, text: Any, *, model: str | None = None, **opts: Any
    ) -> dict[str, Any]:
        info = await self.index(caller.customer_id, name)
        if not isinstance(text, str) or not text:
            raise invalid("invalid_text", "text is a non-empty string", "text")
        S.query(**{_snake.get(k, k): v for k, v in opts.items()})  # bad options fail before the charge
        vecs, charged = await self._embed(caller, [text], model)
        if len(vecs[0]) != info.dimensions:
            raise invalid(
                "wrong_dimensions",
                f"the model embeds in {len(vecs[0])} dimensions, the index has {info.dimensions}",
                "model",
            )
        out = await self.query(caller.customer_id, name, vecs[0], **opts)
        out["charged"] = charged
        return out

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            assert self._make_backend is not None
            self._backend = self._make_backend()
        return self._backend

    async def close(self) -> None:
        if self._backend is not None:
            await self._backend.close()


_snake = {
    "topK": "top_k",
    "returnValues": "return_values",
    "returnMetadata": "return_metadata",
}


def _strip(it: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in it.items() if k != "text"}


def _ids(ids: Any) -> list[str]:
    if not isinstance(ids, list) or len(ids) > S.MAX_BATCH:
        raise invalid("invalid_ids", f"ids is a list of at most {S.MAX_BATCH} ids", "ids")
    return [S.check_id(v, f"ids[{i}]") for i, v in enumerate(ids)]


def _info(r: Any) -> S.IndexInfo:
    return S.IndexInfo(r.id, r.customer_id, r.name, r.dimensions, r.metric, r.description, r.created_at_us)
