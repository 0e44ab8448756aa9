"""``POST /v1/messages``, driven by the official ``anthropic`` SDK: plain
messages (an upstream and the local model), a tool loop against an upstream
that answers tool calls, streaming (text and ``input_json_delta``), auth by
``x-api-key`` and by Bearer, and every error in Anthropic's shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import pytest

from fake_upstream import WORDS, FakeUpstream, model
from test_inference import CHAT, Env, make_env
from tollway.api.anthropic_messages import _stream
from tollway.core.errors import ErrorType, TollwayError
from tollway.inference.anthropic_messages import MessageStream
from tollway.inference.backends.base import Delta, Finish

pytest_plugins = ["upstream_env"]  # the fixtures up and uenv

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
HI: list[Any] = [{"role": "user", "content": "Say hello."}]


def client(env: Env, *, bearer: bool = False, key: str | None = None) -> anthropic.AsyncAnthropic:
    """The SDK by base URL: ``x-api-key`` by default, ``Authorization: Bearer`` if asked."""
    k = key or env.key
    # The SDK speaks httpx2: the same app in-process, through httpx2's ASGI transport.
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=env.http._transport.app))  # type: ignore[attr-defined]
    if bearer:
        return anthropic.AsyncAnthropic(base_url="http://tollway.test", auth_token=k, http_client=http)
    return anthropic.AsyncAnthropic(base_url="http://tollway.test", api_key=k, http_client=http)


async def test_a_plain_message_is_answered_and_charged_once(uenv: Env) -> None:
    r = await client(uenv).messages.with_raw_response.create(model="up", max_tokens=3, messages=HI)
    m = await r.parse()
    assert m.type == "message" and m.role == "assistant" and m.model == "up" and m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == "".join(WORDS[:3])  # type: ignore[union-attr]
    assert m.stop_reason == "max_tokens"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (10, 3)
    assert int(r.headers["x-tollway-charged"]) == await uenv.spent() > 0
    assert r.headers["x-tollway-model"] == "up"


async def test_bearer_auth_and_any_anthropic_version(uenv: Env) -> None:
    m = await client(uenv, bearer=True).messages.create(
        model="up", max_tokens=2, messages=HI, extra_headers={"anthropic-version": "1999-01-01"}
    )
    assert m.usage.output_tokens == 2


async def test_a_tool_loop_with_an_upstream(uenv: Env, up: FakeUpstream) -> None:
    sdk = client(uenv)
    r = await sdk.messages.with_raw_response.create(
        model="up", max_tokens=64, system="Be brief.", messages=ASK, tools=[WEATHER]
    )
    m = await r.parse()
    assert m.stop_reason == "tool_use"
    [use] = [b for b in m.content if b.type == "tool_use"]
    assert (use.id, use.name, use.input) == ("call_fake1", "get_weather", {"city": "Paris"})
    sent = up.last_request
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    first = int(r.headers["x-tollway-charged"])
    assert first == await uenv.spent() > 0

    # The loop's next turn: the assistant's tool_use, then the tool_result.
    follow = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump() for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 C"}]},
    ]
    r2 = await sdk.messages.with_raw_response.create(
        model="up", max_tokens=64, messages=follow, tools=[WEATHER]
    )
    m2 = await r2.parse()
    assert m2.stop_reason != "tool_use" and m2.content[0].type == "text"
    sent = up.last_request["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_fake1"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_fake1", "content": "21 C"}
    assert first + int(r2.headers["x-tollway-charged"]) == await uenv.spent()


async def test_a_streamed_text_message(uenv: Env) -> None:
    async with client(uenv).messages.stream(model="up", max_tokens=4, messages=HI) as s:
        kinds = [ev.type async for ev in s]
        final = await s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds and "message_delta" in kinds
    assert final.content[0].text == "".join(WORDS[:4])  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 4
    assert await uenv.spent() > 0


async def test_a_streamed_tool_call_comes_as_input_json_delta(uenv: Env) -> None:
    async with client(uenv).messages.stream(model="up", max_tokens=64, messages=ASK, tools=[WEATHER]) as s:
        partial = [ev.partial_json async for ev in s if ev.type == "input_json"]
        final = await s.get_final_message()
    assert json.loads("".join(partial)) == {"city": "Paris"}
    [use] = final.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use" and final.usage.input_tokens == 10
    assert await uenv.spent() > 0


async def test_the_raw_stream_is_anthropic_s_event_sequence(uenv: Env) -> None:
    body = {"model": "up", "max_tokens": 2, "messages": HI, "stream": True}
    r = await uenv.http.post("/v1/messages", json=body, headers={"x-api-key": uenv.key})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    names = [line[7:] for line in r.text.splitlines() if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_the_local_model_answers_a_message(db_url: str) -> None:
    async for env in make_env(db_url):
        m = await client(env).messages.create(model=CHAT, max_tokens=8, messages=HI)
        assert m.content and m.content[0].type == "text" and m.usage.output_tokens > 0
        assert m.stop_reason in ("end_turn", "max_tokens")
        assert await env.spent() > 0


# ------------------------------------------------------------------ errors


def anthropic_shaped(body: Any, kind: str) -> None:
    assert body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"]
    assert set(body) == {"type", "error"} and set(body["error"]) == {"type", "message"}


async def test_a_missing_max_tokens_is_a_400_in_anthropic_s_shape(uenv: Env) -> None:
    r = await uenv.http.post(
        "/v1/messages", json={"model": "up", "messages": HI}, headers={"x-api-key": uenv.key}
    )
    assert r.status_code == 400
    anthropic_shaped(r.json(), "invalid_request_error")
    assert r.json()["error"]["message"] == "max_tokens: Field required"
    with pytest.raises(anthropic.BadRequestError):
        await client(uenv).messages.create(model="up", max_tokens=0, messages=HI)
    assert await uenv.spent() == 0


async def test_a_malformed_body_is_a_400_in_anthropic_s_shape(uenv: Env) -> None:
    for raw in (b"{nope", b"[1]", b""):
        r = await uenv.http.post(
            "/v1/messages", content=raw, headers={"x-api-key": uenv.key, "content-type": "application/json"}
        )
        assert r.status_code == 400, raw
        anthropic_shaped(r.json(), "invalid_request_error")


async def test_a_bad_or_missing_key_is_a_401_in_anthropic_s_shape(uenv: Env) -> None:
    with pytest.raises(anthropic.AuthenticationError) as e:
        await client(uenv, key="tw_nope").messages.create(model="up", max_tokens=4, messages=HI)
    anthropic_shaped(e.value.body, "authentication_error")
    r = await uenv.http.post("/v1/messages", json={"model": "up", "max_tokens": 4, "messages": HI})
    assert r.status_code == 401
    anthropic_shaped(r.json(), "authentication_error")


async def test_another_method_is_a_405_in_anthropic_s_shape(uenv: Env) -> None:
    for method in ("GET", "PUT", "QUERY"):
        r = await uenv.http.request(method, "/v1/messages", headers={"x-api-key": uenv.key})
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        anthropic_shaped(r.json(), "invalid_request_error")


async def test_an_unknown_model_is_a_404_in_anthropic_s_shape(uenv: Env) -> None:
    with pytest.raises(anthropic.NotFoundError) as e:
        await client(uenv).messages.create(model="nope", max_tokens=4, messages=HI)
    anthropic_shaped(e.value.body, "not_found_error")


async def test_a_refused_charge_is_a_402(db_url: str, up: FakeUpstream) -> None:
    over = {"models": [model("up", up.url)], "inference": {"free_neurons_per_day": 0}}
    async for env in make_env(db_url, credit=0, **over):
        with pytest.raises(anthropic.APIStatusError) as e:
            await client(env).messages.create(model="up", max_tokens=4, messages=HI)
        assert e.value.status_code == 402
        anthropic_shaped(e.value.body, "billing_error")
        assert await env.spent() == 0


async def test_a_rate_limit_is_a_429(db_url: str, up: FakeUpstream) -> None:
    over = {"models": [model("up", up.url)], "gateway": {"key_limits": {"rpm": 1}}}
    async for env in make_env(db_url, **over):
        sdk = client(env).with_options(max_retries=0)
        await sdk.messages.create(model="up", max_tokens=2, messages=HI)
        with pytest.raises(anthropic.RateLimitError) as e:
            await sdk.messages.create(model="up", max_tokens=2, messages=HI)
        anthropic_shaped(e.value.body, "rate_limit_error")
        assert e.value.response.headers["retry-after"]


async def test_an_upstream_failure_is_an_api_error(uenv: Env, up: FakeUpstream) -> None:
    up.fail_next(20, status=500)
    try:
        with pytest.raises(anthropic.APIStatusError) as e:
            await (
                client(uenv)
                .with_options(max_retries=0)
                .messages.create(model="up", max_tokens=2, messages=HI)
            )
        assert e.value.status_code >= 500
        anthropic_shaped(e.value.body, "api_error")
        assert await uenv.spent() == 0
    finally:  # the injected failures the retries did not use
        with up._lock:
            up._fail.clear()


async def test_a_failure_after_the_stream_began_is_an_error_event() -> None:
    async def events() -> AsyncIterator[Delta | Finish]:
        yield Delta("Hel")
        raise TollwayError(ErrorType.API, "upstream_error", "the upstream went away", status=502)

    async def charged() -> None:
        return None

    sent: list[bytes] = []
    with pytest.raises(TollwayError):
        async for piece in _stream(events(), charged, MessageStream("msg_1", "up", 0)):
            sent.append(piece)
    last = sent[-1].decode().splitlines()
    assert last[0] == "event: error"
    anthropic_shaped(json.loads(last[1].removeprefix("data: ")), "api_error")
    assert b"message_stop" not in b"".join(sent)
