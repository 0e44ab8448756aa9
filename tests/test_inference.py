"""Inference through the HTTP API with the official openai SDK: chat, streaming,
embeddings, JSON-schema output, Workers AI-style runs, metering and charging,
and bad input that charges nothing. Models load once per test session."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import func, select

from conftest import ADMIN, err, settings_for
from tollway.api.app import create_app
from tollway.core.schema import usage_events
from tollway.runtime import Runtime

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
HI = [{"role": "user", "content": "Say hello."}]


class Env:
    def __init__(self, rt: Runtime, http: httpx.AsyncClient, key: str, customer: dict[str, Any]) -> None:
        self.rt = rt
        self.http = http
        self.key = key
        self.customer = customer
        self.auth = {"Authorization": f"Bearer {key}"}
        self.sdk = openai.AsyncOpenAI(base_url="http://tollway.test/v1", api_key=key, http_client=http)

    async def spent(self) -> int:
        """Micro-USD taken from this customer so far (free allowance + prepaid)."""
        async with self.rt.engine.connect() as conn:
            q = select(func.coalesce(func.sum(usage_events.c.amount), 0))
            return int((await conn.execute(q)).scalar_one())

    async def events(self) -> list[dict[str, Any]]:
        async with self.rt.engine.connect() as conn:
            rows = (await conn.execute(select(usage_events).order_by(usage_events.c.id))).mappings().all()
        return [{**r, "metadata": json.loads(r["metadata"])} for r in rows]

    async def balances(self) -> dict[str, int]:
        accts = await self.rt.ledger.accounts()
        return {a.id: a.balance for a in accts if a.debits_pending == 0} | {
            a.id: -1 for a in accts if a.debits_pending
        }


async def make_env(db_url: str, credit: int = 1_000_000, **over: Any) -> AsyncIterator[Env]:
    rt = Runtime.build(settings_for(db_url, **over))
    app = create_app(rt=rt)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://tollway.test"
    ) as http:
        r = await http.post("/admin/customers", json={"name": "Ada"}, headers=ADMIN)
        customer = r.json()
        if credit:
            await rt.ledger.transfer("sys_funding", customer["account_id"], credit)
        key = (await http.post("/admin/keys", json={"customer_id": customer["id"]}, headers=ADMIN)).json()[
            "key"
        ]
        yield Env(rt, http, key, customer)
    await rt.close()


@pytest.fixture
async def env(db_url: str) -> AsyncIterator[Env]:
    async for e in make_env(db_url):
        yield e


async def test_models_listed_with_rates(env: Env) -> None:
    models = {m.id: m for m in (await env.sdk.models.list()).data}
    assert set(models) >= {CHAT, EMBED}
    chat = models[CHAT].model_dump()
    assert chat["task"] == "chat" and chat["pricing"]["neurons_per_m_input_tokens"] == 2457
    r = await env.http.get("/v1/models")
    assert r.status_code == 401


async def test_chat_is_metered_and_charged_exactly(env: Env) -> None:
    r = await env.sdk.chat.completions.with_raw_response.create(
        model=CHAT, messages=HI, max_tokens=8, temperature=0
    )
    c = r.parse()
    assert c.object == "chat.completion" and c.choices[0].message.role == "assistant"
    assert c.usage is not None and 0 < c.usage.completion_tokens <= 8 and c.usage.prompt_tokens > 0
    cfg = env.rt.inference.configs[CHAT]
    mn, cost = env.rt.inference.price(cfg, c.usage.prompt_tokens, c.usage.completion_tokens)
    assert r.headers["x-tollway-charged"] == str(cost) and await env.spent() == cost
    [ev] = await env.events()
    assert ev["quantity"] == mn and ev["meter"] == "neurons" and ev["customer_id"] == env.customer["id"]
    meta = ev["metadata"]
    assert (meta["model"], meta["input_tokens"], meta["output_tokens"]) == (
        CHAT,
        c.usage.prompt_tokens,
        c.usage.completion_tokens,
    )
    assert meta["latency_ms"] > 0 and meta["ttft_ms"] > 0 and meta["key_id"].startswith("key_")
    # Charged from the free allowance first: prepaid untouched, nothing left reserved.
    prepaid = await env.rt.ledger.get_account(env.customer["account_id"])
    assert (prepaid.balance, prepaid.debits_pending) == (1_000_000, 0)


async def test_stream_with_usage_chunk(env: Env) -> None:
    stream = await env.sdk.chat.completions.create(
        model=CHAT,
        messages=HI,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
    )
    chunks = [ch async for ch in stream]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert chunks[0].choices[0].delta.role == "assistant" and text
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    u = chunks[-1].usage
    _, cost = env.rt.inference.price(env.rt.inference.configs[CHAT], u.prompt_tokens, u.completion_tokens)
    assert await env.spent() == cost


async def test_stream_without_usage_has_no_usage_chunk(env: Env) -> None:
    stream = await env.sdk.chat.completions.create(model=CHAT, messages=HI, max_tokens=4, stream=True)
    chunks = [ch async for ch in stream]
    assert all(ch.choices for ch in chunks) and all(ch.usage is None for ch in chunks)


async def test_json_schema_is_enforced(env: Env) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    c = await env.sdk.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Invent a person."}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    )
    obj = json.loads(c.choices[0].message.content or "")
    assert isinstance(obj["name"], str) and isinstance(obj["age"], int)


async def test_a_seed_fixes_its_own_request_and_no_other(env: Env) -> None:
    """llama.cpp keeps the seed on the shared model: one customer's seed used to
    make every later unseeded request (anyone's) sample the same tokens."""

    async def ask(**seed: int) -> str:
        body = {"model": CHAT, "messages": HI, "max_tokens": 24, "temperature": 1.5, **seed}
        r = await env.http.post("/v1/chat/completions", json=body, headers=env.auth)
        assert r.status_code == 200, r.text
        text: str = r.json()["choices"][0]["message"]["content"]
        return text

    seeded = await ask(seed=7)
    assert await ask(seed=7) == seeded  # a seed still makes its own request repeatable
    later = {await ask() for _ in range(4)}
    assert later != {seeded} and len(later) > 1


async def test_a_pattern_without_anchors_is_compiled(env: Env) -> None:
    """JSON Schema's pattern is unanchored; llama.cpp's grammar wants ^…$. The
    grammar anchors it, and what it lets through matches the schema's pattern."""
    schema = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "[A-Z]{3}"}},
        "required": ["code"],
    }
    rf = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    r = await env.http.post(
        "/v1/chat/completions",
        json={"model": CHAT, "messages": HI, "max_tokens": 20, "temperature": 0, "response_format": rf},
        headers=env.auth,
    )
    assert r.status_code == 200, r.text
    assert re.search("[A-Z]{3}", json.loads(r.json()["choices"][0]["message"]["content"])["code"])


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [({"type": "string", "pattern": "^(?=a)b$"}, "pattern"), ({"$ref": "#/nowhere"}, "$ref")],
)
async def test_a_schema_the_grammar_cannot_compile_is_400_naming_the_keyword(
    env: Env, schema: dict[str, Any], keyword: str
) -> None:
    before = await env.balances()
    rf = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    r = await env.http.post(
        "/v1/chat/completions", json={"model": CHAT, "messages": HI, "response_format": rf}, headers=env.auth
    )
    err(r, 400, "unsupported_schema", "response_format.json_schema.schema")
    assert repr(keyword) in r.json()["error"]["message"]
    assert await env.balances() == before and await env.events() == []


async def test_embeddings_string_list_float_and_base64(env: Env) -> None:
    one = await env.sdk.embeddings.create(model=EMBED, input="hello world", encoding_format="float")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    many = await env.sdk.embeddings.create(model=EMBED, input=["hello world", "tollway", "a third"])
    assert [d.index for d in many.data] == [0, 1, 2]
    # The SDK asked for base64 and decoded it: the same vector as the float request.
    assert many.data[0].embedding == pytest.approx(one.data[0].embedding, abs=1e-6)
    raw = await env.http.post(
        "/v1/embeddings",
        json={"model": EMBED, "input": "hello world", "encoding_format": "base64"},
        headers=env.auth,
    )
    b = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(b) // 4}f", b)) == pytest.approx(one.data[0].embedding, abs=1e-6)
    cfg = env.rt.inference.configs[EMBED]
    total = sum(
        env.rt.inference.price(cfg, u)[1] for u in (one.usage.prompt_tokens, many.usage.prompt_tokens)
    )
    assert await env.spent() >= total - 1  # base64 request too


async def test_workers_ai_style_run(env: Env) -> None:
    r = await env.http.post(f"/ai/run/{CHAT}", json={"prompt": "Say hi.", "max_tokens": 5}, headers=env.auth)
    body = r.json()
    assert r.status_code == 200 and body["success"] is True and isinstance(body["result"]["response"], str)
    r = await env.http.post(f"/ai/run/{CHAT}", json={"messages": HI, "max_tokens": 5}, headers=env.auth)
    assert r.status_code == 200
    r = await env.http.post(f"/ai/run/{EMBED}", json={"text": ["a", "b"]}, headers=env.auth)
    assert r.json()["result"]["shape"] == [2, 384]
    for body in ({"text": "x"}, {"prompt": "x", "messages": HI}, {}):
        r = await env.http.post(f"/ai/run/{CHAT}", json=body, headers=env.auth)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"
    r = await env.http.post(f"/ai/run/{EMBED}", json={"prompt": "x"}, headers=env.auth)
    assert r.status_code == 400


BAD_CHAT = [
    ({"model": "nope", "messages": HI}, 404, "model_not_found", "model"),
    ({"model": EMBED, "messages": HI}, 400, "model_wrong_task", "model"),
    ({"model": CHAT, "messages": []}, 400, "invalid_parameter", "messages"),
    (
        {"model": CHAT, "messages": [{"role": "robot", "content": "x"}]},
        400,
        "invalid_parameter",
        "messages.0.role",
    ),
    ({"model": CHAT, "messages": [{"role": "user"}]}, 400, "missing_parameter", "messages.0.content"),
    ({"model": CHAT, "messages": HI, "max_tokens": "5"}, 400, "invalid_parameter", "max_tokens"),
    ({"model": CHAT, "messages": HI, "max_tokens": 0}, 400, "invalid_parameter", "max_tokens"),
    ({"model": CHAT, "messages": HI, "temperature": 3}, 400, "invalid_parameter", "temperature"),
    ({"model": CHAT, "messages": HI, "n": 2}, 400, "invalid_parameter", "n"),
    ({"model": CHAT, "messages": HI, "bogus": 1}, 400, "unknown_parameter", "bogus"),
    (
        {"model": CHAT, "messages": [{"role": "user", "content": "word " * 3000}]},
        400,
        "context_length_exceeded",
        "messages",
    ),
]


@pytest.mark.parametrize(("body", "status", "code", "param"), BAD_CHAT)
async def test_bad_chat_input_charges_nothing(
    env: Env, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    before = await env.balances()
    r = await env.http.post("/v1/chat/completions", json=body, headers=env.auth)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == (code, param)
    assert await env.balances() == before and await env.events() == []


BAD_EMBED = [
    ({"model": EMBED, "input": ""}, "invalid_parameter", "input"),
    ({"model": EMBED, "input": []}, "invalid_parameter", "input"),
    ({"model": EMBED, "input": ["ok", ""]}, "invalid_parameter", "input"),
    ({"model": EMBED, "input": 5}, "invalid_parameter", "input"),
    ({"model": EMBED, "input": ["ok", "word " * 400]}, "context_length_exceeded", "input[1]"),
    ({"model": EMBED, "input": "x", "encoding_format": "int8"}, "invalid_parameter", "encoding_format"),
]


@pytest.mark.parametrize(("body", "code", "param"), BAD_EMBED)
async def test_bad_embeddings_input_charges_nothing(
    env: Env, body: dict[str, Any], code: str, param: str
) -> None:
    before = await env.balances()
    r = await env.http.post("/v1/embeddings", json=body, headers=env.auth)
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (code, param)
    assert await env.balances() == before and await env.events() == []


async def test_malformed_json_and_missing_key(env: Env) -> None:
    r = await env.http.post(
        "/v1/chat/completions", content=b"{nope", headers={**env.auth, "content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = await env.http.post("/v1/chat/completions", json={"model": CHAT, "messages": HI})
    assert r.status_code == 401
    assert await env.events() == []


async def test_no_allocation_and_no_funds_is_402(db_url: str) -> None:
    async for env in make_env(db_url, credit=0, inference={"free_neurons_per_day": 0}):
        with pytest.raises(openai.APIStatusError) as e:
            await env.sdk.chat.completions.create(model=CHAT, messages=HI, max_tokens=8)
        assert e.value.status_code == 402
        assert e.value.body["code"] == "insufficient_funds"  # type: ignore[index]
        assert await env.events() == []
        # The prompt was evaluated while the reservation was tried: the refused
        # call's generation stopped and its instance is free for the next call.
        backend = env.rt.inference._backends[CHAT]
        assert backend.pool.waiting == 0 and not backend.instances[0].executor._work_queue.qsize()
        await env.rt.ledger.transfer("sys_funding", env.customer["account_id"], 1_000_000)
        c = await env.sdk.chat.completions.create(model=CHAT, messages=HI, max_tokens=4)
        assert c.usage is not None and c.usage.completion_tokens > 0


async def test_allowance_first_then_prepaid(db_url: str) -> None:
    # 1 free neuron a day ($0.000011): the first call spills over into prepaid credit.
    async for env in make_env(db_url, credit=1_000_000, inference={"free_neurons_per_day": 1}):
        for _ in range(20):  # a short call costs a few micro-USD: spend past the 11 free
            await env.sdk.chat.completions.create(model=CHAT, messages=HI, max_tokens=8, temperature=0)
            spent = await env.spent()
            if spent > 11:
                break
        assert spent > 11
        prepaid = await env.rt.ledger.get_account(env.customer["account_id"])
        assert prepaid.balance == 1_000_000 - (spent - 11) and prepaid.debits_pending == 0
        usage = (await env.http.get("/v1/usage", headers=env.auth)).json()
        assert usage["allocation"]["remaining"] == 0 and usage["today"]["charged"] == spent
        assert usage["today"]["by_model"][0]["model"] == CHAT


async def test_usage_endpoint(env: Env) -> None:
    await env.sdk.embeddings.create(model=EMBED, input="count me")
    u = (await env.http.get("/v1/usage", headers=env.auth)).json()
    assert u["allocation"]["neurons_per_day"] == 10_000
    assert u["allocation"]["remaining"] == 110_000 - u["today"]["charged"]
    assert u["today"]["requests"] == 1 and u["today"]["by_model"][0]["input_tokens"] > 0


async def test_broken_model_reports_load_error_and_others_keep_serving(db_url: str, tmp_path: Any) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a model at all")
    models = [
        {
            "name": "broken",
            "task": "chat",
            "backend": "llama_cpp",
            "path": str(bad),
            "neurons_per_m_input": 1,
        },
        {
            "name": "missing",
            "task": "chat",
            "backend": "llama_cpp",
            "path": str(tmp_path / "no.gguf"),
            "neurons_per_m_input": 1,
        },
        {
            "name": EMBED,
            "task": "embeddings",
            "backend": "sentence_transformers",
            "n_ctx": 256,
            "neurons_per_m_input": 1841,
        },
    ]
    async for env in make_env(db_url, models=models):
        for name, why in (("broken", "not a GGUF file"), ("missing", "does not exist")):
            r = await env.http.post(
                "/v1/chat/completions", json={"model": name, "messages": HI}, headers=env.auth
            )
            assert r.status_code == 500 and r.json()["error"]["code"] == "model_load_failed"
            assert why in r.json()["error"]["message"]
        e = await env.sdk.embeddings.create(model=EMBED, input="still serving")
        assert len(e.data[0].embedding) == 384
        assert len(await env.events()) == 1


async def test_queue_full_is_503_with_retry_after(db_url: str) -> None:
    from tollway.inference.config import default_models

    chat = default_models()[0].model_copy(update={"queue_max": 0})
    async for env in make_env(db_url, models=[chat.model_dump()]):
        backend = await env.rt.inference.backend(env.rt.inference.configs[CHAT])
        async with backend.pool.acquire():  # the only instance is busy, no queue
            r = await env.http.post(
                "/v1/chat/completions", json={"model": CHAT, "messages": HI}, headers=env.auth
            )
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "model_overloaded"
        assert await env.events() == []


async def test_usage_cli(db_url: str, tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from tollway.cli.main import app

    async for env in make_env(db_url):
        await env.sdk.embeddings.create(model=EMBED, input="for the operator")
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[database]\nurl = "{db_url}"\n')

    def cli(*args: str) -> Any:  # the CLI runs its own event loop
        return CliRunner().invoke(app, ["--config", str(cfg), *args])

    r = await asyncio.to_thread(cli, "usage", "--json")
    assert r.exit_code == 0, r.output
    [row] = json.loads(r.stdout)["data"]
    assert row["model"] == EMBED and row["requests"] == 1 and row["charged"] > 0
    r = await asyncio.to_thread(cli, "usage", "--day", "2020-13-01", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["error"]["code"] == "invalid_day"
    r = await asyncio.to_thread(cli, "usage")
    assert r.exit_code == 0 and EMBED in r.output
