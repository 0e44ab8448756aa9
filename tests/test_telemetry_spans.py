"""The spans beyond the gateway's call: an agent turn with its model call and
tool call (the tool gets the traceparent), a wallet authorization, x402
verify and settle — each with the charge in micro-USD."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent_helpers import ToolServer, customer_key
from conftest import ADMIN
from test_agents_memory import DOCS, OWNER
from test_wallets import W, w  # noqa: F401  (fixture)
from test_x402_gateway import gw  # noqa: F401  (fixture)
from tollway.runtime import Runtime
from x402_gateway_support import funded, header, required

pytest_plugins = ["agent_support", "telemetry_support"]  # fixtures: art, http; spans


def _one(spans: InMemorySpanExporter, name: str) -> tuple[ReadableSpan, dict[str, Any]]:
    [s] = [s for s in spans.get_finished_spans() if s.name == name]
    return s, dict(s.attributes or {})


async def test_agent_turn_model_and_tool_spans(
    http: httpx.AsyncClient, art: Runtime, tool_server: tuple[ToolServer, str], spans: InMemorySpanExporter
) -> None:
    auth = await customer_key(http, art)
    r = await http.post("/v1/agents/support/sessions", json={"id": "s1"}, headers=auth)
    assert r.status_code == 201
    seen = len(tool_server[0].headers)
    r = await http.post(
        "/v1/agents/support/sessions/s1/messages", json={"content": "where is my order A1001?"}, headers=auth
    )
    assert r.status_code == 200, r.text
    out = r.json()
    turn, ta = _one(spans, "invoke_agent support")
    assert ta["gen_ai.agent.name"] == "support" and ta["gen_ai.conversation.id"] == "s1"
    assert ta["tollway.charge_micros"] == out["usage"]["cost"] > 0
    assert ta["gen_ai.usage.input_tokens"] == out["usage"]["input_tokens"]
    tool, tla = _one(spans, "execute_tool order_status")
    assert tla["gen_ai.tool.name"] == "order_status" and tla["tollway.tool.status"] == "ok"
    assert tla["gen_ai.tool.call.id"] == out["tool_calls"][0]["id"]
    assert tool.parent is not None and tool.parent.span_id == turn.context.span_id
    chats = [s for s in spans.get_finished_spans() if s.name.startswith("chat ")]
    assert chats and all(s.context.trace_id == turn.context.trace_id for s in chats)
    assert sum((s.attributes or {})["tollway.charge_micros"] for s in chats) == out["usage"]["cost"]
    # The tool was called with the tool span's context.
    [sent] = tool_server[0].headers[seen:]
    assert sent["traceparent"].startswith(f"00-{tool.context.trace_id:032x}-{tool.context.span_id:016x}-")


async def test_wallet_authorization_span(w: W, spans: InMemorySpanExporter) -> None:  # noqa: F811
    wal = await w.wallet()
    tok = await w.token(wal["id"])
    r = await w.authorize(tok, 2_000_000)
    assert r.status_code == 200, r.text
    d = r.json()
    _, a = _one(spans, "wallet.authorize")
    assert a["tollway.wallet.id"] == wal["id"] and a["tollway.wallet.authorization"] == d["id"]
    assert a["tollway.wallet.decision"] == d["status"] and a["tollway.charge_micros"] == 2_000_000
    assert tok not in str(a)


async def test_x402_verify_and_settle_spans(gw: Any, spans: InMemorySpanExporter) -> None:  # noqa: F811
    c, rt = gw
    p = await funded(rt)
    accept = required(await c.get("/demo/weather?city=Porto"))["accepts"][0]
    r = await c.get("/demo/weather?city=Porto", headers={"payment-signature": header(p.v2(accept))})
    assert r.status_code == 200
    verify, va = _one(spans, "x402.verify")
    settle, sa = _one(spans, "x402.settle")
    assert va["tollway.x402.network"] == accept["network"] and va["tollway.x402.value"] == "1000"
    assert sa["tollway.x402.success"] is True and sa["tollway.charge_micros"] == 1000
    servers = [s for s in spans.get_finished_spans() if s.name == "GET /demo/weather"]
    assert len(servers) == 2  # the 402, then the paid request
    paid = servers[1]
    assert verify.parent is not None and verify.parent.span_id == paid.context.span_id
    assert settle.context.trace_id == paid.context.trace_id
    assert (paid.attributes or {})["http.response.status_code"] == 200


@pytest.mark.parametrize(
    "agent_def",
    [{"tools": [], "retrieval": {"index": "kb", "owner": OWNER, "top_k": 2, "chunk_chars": 200}}],
    indirect=True,
)
async def test_retrieval_span(http: httpx.AsyncClient, art: Runtime, spans: InMemorySpanExporter) -> None:
    auth = await customer_key(http, art)
    await art.customers.create("Knowledge", id=OWNER)
    r = await http.post("/admin/agents/support/documents", json={"documents": DOCS}, headers=ADMIN)
    assert r.status_code == 200, r.text
    await http.post("/v1/agents/support/sessions", json={"id": "s1"}, headers=auth)
    r = await http.post(
        "/v1/agents/support/sessions/s1/messages", json={"content": "can I get a refund?"}, headers=auth
    )
    assert r.status_code == 200, r.text
    retrieval, a = _one(spans, "retrieval")
    assert a["tollway.retrieval.index"] == "kb" and a["tollway.retrieval.top_k"] == 2
    assert a["tollway.retrieval.chunks"] == len(r.json()["reply"]["citations"]) > 0
    turn, _ = _one(spans, "invoke_agent support")
    assert retrieval.parent is not None and retrieval.parent.span_id == turn.context.span_id
    embeds = [s for s in spans.get_finished_spans() if s.name.startswith("embeddings ")]
    assert any(s.parent is not None and s.parent.span_id == retrieval.context.span_id for s in embeds)
