"""The Vectorize operations through the Python API, on every backend
(embedded and pgvector): the same tests, the same answers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tollway.core.errors import TollwayError
from tollway.vectors.service import Vectors

pytest_plugins = ["vector_support"]


def bad(code: str, param: str) -> Any:
    class _Ctx:
        def __enter__(self) -> None:
            return None

        def __exit__(self, et: Any, e: Any, tb: Any) -> bool:
            assert isinstance(e, TollwayError), f"expected {code}, got {e!r}"
            assert (e.status, e.code, e.param) == (400, code, param), repr(e)
            return True

    return _Ctx()


async def raises(coro: Any, code: str, param: str, status: int = 400) -> None:
    with pytest.raises(TollwayError) as ei:
        await coro
    e = ei.value
    assert (e.status, e.code, e.param) == (status, code, param), repr(e)


def vec(*xs: float) -> list[float]:
    return list(xs)


async def test_index_lifecycle(vx: Vectors, cid: str) -> None:
    info = await vx.create_index(cid, "docs", 3, "cosine", "my docs")
    assert info.to_dict()["config"] == {"dimensions": 3, "metric": "cosine"}
    await raises(vx.create_index(cid, "docs", 3, "cosine"), "index_exists", "name", 409)
    assert [i.name for i in await vx.list_indexes(cid)] == ["docs"]
    d = await vx.describe(cid, "docs")
    assert (d["dimensions"], d["vectorCount"]) == (3, 0)
    await vx.delete_index(cid, "docs")
    await raises(vx.describe(cid, "docs"), "unknown_index", "index")
    await vx.create_index(cid, "docs", 4, "euclidean")  # the name is free again
    assert (await vx.describe(cid, "docs"))["config"]["metric"] == "euclidean"


@pytest.mark.parametrize(
    ("name", "dims", "metric", "param"),
    [
        ("Bad Name", 3, "cosine", "name"),
        ("ok", 0, "cosine", "dimensions"),
        ("ok", 4097, "cosine", "dimensions"),
        ("ok", 3, "manhattan", "metric"),
    ],
)
async def test_bad_index_config(vx: Vectors, cid: str, name: str, dims: int, metric: str, param: str) -> None:
    with pytest.raises(TollwayError) as ei:
        await vx.create_index(cid, name, dims, metric)
    assert ei.value.status == 400 and ei.value.param == param
    assert await vx.list_indexes(cid) == []


async def test_max_dimensions(vx: Vectors, cid: str) -> None:
    await vx.create_index(cid, "big", 4096, "cosine")
    rng = np.random.default_rng(1)
    vs = [{"id": str(i), "values": rng.standard_normal(4096).tolist()} for i in range(3)]
    await vx.upsert(cid, "big", vs)
    r = await vx.query(cid, "big", vs[1]["values"], topK=1)
    assert r["matches"][0]["id"] == "1"


async def test_insert_skips_upsert_replaces_and_reads_its_writes(vx: Vectors, cid: str) -> None:
    await vx.create_index(cid, "i", 3, "cosine")
    r = await vx.insert(cid, "i", [{"id": "a", "values": vec(1, 0, 0), "metadata": {"v": 1}}])
    assert r["count"] == 1 and r["ids"] == ["a"] and r["mutationId"]
    q = await vx.query(cid, "i", vec(1, 0, 0), topK=1, returnMetadata="all")
    assert q == {
        "count": 1,
        "matches": [{"id": "a", "score": pytest.approx(1.0, abs=1e-5), "metadata": {"v": 1}}],
    }
    r = await vx.insert(
        cid,
        "i",
        [{"id": "a", "values": vec(0, 1, 0), "metadata": {"v": 2}}, {"id": "b", "values": vec(0, 1, 0)}],
    )
    assert r["ids"] == ["b"]
    [a] = await vx.get_by_ids(cid, "i", ["a"])
    assert a["values"] == [1.0, 0.0, 0.0] and a["metadata"] == {"v": 1}
    r = await vx.upsert(cid, "i", [{"id": "a", "values": vec(0, 0, 1), "metadata": {"v": 3}}])
    assert r["ids"] == ["a"]
    q = await vx.query(cid, "i", vec(0, 0, 1), topK=2, returnMetadata="all", returnValues=True)
    assert q["matches"][0]["id"] == "a" and q["matches"][0]["metadata"] == {"v": 3}
    assert q["matches"][0]["values"] == [0.0, 0.0, 1.0]
    assert (await vx.describe(cid, "i"))["vectorCount"] == 2


async def test_metrics_and_scores(vx: Vectors, cid: str) -> None:
    vs = [{"id": "x", "values": vec(1, 0)}, {"id": "y", "values": vec(3, 4)}]
    for metric in ("cosine", "euclidean", "dot-product"):
        name = metric.replace("-", "")
        await vx.create_index(cid, name, 2, metric)
        await vx.upsert(cid, name, vs)
        q = await vx.query(cid, name, vec(1, 0), topK=2)
        got = {m["id"]: m["score"] for m in q["matches"]}
        want = {
            "cosine": {"x": 1.0, "y": 0.6},
            "euclidean": {"x": 0.0, "y": np.sqrt(20)},
            "dot-product": {"x": 1.0, "y": 3.0},
        }[metric]
        assert got == pytest.approx(want, abs=1e-4), metric
        order = [m["id"] for m in q["matches"]]
        assert order == (["y", "x"] if metric == "dot-product" else ["x", "y"]), metric


async def test_query_by_id_get_and_delete_by_ids(vx: Vectors, cid: str) -> None:
    await vx.create_index(cid, "i", 2, "euclidean")
    await vx.upsert(cid, "i", [{"id": str(i), "values": vec(i, 0)} for i in range(10)])
    q = await vx.query(cid, "i", id="5", topK=3)
    assert q["matches"][0]["id"] == "5" and {m["id"] for m in q["matches"]} <= {"4", "5", "6"}
    got = await vx.get_by_ids(cid, "i", ["3", "nope", "4"])
    assert [g["id"] for g in got] == ["3", "4"]
    r = await vx.delete_by_ids(cid, "i", ["3", "nope"])
    assert r["ids"] == ["3"] and r["count"] == 1
    q = await vx.query(cid, "i", vec(3, 0), topK=2)
    assert "3" not in [m["id"] for m in q["matches"]]
    await raises(vx.query(cid, "i", id="3"), "unknown_id", "id")


async def test_namespaces(vx: Vectors, cid: str) -> None:
    await vx.create_index(cid, "i", 2, "cosine")
    await vx.upsert(
        cid,
        "i",
        [
            {"id": "a", "values": vec(1, 0), "namespace": "n1"},
            {"id": "b", "values": vec(1, 0.1), "namespace": "n2"},
            {"id": "c", "values": vec(1, 0.2)},
        ],
    )
    q = await vx.query(cid, "i", vec(1, 0), topK=5, namespace="n2")
    assert [(m["id"], m["namespace"]) for m in q["matches"]] == [("b", "n2")]
    q = await vx.query(cid, "i", vec(1, 0), topK=5)
    assert [m["id"] for m in q["matches"]] == ["a", "b", "c"]
    await raises(vx.query(cid, "i", vec(1, 0), namespace="nope"), "unknown_namespace", "namespace")


DOCS = [
    {"id": "1", "genre": "drama", "year": 1999, "tags": {"lang": "en"}, "title": "a"},
    {"id": "2", "genre": "comedy", "year": 2005, "tags": {"lang": "fr"}, "title": "b"},
    {"id": "3", "genre": "drama", "year": 2010, "tags": {"lang": "fr"}, "title": "c"},
    {"id": "4", "genre": "horror", "year": 2020, "title": "d", "flag": True},
    {"id": "5", "year": 1980, "title": "e", "flag": 1},
]


@pytest.mark.parametrize(
    ("flt", "want"),
    [
        ({"genre": "drama"}, {"1", "3"}),
        ({"genre": {"$eq": "drama"}}, {"1", "3"}),
        ({"genre": {"$ne": "drama"}}, {"2", "4", "5"}),
        ({"genre": {"$in": ["comedy", "horror"]}}, {"2", "4"}),
        ({"genre": {"$nin": ["comedy", "horror"]}}, {"1", "3", "5"}),
        ({"year": {"$lt": 2005}}, {"1", "5"}),
        ({"year": {"$lte": 2005}}, {"1", "2", "5"}),
        ({"year": {"$gt": 2005}}, {"3", "4"}),
        ({"year": {"$gte": 2005, "$lt": 2020}}, {"2", "3"}),
        ({"genre": "drama", "year": {"$gt": 2000}}, {"3"}),
        ({"tags.lang": "fr"}, {"2", "3"}),
        ({"tags.lang": {"$ne": "fr"}}, {"1", "4", "5"}),
        ({"title": {"$gte": "c"}}, {"3", "4", "5"}),
        ({"flag": True}, {"4"}),
        ({"flag": 1}, {"5"}),
        ({"missing": {"$in": [1]}}, set()),
    ],
)
async def test_metadata_filters(vx: Vectors, cid: str, flt: dict[str, Any], want: set[str]) -> None:
    await vx.create_index(cid, "m", 2, "cosine")
    await vx.upsert(
        cid,
        "m",
        [
            {"id": d["id"], "values": vec(1, i), "metadata": {k: v for k, v in d.items() if k != "id"}}
            for i, d in enumerate(DOCS)
        ],
    )
    q = await vx.query(cid, "m", vec(1, 0), topK=10, filter=flt)
    assert {m["id"] for m in q["matches"]} == want


async def test_filter_applies_before_top_k(vx: Vectors, cid: str) -> None:
    """The 10 nearest are all 'other'; a filtered query still returns topK 'wanted'."""
    rng = np.random.default_rng(7)
    await vx.create_index(cid, "f", 16, "euclidean")
    base = rng.standard_normal(16)
    rows = []
    for i in range(2000):
        near = i < 1800
        v = base + rng.standard_normal(16) * (0.1 if near else 3.0)
        rows.append({"id": str(i), "values": v.tolist(), "metadata": {"kind": "other" if near else "wanted"}})
    await vx.upsert(cid, "f", rows)
    q = await vx.query(cid, "f", base.tolist(), topK=20, filter={"kind": "wanted"}, returnMetadata="all")
    assert q["count"] == 20 and all(m["metadata"]["kind"] == "wanted" for m in q["matches"])
    mat = np.asarray([r["values"] for r in rows[1800:]])
    exact = {str(1800 + i) for i in np.argsort(((mat - base) ** 2).sum(1))[:20]}
    assert len(exact & {m["id"] for m in q["matches"]}) >= 18
    scores = [m["score"] for m in q["matches"]]
    assert scores == sorted(scores)


async def test_return_metadata_modes(vx: Vectors, cid: str) -> None:
    await vx.create_index(cid, "r", 2, "cosine")
    meta = {"a": 1, "nested": {"b": "x", "list": [1, 2]}, "list": [1]}
    await vx.upsert(cid, "r", [{"id": "a", "values": vec(1, 0), "metadata": meta}])
    none = await vx.query(cid, "r", vec(1, 0), returnMetadata="none")
    assert "metadata" not in none["matches"][0] and "values" not in none["matches"][0]
    assert (await vx.query(cid, "r", vec(1, 0), returnMetadata="all"))["matches"][0]["metadata"] == meta
    idx = await vx.query(cid, "r", vec(1, 0), returnMetadata="indexed")
    assert idx["matches"][0]["metadata"] == {"a": 1, "nested": {"b": "x"}}


async def test_mmr_rerank_diversifies(vx: Vectors, cid: str) -> None:
    await vx.create_index(cid, "mmr", 2, "cosine")
    await vx.upsert(
        cid,
        "mmr",
        [
            {"id": "a", "values": vec(1, 0)},
            {"id": "a2", "values": vec(1, 0.001)},
            {"id": "b", "values": vec(1, 0.5)},
        ],
    )
    plain = await vx.query(cid, "mmr", vec(1, 0), topK=2)
    assert [m["id"] for m in plain["matches"]] == ["a", "a2"]
    div = await vx.query(cid, "mmr", vec(1, 0), topK=2, rerank="mmr", mmr_lambda=0.3)
    assert [m["id"] for m in div["matches"]] == ["a", "b"]
    await raises(vx.query(cid, "mmr", vec(1, 0), rerank="cross"), "invalid_rerank", "rerank")


@pytest.mark.parametrize(
    ("vectors", "code", "param"),
    [
        (
            [{"id": "ok", "values": [1, 0]}, {"id": "x", "values": [1, 0, 0]}],
            "wrong_dimensions",
            "vectors[1].values",
        ),
        (
            [{"id": "ok", "values": [1, 0]}, {"id": "x", "values": [float("nan"), 0]}],
            "non_finite_value",
            "vectors[1].values",
        ),
        (
            [{"id": "ok", "values": [1, 0]}, {"id": "x", "values": [float("inf"), 0]}],
            "non_finite_value",
            "vectors[1].values",
        ),
        (
            [{"id": "ok", "values": [1, 0]}, {"id": "x" * 65, "values": [1, 0]}],
            "id_too_long",
            "vectors[1].id",
        ),
        (
            [{"id": "ok", "values": [1, 0]}, {"id": "é" * 33, "values": [1, 0]}],
            "id_too_long",
            "vectors[1].id",
        ),
        (
            [{"id": "ok", "values": [1, 0]}, {"id": "x", "values": [1, 0], "metadata": {"t": "x" * 10_240}}],
            "metadata_too_large",
            "vectors[1].metadata",
        ),
        (
            [{"id": "ok", "values": [1, 0], "namespace": "n" * 65}],
            "invalid_namespace",
            "vectors[0].namespace",
        ),
        ([{"id": "ok", "values": [1, 0]}] * 5001, "batch_too_large", "vectors"),
        ([], "invalid_vectors", "vectors"),
        ([{"id": "ok", "values": [1, "x"]}], "invalid_vector", "vectors[0].values"),
    ],
)
async def test_bad_vectors_write_nothing(
    vx: Vectors, cid: str, vectors: list[Any], code: str, param: str
) -> None:
    await vx.create_index(cid, "b", 2, "cosine")
    for op in (vx.insert, vx.upsert):
        await raises(op(cid, "b", vectors), code, param)
    assert (await vx.describe(cid, "b"))["vectorCount"] == 0


async def test_max_batch_and_max_id(vx: Vectors, cid: str) -> None:
    await vx.create_index(cid, "b", 2, "cosine")
    r = await vx.insert(cid, "b", [{"id": f"{i:064d}", "values": [1, i]} for i in range(5000)])
    assert r["count"] == 5000
    q = await vx.query(cid, "b", [1, 0], topK=1000)
    assert q["count"] == 1000


@pytest.mark.parametrize(
    ("opts", "code", "param"),
    [
        ({"topK": 0}, "invalid_top_k", "topK"),
        ({"topK": 1001}, "invalid_top_k", "topK"),
        ({"returnMetadata": "some"}, "invalid_return_metadata", "returnMetadata"),
        ({"filter": {"a": {"$regex": "x"}}}, "unknown_filter_operator", "filter.a.$regex"),
        ({"filter": {"a": {"$in": "x"}}}, "invalid_filter", "filter.a.$in"),
        ({"filter": {f"k{i}": "v" * 20 for i in range(100)}}, "filter_too_large", "filter"),
        ({"namespace": "nope"}, "unknown_namespace", "namespace"),
    ],
)
async def test_bad_queries(vx: Vectors, cid: str, opts: dict[str, Any], code: str, param: str) -> None:
    await vx.create_index(cid, "q", 2, "cosine")
    await vx.upsert(cid, "q", [{"id": "a", "values": [1, 0]}])
    await raises(vx.query(cid, "q", [1, 0], **opts), code, param)


async def test_bad_query_vectors(vx: Vectors, cid: str) -> None:
    await vx.create_index(cid, "q", 2, "cosine")
    await raises(vx.query(cid, "q", [1, 0, 0]), "wrong_dimensions", "vector")
    await raises(vx.query(cid, "q", [float("nan"), 0]), "non_finite_value", "vector")
    await raises(vx.query(cid, "nope", [1, 0]), "unknown_index", "index")
    await raises(vx.upsert(cid, "nope", [{"id": "a", "values": [1, 0]}]), "unknown_index", "index")


async def test_indexes_are_per_customer(vx: Vectors, cid: str, vrt: Any) -> None:
    other = (await vrt.customers.create("Bob")).id
    await vx.create_index(cid, "same", 2, "cosine")
    await vx.create_index(other, "same", 2, "cosine")
    await vx.upsert(cid, "same", [{"id": "mine", "values": [1, 0]}])
    assert (await vx.query(other, "same", [1, 0]))["count"] == 0
    assert [i.name for i in await vx.list_indexes(other)] == ["same"]


def test_pgvector_backend_needs_a_postgresql_url(tmp_path: Any) -> None:
    from conftest import settings_for
    from tollway.core.config import ConfigError
    from tollway.runtime import Runtime

    with pytest.raises(ConfigError, match=r"vectors\.pgvector_url"):
        Runtime.build(settings_for(f"sqlite:///{tmp_path / 'x.db'}", vectors={"backend": "pgvector"}))
