"""The distributed backend: PostgreSQL with pgvector, one table per index
(``vec_<index id>``: id, namespace, metadata jsonb, vector) with an HNSW index.

Filters are SQL on the jsonb metadata, applied inside the index scan:
``hnsw.iterative_scan = relaxed_order`` keeps scanning the graph until k rows
pass (pgvector's default would stop at ``ef_search`` candidates and return
fewer). If the scan still comes up short (a very selective filter), the
query is answered exactly with the index scan off."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import numpy as np
import orjson

from tollway.vectors import filter as F
from tollway.vectors.backends.base import score
from tollway.vectors.shapes import IndexInfo, Match, Record

_OPS = {
    "cosine": ("<=>", "vector_cosine_ops"),
    "euclidean": ("<->", "vector_l2_ops"),
    "dot-product": ("<#>", "vector_ip_ops"),
}
HNSW_MAX_DIMS = 2000  # pgvector's limit for an HNSW index on vector
EF_SEARCH = 100


def table(info: IndexInfo) -> str:
    return '"vec_' + re.sub(r"[^a-z0-9_]", "_", info.id.lower()) + '"'


def _vec(a: np.ndarray) -> str:
    return orjson.dumps(a, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _dist(metric: str, d: float) -> float:
    """pgvector's distance to usearch's conventions (base.score expects them)."""
    if metric == "euclidean":
        return d * d
    if metric == "dot-product":
        return 1.0 + d  # <#> is the negative inner product
    return d


def where(conds: list[F.Cond], args: list[Any]) -> str:
    """The filter as SQL over ``meta`` (jsonb), its values appended to ``args``."""

    def arg(v: Any, cast: str = "") -> str:
        args.append(v)
        return f"${len(args)}{cast}"

    parts: list[str] = []
    for c in conds:
        x = f"(meta #> {arg(list(c.path), '::text[]')})"
        if c.op in ("$eq", "$ne"):
            j = arg(orjson.dumps(c.value).decode(), "::jsonb")
            parts.append(f"{x} = {j}" if c.op == "$eq" else f"{x} IS DISTINCT FROM {j}")
        elif c.op in ("$in", "$nin"):
            j = arg(orjson.dumps(c.value).decode(), "::jsonb")
            inside = f"({x} IS NOT NULL AND jsonb_build_array({x}) <@ {j} AND jsonb_typeof({x}) <> 'array')"
            parts.append(inside if c.op == "$in" else f"NOT {inside}")
        else:
            sym = {"$lt": "<", "$lte": "<=", "$gt": ">", "$gte": ">="}[c.op]
            if isinstance(c.value, str):
                v = arg(c.value, "::text")
                parts.append(
                    f"(CASE WHEN jsonb_typeof({x}) = 'string' THEN ({x} #>> '{{}}') COLLATE \"C\" {sym} {v}"
                    " ELSE false END)"
                )
            else:
                v = arg(str(c.value), "::numeric")
                parts.append(
                    f"(CASE WHEN jsonb_typeof({x}) = 'number' THEN ({x})::numeric {sym} {v} ELSE false END)"
                )
    return " AND ".join(parts)


class PgVector:
    name = "pgvector"

    def __init__(self, url: str) -> None:
        self.url = url.replace("postgresql+asyncpg://", "postgresql://").replace(
            "postgres://", "postgresql://", 1
        )
        self._pool: asyncpg.Pool | None = None

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=8)
            async with self._pool.acquire() as c:
                await c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return self._pool

    async def create(self, info: IndexInfo) -> None:
        t = table(info)
        pool = await self.pool()
        async with pool.acquire() as c, c.transaction():
            await c.execute(
                f"CREATE TABLE IF NOT EXISTS {t} (id text PRIMARY KEY, ns text NOT NULL,"
                f" meta jsonb, emb vector({info.dimensions}) NOT NULL)"
            )
            await c.execute(f'CREATE INDEX IF NOT EXISTS {t[:-1]}_ns" ON {t} (ns)')
            if info.dimensions <= HNSW_MAX_DIMS:
                ops = _OPS[info.metric][1]
                await c.execute(f'CREATE INDEX IF NOT EXISTS {t[:-1]}_hnsw" ON {t} USING hnsw (emb {ops})')

    async def drop(self, info: IndexInfo) -> None:
        pool = await self.pool()
        await pool.execute(f"DROP TABLE IF EXISTS {table(info)}")

    async def write(self, info: IndexInfo, records: list[Record], *, replace: bool) -> list[str]:
        t = table(info)
        conflict = (
            "DO UPDATE SET ns = EXCLUDED.ns, meta = EXCLUDED.meta, emb = EXCLUDED.emb"
            if replace
            else "DO NOTHING"
        )
        pool = await self.pool()
        async with pool.acquire() as c, c.transaction():
            rows = await c.fetch(
                f"INSERT INTO {t} (id, ns, meta, emb) SELECT i, n, m::jsonb, e::vector"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(i, n, m, e)"
                f" ON CONFLICT (id) {conflict} RETURNING id",
                [r.id for r in records],
                [r.namespace for r in records],
                [None if r.metadata is None else orjson.dumps(r.metadata).decode() for r in records],
                [_vec(r.values) for r in records],
            )
        done = {r["id"] for r in rows}
        return [r.id for r in records if r.id in done]

    async def delete(self, info: IndexInfo, ids: list[str]) -> list[str]:
        pool = await self.pool()
        rows = await pool.fetch(f"DELETE FROM {table(info)} WHERE id = ANY($1::text[]) RETURNING id", ids)
        done = {r["id"] for r in rows}
        return [i for i in dict.fromkeys(ids) if i in done]

    async def get(self, info: IndexInfo, ids: list[str]) -> list[Record]:
        pool = await self.pool()
        rows = await pool.fetch(
            f"SELECT id, ns, meta::text AS meta, emb::text AS emb FROM {table(info)}"
            " WHERE id = ANY($1::text[])",
            ids,
        )
        by = {r["id"]: r for r in rows}
        out = []
        for i in dict.fromkeys(ids):
            r = by.get(i)
            if r is not None:
                meta = None if r["meta"] is None else orjson.loads(r["meta"])
                out.append(Record(i, np.asarray(orjson.loads(r["emb"]), dtype=np.float32), r["ns"], meta))
        return out

    async def search(
        self,
        info: IndexInfo,
        vec: np.ndarray,
        k: int,
        namespace: str | None,
        conds: list[F.Cond],
        values: bool,
    ) -> list[Match]:
        op = _OPS[info.metric][0]
        args: list[Any] = [_vec(vec)]
        preds = []
        if namespace is not None:
            args.append(namespace)
            preds.append(f"ns = ${len(args)}")
        if conds:
            preds.append(where(conds, args))
        cond = f"WHERE {' AND '.join(preds)}" if preds else ""
        cols = "id, ns, meta::text AS meta" + (", emb::text AS emb" if values else "")
        args.append(k)
        sql = (
            f"WITH c AS MATERIALIZED (SELECT {cols}, emb {op} $1::vector AS d FROM {table(info)} {cond}"
            f" ORDER BY emb {op} $1::vector LIMIT ${len(args)}) SELECT * FROM c ORDER BY d"
        )
        pool = await self.pool()
        async with pool.acquire() as c, c.transaction():
            await c.execute(f"SET LOCAL hnsw.ef_search = {min(max(EF_SEARCH, k), 1000)}")
            if preds:
                await c.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            rows = await c.fetch(sql, *args)
            if preds and len(rows) < k:  # the scan gave up early: answer exactly
                await c.execute("SET LOCAL enable_indexscan = off")
                rows = await c.fetch(sql, *args)
        return [
            Match(
                r["id"],
                score(info.metric, _dist(info.metric, float(r["d"]))),
                r["ns"],
                orjson.loads(r["emb"]) if values else None,
                None if r["meta"] is None else orjson.loads(r["meta"]),
            )
            for r in rows
        ]

    async def count(self, info: IndexInfo) -> int:
        pool = await self.pool()
        n: int = await pool.fetchval(f"SELECT count(*) FROM {table(info)}")
        return n

    async def has_namespace(self, info: IndexInfo, namespace: str) -> bool:
        pool = await self.pool()
        return bool(
            await pool.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table(info)} WHERE ns = $1)", namespace)
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
