"""Anthropic's Messages API as a face of tollway (inference/anthropic_messages.py):
requests read into tollway's chat, validated in Anthropic's words; answers
written as Anthropic's bodies and event streams, which the official SDK reads."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anthropic
import pytest

from anthropic_standin import check_request
from threaded import ThreadServer
from tollway.core.errors import ErrorType, TollwayError
from tollway.inference.anthropic_format import to_messages_request
from tollway.inference.anthropic_messages import (
    MessageStream,
    anthropic_error,
    error_event,
    message_body,
    parse_request,
)
from tollway.inference.backends.base import Delta, Finish, ToolCallDelta

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOL_LOOP: list[dict[str, Any]] = [
    {"role": "user", "content": "weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {
                "type": "tool_result",
                "tool_use_id": "toolu_2",
                "content": [{"type": "text", "text": "?"}],
                "is_error": True,
            },
            {"type": "text", "text": "So?"},
        ],
    },
]


def body(**over: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **over}


def test_a_tool_loop_reads_as_openai_chat() -> None:
    req = parse_request(
        body(
            system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            messages=TOOL_LOOP,
            tools=[WEATHER],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            stop_sequences=["END"],
            temperature=0.5,
            top_p=0.9,
            stream=True,
            metadata={"user_id": "u-1"},
        )
    )
    p = req.params
    assert (req.model, req.user, p.max_tokens, p.stream, p.stop) == ("claude-x", "u-1", 64, True, ["END"])
    assert (p.temperature, p.top_p, p.tool_choice, p.parallel_tool_calls) == (0.5, 0.9, "required", False)
    assert p.tools == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": "The weather in a city",
            },
        }
    ]
    assert p.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: ?"},
        {"role": "user", "content": "So?"},
    ]


def test_and_back_to_anthropic_it_is_the_same_conversation() -> None:
    """Read as tollway's chat and written out again for an anthropic upstream: a
    request Anthropic accepts, with the same turns, blocks and tools."""
    original = body(
        system="Be brief.",
        messages=TOOL_LOOP,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    again = {**to_messages_request(parse_request(original).params, "claude-x"), "max_tokens": 64}
    check_request(again)
    assert again["system"] == "Be brief."
    assert again["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert again["tools"] == [WEATHER]
    assert [m["role"] for m in again["messages"]] == ["user", "assistant", "user"]
    assert again["messages"][1]["content"] == TOOL_LOOP[1]["content"]
    assert [b["type"] for b in again["messages"][2]["content"]] == ["tool_result", "tool_result", "text"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ([], None),
        ({"max_tokens": 5, "messages": []}, "model"),
        (body(max_tokens=None), "max_tokens"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (body(max_tokens=0), "max_tokens"),
        (body(max_tokens="5"), "max_tokens"),
        (body(messages=[]), "messages"),
        (body(messages=[{"role": "system", "content": "x"}]), "messages.0.role"),
        (
            body(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]),
            "messages.0.content.0",
        ),
        (body(messages=[{"role": "user", "content": 3}]), "messages.0.content"),
        (body(colour="red"), "colour"),
        (body(top_k=5), "top_k"),
        (body(thinking={"type": "enabled", "budget_tokens": 1024}), "thinking"),
        (body(temperature=1.5), "temperature"),
        (body(stop_sequences="END"), "stop_sequences"),
        (body(stream="yes"), "stream"),
        (body(metadata={"user_id": 3}), "metadata.user_id"),
        (body(system=[{"type": "image"}]), "system.0"),
        (body(tools=[{"name": "bad name", "input_schema": {"type": "object"}}]), "tools.0.name"),
        (body(tools=[{**WEATHER, "input_schema": {"type": "string"}}]), "tools.0.input_schema"),
        (body(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools.0"),
        (body(tools=[WEATHER, WEATHER]), "tools.1.name"),
        (body(tools=[{**WEATHER, "strict": True}]), "tools.0.strict"),
        (body(tool_choice={"type": "auto"}), "tool_choice"),
        (body(tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}), "tool_choice.name"),
        (body(tools=[WEATHER], tool_choice="auto"), "tool_choice"),
        (
            body(
                messages=[
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "y"}]}
                ]
            ),
            "messages.0.content.0.tool_use_id",
        ),
        (body(messages=[*TOOL_LOOP[:2], {"role": "user", "content": "no results"}]), "messages.2"),
        (
            body(
                messages=[
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "a b", "name": "f", "input": {}}],
                    }
                ]
            ),
            "messages.0.content.0.id",
        ),
        (
            body(
                messages=[
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": []}],
                    }
                ]
            ),
            "messages.0.content.0.input",
        ),
    ],
)
def test_a_bad_request_is_a_400_naming_the_field(request_: Any, field: str | None) -> None:
    with pytest.raises(TollwayError) as e:
        parse_request(request_)
    assert e.value.status == 400 and e.value.type == "invalid_request_error" and e.value.param == field
    if field:
        assert e.value.message.startswith(f"{field}: ")
    shape = anthropic_error(e.value)
    assert shape == {"type": "error", "error": {"type": "invalid_request_error", "message": e.value.message}}


def test_neutral_values_are_accepted() -> None:
    req = parse_request(body(service_tier="auto", thinking={"type": "disabled"}, metadata={}))
    assert req.user is None and req.params.tools is None and req.params.tool_choice is None


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (TollwayError(ErrorType.AUTHENTICATION, "invalid_api_key", "no"), "authentication_error"),
        (TollwayError(ErrorType.PERMISSION, "forbidden", "no"), "permission_error"),
        (TollwayError(ErrorType.NOT_FOUND, "model_not_found", "no"), "not_found_error"),
        (TollwayError(ErrorType.PAYMENT, "insufficient_funds", "no"), "billing_error"),
        (TollwayError(ErrorType.RATE_LIMIT, "rate_limited", "no"), "rate_limit_error"),
        (TollwayError(ErrorType.API, "internal", "no"), "api_error"),
        (TollwayError(ErrorType.API, "upstream_error", "no", status=502), "api_error"),
        (TollwayError(ErrorType.API, "queue_full", "no", status=503), "overloaded_error"),
        (TollwayError(ErrorType.CONFLICT, "conflict", "no"), "invalid_request_error"),
    ],
)
def test_errors_in_anthropics_shape(err: TollwayError, kind: str) -> None:
    assert anthropic_error(err) == {"type": "error", "error": {"type": kind, "message": "no"}}
    assert error_event(err).startswith(b"event: error\ndata: ")


# ------------------------------------------------------------------- answers


def test_a_whole_answer_with_text_and_tool_calls() -> None:
    call = {
        "id": "toolu_9",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }
    m = message_body("msg_1", "claude-x", "Let me check.", Finish("tool_calls", 12, 7, [call]))
    assert m == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 7},
    }
    assert message_body("m", "c", "", Finish("length", 1, 2))["stop_reason"] == "max_tokens"


def events_of(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame:
            name, data = frame.split("\n")
            out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def streamed(pieces: list[Delta | ToolCallDelta], finish: Finish) -> bytes:
    s = MessageStream("msg_1", "claude-x", 12)
    return s.start() + b"".join(s.event(p) for p in pieces) + s.finish(finish)


CALL = {
    "id": "toolu_9",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
}
PIECES: list[Delta | ToolCallDelta] = [
    Delta("Let me "),
    Delta("check."),
    ToolCallDelta(0, "toolu_9", "get_weather"),
    ToolCallDelta(0, arguments='{"city":'),
    ToolCallDelta(0, arguments='"Oslo"}'),
]


def test_the_exact_event_sequence() -> None:
    evs = events_of(streamed(PIECES, Finish("tool_calls", 12, 7, [CALL])))
    assert [(n, d.get("index")) for n, d in evs] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert all(n == d["type"] for n, d in evs)
    assert evs[0][1]["message"]["usage"] == {"input_tokens": 12, "output_tokens": 0}
    assert evs[1][1]["content_block"] == {"type": "text", "text": ""}
    assert evs[2][1]["delta"] == {"type": "text_delta", "text": "Let me "}
    assert evs[5][1]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_9",
        "name": "get_weather",
        "input": {},
    }
    assert evs[6][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":'}
    assert evs[9][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert evs[9][1]["usage"] == {"input_tokens": 12, "output_tokens": 7}


def test_tool_calls_known_only_at_the_finish_are_streamed_whole() -> None:
    evs = events_of(streamed([Delta("Hi")], Finish("tool_calls", 3, 4, [CALL])))
    deltas = [d["delta"] for n, d in evs if n == "content_block_delta"]
    assert deltas == [
        {"type": "text_delta", "text": "Hi"},
        {"type": "input_json_delta", "partial_json": '{"city":"Oslo"}'},
    ]


# The official SDK reads what tollway writes -------------------------------


class Replay:
    """Answers every request with the bytes it is given (as JSON or as SSE)."""

    def __init__(self) -> None:
        self.body = b""
        self.sse = False

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        ctype = b"text/event-stream" if self.sse else b"application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype)]})
        await send({"type": "http.response.body", "body": self.body})


@pytest.fixture(scope="module")
def replay() -> Iterator[tuple[Replay, anthropic.Anthropic]]:
    r = Replay()
    with (
        ThreadServer(r, lifespan="off") as srv,
        anthropic.Anthropic(api_key="k", base_url=srv.url, max_retries=0) as c,
    ):
        yield r, c


def test_the_sdk_reads_a_whole_answer(replay: tuple[Replay, anthropic.Anthropic]) -> None:
    r, sdk = replay
    r.sse, r.body = (
        False,
        json.dumps(
            message_body("msg_1", "claude-x", "Let me check.", Finish("tool_calls", 12, 7, [CALL]))
        ).encode(),
    )
    m = sdk.messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert m.stop_reason == "tool_use" and (m.usage.input_tokens, m.usage.output_tokens) == (12, 7)
    assert m.content[1].type == "tool_use" and m.content[1].input == {"city": "Oslo"}


def test_the_sdk_reads_the_stream(replay: tuple[Replay, anthropic.Anthropic]) -> None:
    r, sdk = replay
    r.sse, r.body = True, streamed(PIECES, Finish("tool_calls", 12, 7, [CALL]))
    with sdk.messages.stream(
        model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Let me check." and final.stop_reason == "tool_use"
    assert final.content[1].type == "tool_use" and final.content[1].input == {"city": "Oslo"}
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 7)
    cut = MessageStream("msg_2", "claude-x", 1)  # an error after the stream began
    r.body = (
        cut.start()
        + cut.event(Delta("x"))
        + error_event(TollwayError(ErrorType.API, "e", "gone", status=502))
    )
    with pytest.raises(anthropic.APIStatusError, match="gone"):
        with sdk.messages.stream(
            model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        ) as s:
            s.get_final_message()
