"""Vector indexes over HTTP: Vectorize's routes and shapes, tollway's one error
shape, per-customer keys and scopes, and the text convenience (charged as
embeddings)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from conftest import ADMIN, err, settings_for
from tollway.api.app import create_app
from tollway.runtime import Runtime

pytest_plugins = ["vector_support"]

BASE = "/v1/vectorize/indexes"


async def key_for(
    client: httpx.AsyncClient, scopes: list[str] | None = None, credit: int = 0, rt: Any = None
) -> dict[str, str]:
    c = (await client.post("/admin/customers", json={"name": "Ada"}, headers=ADMIN)).json()
    if credit:
        await rt.ledger.transfer("sys_funding", c["account_id"], credit)
    body: dict[str, Any] = {"customer_id": c["id"]}
    if scopes:
        body["scopes"] = scopes
    k = (await client.post("/admin/keys", json=body, headers=ADMIN)).json()["key"]
    return {"Authorization": f"Bearer {k}"}


@pytest.fixture
async def rt(db_url: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    runtime = Runtime.build(settings_for(db_url, vectors={"path": str(tmp_path / "vectors")}))
    yield runtime
    await runtime.close()


@pytest.fixture
async def http(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(rt=rt)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tollway.test") as c:
        yield c


async def test_vectorize_routes(http: httpx.AsyncClient) -> None:
    auth = await key_for(http)
    r = await http.post(
        BASE, json={"name": "docs", "config": {"dimensions": 3, "metric": "cosine"}}, headers=auth
    )
    assert r.status_code == 200 and r.json()["config"] == {"dimensions": 3, "metric": "cosine"}
    assert r.json()["name"] == "docs" and r.json()["created_on"].endswith("Z")
    err(
        await http.post(BASE, json={"name": "docs", "dimensions": 3, "metric": "cosine"}, headers=auth),
        409,
        "index_exists",
        "name",
    )
    assert [i["name"] for i in (await http.get(BASE, headers=auth)).json()["data"]] == ["docs"]
    assert (await http.get(f"{BASE}/docs", headers=auth)).json()["name"] == "docs"
    vs = [
        {"id": "a", "values": [1, 0, 0], "metadata": {"k": "x"}, "namespace": "n"},
        {"id": "b", "values": [0, 1, 0], "metadata": {"k": "y"}},
    ]
    r = await http.post(f"{BASE}/docs/insert", json={"vectors": vs}, headers=auth)
    assert r.json()["count"] == 2 and r.json()["mutationId"]
    nd = b"\n".join(orjson.dumps(v) for v in [{"id": "c", "values": [0, 0, 1]}])
    r = await http.post(
        f"{BASE}/docs/upsert", content=nd, headers={**auth, "content-type": "application/x-ndjson"}
    )
    assert r.json()["ids"] == ["c"]
    info = (await http.get(f"{BASE}/docs/info", headers=auth)).json()
    assert info["dimensions"] == 3 and info["vectorCount"] == 3
    q = await http.post(
        f"{BASE}/docs/query",
        json={"vector": [1, 0.1, 0], "topK": 2, "returnMetadata": "all", "returnValues": True},
        headers=auth,
    )
    m = q.json()["matches"]
    assert q.json()["count"] == 2 and m[0]["id"] == "a" and m[0]["metadata"] == {"k": "x"}
    assert m[0]["values"] == [1.0, 0.0, 0.0] and m[0]["namespace"] == "n"
    q = await http.post(f"{BASE}/docs/query", json={"id": "b", "topK": 1, "filter": {"k": "y"}}, headers=auth)
    assert [x["id"] for x in q.json()["matches"]] == ["b"]
    got = (await http.post(f"{BASE}/docs/get_by_ids", json={"ids": ["a", "zz"]}, headers=auth)).json()
    assert [g["id"] for g in got] == ["a"]
    r = await http.post(f"{BASE}/docs/delete_by_ids", json={"ids": ["a"]}, headers=auth)
    assert r.json()["count"] == 1
    assert (await http.delete(f"{BASE}/docs", headers=auth)).json()["deleted"] is True
    err(await http.get(f"{BASE}/docs", headers=auth), 400, "unknown_index", "index")


async def test_bad_input_is_400_naming_the_field(http: httpx.AsyncClient) -> None:
    auth = await key_for(http)
    await http.post(BASE, json={"name": "i", "dimensions": 2, "metric": "dot-product"}, headers=auth)
    err(
        await http.post(BASE, json={"name": "j", "dimensions": 5000, "metric": "cosine"}, headers=auth),
        400,
        "invalid_dimensions",
        "dimensions",
    )
    err(
        await http.post(BASE, json={"name": "j", "dimensions": 5, "metric": "hamming"}, headers=auth),
        400,
        "invalid_metric",
        "metric",
    )
    bad = [{"id": "ok", "values": [1, 0]}, {"id": "x", "values": [1, 2, 3]}]
    err(
        await http.post(f"{BASE}/i/insert", json={"vectors": bad}, headers=auth),
        400,
        "wrong_dimensions",
        "vectors[1].values",
    )
    nan = b'{"vectors": [{"id": "x", "values": [NaN, 1]}]}'
    r = await http.post(f"{BASE}/i/insert", content=nan, headers={**auth, "content-type": "application/json"})
    err(r, 400, "invalid_json", "body")
    big = [{"id": "x", "values": [1e39, 1]}]  # overflows float32
    err(
        await http.post(f"{BASE}/i/upsert", json={"vectors": big}, headers=auth),
        400,
        "non_finite_value",
        "vectors[0].values",
    )
    err(
        await http.post(
            f"{BASE}/i/query", json={"vector": [1, 0], "filter": {"a": {"$like": 1}}}, headers=auth
        ),
        400,
        "unknown_filter_operator",
        "filter.a.$like",
    )
    err(
        await http.post(f"{BASE}/i/query", json={"vector": [1, 0], "namespace": "ghost"}, headers=auth),
        400,
        "unknown_namespace",
        "namespace",
    )
    err(
        await http.post(f"{BASE}/i/query", json={"vector": [1, 0], "bogus": 1}, headers=auth),
        400,
        "unknown_field",
        "bogus",
    )
    err(
        await http.post(f"{BASE}/nope/query", json={"vector": [1, 0]}, headers=auth),
        400,
        "unknown_index",
        "index",
    )
    assert (await http.get(f"{BASE}/i/info", headers=auth)).json()["vectorCount"] == 0


async def test_keys_scopes_and_customers(http: httpx.AsyncClient) -> None:
    err(await http.get(BASE), 401, "missing_api_key")
    reader = await key_for(http, ["vectors:read"])
    err(
        await http.post(BASE, json={"name": "i", "dimensions": 2, "metric": "cosine"}, headers=reader),
        403,
        "missing_scope",
    )
    a, b = await key_for(http), await key_for(http)
    await http.post(BASE, json={"name": "i", "dimensions": 2, "metric": "cosine"}, headers=a)
    err(await http.get(f"{BASE}/i", headers=b), 400, "unknown_index", "index")


async def test_text_convenience_is_charged_like_embeddings(http: httpx.AsyncClient, rt: Runtime) -> None:
    auth = await key_for(http, credit=1_000_000, rt=rt)
    await http.post(BASE, json={"name": "t", "dimensions": 384, "metric": "cosine"}, headers=auth)
    docs = [
        {"id": "cat", "text": "The cat sat on the mat.", "metadata": {"topic": "pets"}},
        {
            "id": "stock",
            "text": "Shares fell sharply on the stock exchange today.",
            "metadata": {"topic": "money"},
        },
        {"id": "dog", "text": "A puppy chased its ball in the garden.", "metadata": {"topic": "pets"}},
    ]
    r = await http.post(f"{BASE}/t/upsert_text", json={"vectors": docs}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 3 and r.json()["charged"] > 0
    q1 = await http.post(f"{BASE}/t/query_text", json={"text": "kittens and cats", "topK": 1}, headers=auth)
    assert q1.json()["matches"][0]["id"] == "cat"
    q = await http.post(
        f"{BASE}/t/query_text",
        json={"text": "the market crashed", "topK": 3, "filter": {"topic": "pets"}},
        headers=auth,
    )
    assert {m["id"] for m in q.json()["matches"]} == {"cat", "dog"}
    # Metered and charged through the embeddings charge path: one usage event per call.
    async with rt.engine.connect() as conn:
        from sqlalchemy import select

        from tollway.core.schema import usage_events

        evs = (await conn.execute(select(usage_events))).mappings().all()
    assert len(evs) == 3
    assert all(orjson.loads(e["metadata"])["model"] == "all-minilm-l6-v2" for e in evs)
    charged = r.json()["charged"] + q1.json()["charged"] + q.json()["charged"]
    assert sum(e["amount"] for e in evs) == charged
    # Bad items fail before anything is embedded (no new usage event).
    bad = [{"id": "x" * 65, "text": "hi"}]
    err(
        await http.post(f"{BASE}/t/upsert_text", json={"vectors": bad}, headers=auth),
        400,
        "id_too_long",
        "vectors[0].id",
    )
    async with rt.engine.connect() as conn:
        assert len((await conn.execute(select(usage_events))).all()) == 3


async def test_pgvector_backend_through_the_runtime(
    sqlite_template: Path, tmp_path: Path, pgvector_url: str
) -> None:
    """[vectors] backend = "pgvector": the runtime wires it, the HTTP API serves from it."""
    import shutil

    db = tmp_path / "tollway.db"
    shutil.copy(sqlite_template, db)
    s = settings_for(f"sqlite:///{db}", vectors={"backend": "pgvector", "pgvector_url": pgvector_url})
    runtime = Runtime.build(s)
    assert runtime.vectors.backend.name == "pgvector"
    try:
        app = create_app(rt=runtime)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            auth = await key_for(c)
            r = await c.post(BASE, json={"name": "pg", "dimensions": 2, "metric": "euclidean"}, headers=auth)
            assert r.status_code == 200, r.text
            vs = [{"id": str(i), "values": [i, 0], "metadata": {"even": i % 2 == 0}} for i in range(20)]
            assert (await c.post(f"{BASE}/pg/upsert", json={"vectors": vs}, headers=auth)).json()[
                "count"
            ] == 20
            q = await c.post(
                f"{BASE}/pg/query", json={"vector": [5, 0], "topK": 3, "filter": {"even": True}}, headers=auth
            )
            assert {m["id"] for m in q.json()["matches"]} == {"4", "6", "2"} or {
                m["id"] for m in q.json()["matches"]
            } == {"4", "6", "8"}
            assert (await c.delete(f"{BASE}/pg", headers=auth)).status_code == 200
    finally:
        await runtime.close()
