"""The Anthropic stand-in speaks the real protocol: the official ``anthropic``
SDK is its client (tools, a tool round trip, streaming, errors), so a test of
tollway against the stand-in, or of tollway's ``/v1/messages`` with the SDK, is
a fair one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from anthropic_standin import KEY, WORDS, AnthropicStandin

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def api() -> Iterator[AnthropicStandin]:
    with AnthropicStandin() as a:
        yield a


@pytest.fixture
def sdk(api: AnthropicStandin) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key=KEY, base_url=api.url, max_retries=0) as c:
        yield c


def test_text_answer(sdk: anthropic.Anthropic, api: AnthropicStandin) -> None:
    m = sdk.messages.create(
        model="claude-standin",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "hi"}],
    )
    assert m.type == "message" and m.role == "assistant" and m.stop_reason == "end_turn"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == "".join(WORDS)
    assert m.usage.input_tokens > 0 and m.usage.output_tokens == len(WORDS)
    headers, _ = api.requests[-1]
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["anthropic-version"] == sdk.default_headers["anthropic-version"]


def test_max_tokens_and_stop_sequences(sdk: anthropic.Anthropic) -> None:
    m = sdk.messages.create(model="c", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert m.stop_reason == "max_tokens" and m.content[0].text == "Hello from"
    m = sdk.messages.create(
        model="c", max_tokens=50, stop_sequences=[" the"], messages=[{"role": "user", "content": "hi"}]
    )
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", " the")


def test_tool_round_trip(sdk: anthropic.Anthropic) -> None:
    ask: list[Any] = [{"role": "user", "content": "use get_weather for Paris"}]
    m = sdk.messages.create(model="c", max_tokens=100, tools=[WEATHER], messages=ask)
    assert m.stop_reason == "tool_use"
    [use] = m.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}
    ask += [{"role": "assistant", "content": m.content}, {"role": "user", "content": [result]}]
    m = sdk.messages.create(model="c", max_tokens=100, tools=[WEATHER], messages=ask)
    assert m.stop_reason == "end_turn" and m.content[0].text == "The tool said: sunny"


def test_forced_tool_choice(sdk: anthropic.Anthropic) -> None:
    m = sdk.messages.create(
        model="c",
        max_tokens=100,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "anything"}],
    )
    assert [b.type for b in m.content] == ["tool_use"]


def test_streams_text_and_tool_use(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(model="c", max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "".join(WORDS) and final.usage.output_tokens == len(WORDS)
    ask: list[Any] = [{"role": "user", "content": "call get_weather"}]
    with sdk.messages.stream(model="c", max_tokens=100, tools=[WEATHER], messages=ask) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert "input_json" in kinds and kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Paris"}


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        ({"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "c", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        ({"model": "c", "max_tokens": 10, "messages": [{"role": "assistant", "content": "hi"}]}, "alternate"),
        ({"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": ""}]}, "non-empty"),
        (
            {"model": "c", "max_tokens": 10, "colour": 1, "messages": [{"role": "user", "content": "x"}]},
            "colour",
        ),
        (
            {
                "model": "c",
                "max_tokens": 10,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "x"}],
                    }
                ],
            },
            "unexpected tool_use_id",
        ),
        (
            {
                "model": "c",
                "max_tokens": 10,
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                    },
                    {"role": "user", "content": "y"},
                ],
            },
            "without tool_result",
        ),
        (
            {
                "model": "c",
                "max_tokens": 10,
                "tools": [{"name": "f", "input_schema": {"type": "array"}}],
                "messages": [{"role": "user", "content": "x"}],
            },
            "input_schema",
        ),
    ],
)
def test_malformed_requests_are_400_in_anthropics_shape(
    sdk: anthropic.Anthropic, api: AnthropicStandin, request_: dict[str, Any], says: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as e:
        sdk.post("/v1/messages", cast_to=httpx.Response, body=request_)
    assert e.value.status_code == 400
    assert isinstance(e.value.body, dict) and e.value.body["type"] == "error"
    assert (
        e.value.body["error"]["type"] == "invalid_request_error" and says in e.value.body["error"]["message"]
    )


def test_headers_are_checked(api: AnthropicStandin) -> None:
    with anthropic.Anthropic(api_key="wrong", base_url=api.url, max_retries=0) as c:
        with pytest.raises(anthropic.AuthenticationError):
            c.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    body = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{api.url}/v1/messages", json=body, headers={"x-api-key": KEY})
    assert r.status_code == 400 and "anthropic-version" in r.json()["error"]["message"]


def test_injected_failures_speak_anthropics_errors(sdk: anthropic.Anthropic, api: AnthropicStandin) -> None:
    api.fail_next(1, status=529)
    with pytest.raises(anthropic.APIStatusError) as e:
        sdk.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 529 and e.value.body["error"]["type"] == "overloaded_error"
