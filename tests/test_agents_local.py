"""The tool loop on a local model (SmolLM2-135M on llama.cpp): the agent offers
its tools with OpenAI function calling, and the model answers in the grammar
tollway.inference.tool_calls builds from them (as the chat API does), so its
output always parses into a tool call or an answer."""

from __future__ import annotations

import json

import httpx
import pytest

from agent_helpers import ToolServer, customer_key
from tollway.agents.model import Model
from tollway.agents.spec import AgentSpec
from tollway.inference import tool_calls
from tollway.inference.service import Caller
from tollway.runtime import Runtime

pytest_plugins = ["agent_support"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "agent_def",
    [{"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 96, "max_steps": 2}],
    indirect=True,
)
async def test_local_model_tool_loop_with_a_grammar(
    http: httpx.AsyncClient, art: Runtime, tool_server: tuple[ToolServer, str]
) -> None:
    auth = await customer_key(http, art)
    spec = next(a for a in art.settings.agents.definitions if a.name == "support")
    key = await art.keys.verify(auth["Authorization"].split()[1])
    caller = Caller(key.customer_id, key.account_id, key.id)
    messages = [
        {"role": "system", "content": "You check orders with the order_status tool."},
        {"role": "user", "content": "What is the status of order A1001?"},
    ]
    model = Model(art.inference)
    assert model.local(model.config(spec))
    reply = await model.ask(
        caller, AgentSpec.model_validate(spec.model_dump()), messages, list(spec.tools), 160
    )
    assert reply.malformed is None and reply.charged > 0  # the grammar made it valid JSON
    if reply.calls:
        assert reply.calls[0].name == "order_status" and isinstance(reply.calls[0].arguments, dict)
        assert reply.calls[0].raw["function"]["name"] == "order_status"  # OpenAI's tool_calls, as upstream
    # max_tokens too small for any call: a malformed reply (retried by the turn), not an error.
    short = await model.ask(
        caller, AgentSpec.model_validate(spec.model_dump()), messages, list(spec.tools), 3
    )
    assert not short.calls and (short.malformed is None or short.charged == 0)
    # The one mechanism the chat API uses: text, or one call of a tool it has.
    text, calling = tool_calls.answer_schema([t.function() for t in spec.tools], "auto", parallel=False)[
        "anyOf"
    ]
    assert text["required"] == ["content"]
    listed = calling["properties"]["tool_calls"]
    assert listed["items"]["properties"]["name"] == {"const": "order_status"} and listed["maxItems"] == 1

    # A whole turn over HTTP: recorded, charged, whatever the small model chose.
    await http.post("/v1/agents/support/sessions", json={"id": "local"}, headers=auth)
    r = await http.post(
        "/v1/agents/support/sessions/local/messages", json={"content": "Where is order A1001?"}, headers=auth
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["reply"]["role"] == "assistant" and out["usage"]["cost"] > 0
    for call in out["tool_calls"]:
        assert call["tool"] == "order_status" and call["status"] in ("ok", "error")
        json.dumps(call["arguments"])
