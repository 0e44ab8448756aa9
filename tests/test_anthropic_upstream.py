"""``backend = "anthropic"``: tollway calling Anthropic's Messages API, against the
strict stand-in: whole and streamed, tools passed through, metered on
Anthropic's usage, failures retried or not as Anthropic's statuses say, and a
failing Anthropic deployment falling back to another through the gateway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from anthropic_standin import KEY, WORDS, AnthropicStandin, model
from test_inference import Env, make_env
from tollway.core.errors import TollwayError
from tollway.inference.backends.anthropic_upstream import AnthropicUpstream
from tollway.inference.backends.base import (
    Cancel,
    ChatEvent,
    ChatParams,
    Delta,
    Finish,
    Progress,
    UpstreamError,
)
from tollway.inference.config import ModelConfig
from tollway.inference.service import Caller

HI = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
FAST_RETRY = {"max_attempts": 2, "backoff": "constant", "backoff_ms": 1}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[AnthropicStandin]:
    monkeypatch.setenv("TOLLWAY_TEST_ANTHROPIC_KEY", KEY)
    with AnthropicStandin() as a:
        yield a


@pytest.fixture
def api2() -> Iterator[AnthropicStandin]:
    with AnthropicStandin() as a:
        yield a


@pytest.fixture
async def backend(api: AnthropicStandin) -> AsyncIterator[AnthropicUpstream]:
    b = AnthropicUpstream(ModelConfig(**model("claude", api.url)))
    yield b
    await b.aclose()


async def run(b: AnthropicUpstream, params: ChatParams) -> tuple[list[ChatEvent], Progress]:
    progress = Progress()
    return [ev async for ev in b.stream(params, Cancel(), progress)], progress


@pytest.mark.parametrize("stream", [False, True])
async def test_text_is_metered_on_anthropics_usage(
    backend: AnthropicUpstream, api: AnthropicStandin, stream: bool
) -> None:
    params = ChatParams(
        messages=[{"role": "system", "content": "Be brief."}, *HI], max_tokens=4, stream=stream, stop=["zzz"]
    )
    events, progress = await run(backend, params)
    *deltas, finish = events
    assert "".join(d.text for d in deltas if isinstance(d, Delta)) == "".join(WORDS[:4])
    assert isinstance(finish, Finish) and finish.reason == "length" and finish.completion_tokens == 4
    headers, body = api.requests[-1]
    assert finish.prompt_tokens == len(json.dumps(body)) // 4  # what the stand-in's usage says
    assert progress.prompt_tokens >= finish.prompt_tokens  # the reservation's bound holds
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers
    assert body["model"] == "claude-standin" and body["system"] == "Be brief."
    assert (body["max_tokens"], body["stream"], body["stop_sequences"]) == (4, stream, ["zzz"])
    assert api.refused == []


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls_pass_through_and_back(
    backend: AnthropicUpstream, api: AnthropicStandin, stream: bool
) -> None:
    params = ChatParams(
        messages=[{"role": "user", "content": "use get_weather"}],
        max_tokens=50,
        tools=[WEATHER],
        stream=stream,
    )
    events, _ = await run(backend, params)
    [finish] = events  # no text; the call comes whole in the Finish
    assert isinstance(finish, Finish) and finish.reason == "tool_calls" and finish.tool_calls is not None
    [tc] = finish.tool_calls
    assert tc["function"]["name"] == "get_weather" and json.loads(tc["function"]["arguments"]) == {
        "city": "Paris"
    }
    # The tool loop's next turn: the call and its result, in OpenAI's format.
    params = ChatParams(
        messages=[
            *params.messages,
            {"role": "assistant", "content": None, "tool_calls": finish.tool_calls},
            {"role": "tool", "tool_call_id": tc["id"], "content": "sunny"},
        ],
        max_tokens=50,
        tools=[WEATHER],
        tool_choice="auto",
        parallel_tool_calls=False,
        stream=stream,
    )
    events, _ = await run(backend, params)
    *deltas, finish = events
    assert "".join(d.text for d in deltas if isinstance(d, Delta)) == "The tool said: sunny"
    assert isinstance(finish, Finish) and finish.reason == "stop" and finish.tool_calls is None
    assert api.requests[-1][1]["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert api.refused == []


async def test_the_prompt_bound_counts_tools_and_refuses_what_anthropic_cannot_take(
    backend: AnthropicUpstream,
) -> None:
    plain = ChatParams(messages=HI, max_tokens=5)
    tooled = ChatParams(messages=HI, max_tokens=5, tools=[WEATHER])
    assert backend.prompt_tokens(tooled) > backend.prompt_tokens(plain) + len(json.dumps(WEATHER))
    with pytest.raises(TollwayError) as e:  # before any money moves (plan_chat counts first)
        backend.prompt_tokens(ChatParams(messages=HI, max_tokens=5, json_object=True))
    assert e.value.status == 400 and e.value.param == "response_format"


@pytest.mark.parametrize(
    ("status", "retryable"), [(400, False), (401, False), (404, False), (429, True), (500, True), (529, True)]
)
async def test_failures_are_retryable_as_anthropics_statuses_say(
    backend: AnthropicUpstream, api: AnthropicStandin, status: int, retryable: bool
) -> None:
    api.fail_next(1, status=status)
    with pytest.raises(UpstreamError) as e:
        await run(backend, ChatParams(messages=HI, max_tokens=5))
    assert e.value.retryable is retryable and f"HTTP {status}" in e.value.message


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "garbage",
    [
        b"<html>502</html>",
        b'{"type": "message", "content": "nope", "usage": {}}',
        # a stream cut short, and a tool call whose input is not an object
        b"event: message_start\n"
        b'data: {"type": "message_start", "message": {"usage": {"input_tokens": 1}}}\n\n',
        b'data: {"type": "message_start", "message": {"usage": {"input_tokens": 1}}}\n\n'
        b'data: {"type": "content_block_start", "index": 0, '
        b'"content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}\n\n'
        b'data: {"type": "content_block_delta", "index": 0, '
        b'"delta": {"type": "input_json_delta", "partial_json": "[1, 2]"}}\n\n'
        b'data: {"type": "message_stop"}\n\n',
    ],
)
async def test_a_malformed_answer_is_a_retryable_failure(
    backend: AnthropicUpstream, api: AnthropicStandin, garbage: bytes, stream: bool
) -> None:
    api.garble_next(1, garbage)
    with pytest.raises(UpstreamError) as e:
        await run(backend, ChatParams(messages=HI, max_tokens=5, stream=stream))
    assert e.value.retryable and "HTTP 200 but" in e.value.message


async def test_an_unreachable_upstream_is_a_retryable_failure() -> None:
    b = AnthropicUpstream(ModelConfig(**model("claude", "http://127.0.0.1:9")))
    with pytest.raises(UpstreamError) as e:
        await run(b, ChatParams(messages=HI, max_tokens=5))
    assert e.value.retryable
    await b.aclose()


def test_config_needs_a_url_and_serves_chat() -> None:
    with pytest.raises(ValueError, match="backend anthropic"):
        ModelConfig(**model("c", ""))
    with pytest.raises(ValueError, match="backend anthropic"):
        ModelConfig(**model("c", "http://x", task="embeddings"))


# ------------------------------------------------------------- the gateway


@pytest.fixture
async def env(db_url: str, api: AnthropicStandin, api2: AnthropicStandin) -> AsyncIterator[Env]:
    models: list[dict[str, Any]] = [
        model("claude-a", api.url, retry=FAST_RETRY),
        model("claude-b", api2.url, retry=FAST_RETRY),
        {
            "name": "claude",
            "task": "chat",
            "backend": "router",
            "deployments": [{"model": "claude-a", "weight": 1}, {"model": "claude-b", "weight": 0}],
            "retry": FAST_RETRY,
        },
    ]
    pricing = {"usd_per_1000_neurons": "$1", "free_neurons_per_day": 0}
    async for e in make_env(db_url, credit=10_000_000, models=models, inference=pricing):
        yield e


@pytest.mark.parametrize("stream", [False, True])
async def test_gateway_falls_back_from_a_failing_anthropic_deployment(
    env: Env, api: AnthropicStandin, api2: AnthropicStandin, stream: bool
) -> None:
    api.fail_next(2, status=529)  # claude-a: both attempts overloaded, then claude-b
    before = await env.spent()
    body = {"model": "claude", "messages": HI, "max_tokens": 6, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    r = await env.http.post("/v1/chat/completions", json=body, headers=env.auth)
    assert r.status_code == 200, r.text
    assert (r.headers["x-tollway-provider"], r.headers["x-tollway-attempts"]) == ("claude-b", "3")
    assert (api.calls, api2.calls) == (2, 1)
    if stream:
        chunks = [json.loads(ln[6:]) for ln in r.text.splitlines() if ln.startswith("data: {")]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        usage = chunks[-1]["usage"]
    else:
        text, usage = r.json()["choices"][0]["message"]["content"], r.json()["usage"]
    assert text == "".join(WORDS)
    # Metered on the stand-in's usage, at claude-b's rates, charged once.
    _, sent = api2.requests[-1]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (len(json.dumps(sent)) // 4, len(WORDS))
    cfg = env.rt.inference.configs["claude-b"]
    _, cost = env.rt.inference.price(cfg, usage["prompt_tokens"], usage["completion_tokens"])
    assert await env.spent() - before == cost > 0


async def test_gateway_does_not_retry_an_anthropic_refusal(env: Env, api: AnthropicStandin) -> None:
    api.fail_next(1, status=400)
    r = await env.http.post(
        "/v1/chat/completions", json={"model": "claude-a", "messages": HI, "max_tokens": 6}, headers=env.auth
    )
    assert r.status_code == 502 and api.calls == 1
    assert await env.spent() == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_loop_through_the_charge_path(env: Env, api: AnthropicStandin, stream: bool) -> None:
    """The path agents take (Inference.start_chat with tools): the call and the
    answer to its result, each charged on the stand-in's usage."""
    inference = env.rt.inference
    caller = Caller(env.customer["id"], env.customer["account_id"])
    cfg = inference.model("claude-a", "chat")
    messages: list[dict[str, Any]] = [{"role": "user", "content": "use get_weather"}]
    finishes: list[Finish] = []
    for _ in range(2):
        params = ChatParams(messages=list(messages), max_tokens=0, tools=[WEATHER], stream=stream)
        call = await inference.start_chat(caller, cfg, params, 50)
        evs = [ev async for ev in call.events(stream=stream)]
        finish = evs[-1]
        assert isinstance(finish, Finish) and call.metered is not None
        await call.committed()
        finishes.append(finish)
        if finish.tool_calls:
            [tc] = finish.tool_calls
            messages += [
                {"role": "assistant", "content": None, "tool_calls": finish.tool_calls},
                {"role": "tool", "tool_call_id": tc["id"], "content": "sunny"},
            ]
    assert [f.reason for f in finishes] == ["tool_calls", "stop"]
    assert api.refused == [] and api.calls == 2
    spent = sum(inference.price(cfg, f.prompt_tokens, f.completion_tokens)[1] for f in finishes)
    assert await env.spent() == spent > 0
