"""tollway's chat in Anthropic's wire format and back (inference/anthropic_format.py):
every request it builds passes the strict stand-in's checks, and every answer
the stand-in gives reads back as tollway's events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anthropic_standin import answer, check_request, events
from tollway.core.errors import TollwayError
from tollway.inference.anthropic_format import (
    BadAnswer,
    StreamReader,
    read_message,
    to_messages_request,
)
from tollway.inference.backends.base import ChatParams, Delta, Finish, ToolCallDelta

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def call(call_id: str, name: str, args: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def request(params: ChatParams, max_tokens: int = 50) -> dict[str, Any]:
    body = {**to_messages_request(params, "claude-x"), "max_tokens": max_tokens}
    check_request(body)  # Anthropic would accept it
    return body


def test_system_is_pulled_out_and_sampling_is_carried() -> None:
    p = ChatParams(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
            {"role": "user", "content": "hi"},
        ],
        max_tokens=9,
        temperature=1.7,
        top_p=0.5,
        stop=["\n\n"],
        seed=3,
    )
    body = request(p)
    assert body["system"] == "Be brief.\n\nBe kind."
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert (body["temperature"], body["top_p"], body["stop_sequences"]) == (1.0, 0.5, ["\n\n"])
    assert "seed" not in body and "max_tokens" not in to_messages_request(p, "m")


def test_a_tool_loop_becomes_tool_use_and_merged_tool_results() -> None:
    p = ChatParams(
        messages=[
            {"role": "user", "content": "weather and time in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    call("call_1", "get_weather", '{"city":"Paris"}'),
                    call("call_2", "get_time", ""),
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
            {"role": "user", "content": "and so?"},
        ],
        max_tokens=9,
        tools=[WEATHER, TIME],
    )
    body = request(p)
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
        ],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
            {"type": "text", "text": "and so?"},
        ],
    }
    assert body["tools"][0] == {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
    }
    assert "tool_choice" not in body  # auto is Anthropic's default


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", True, None),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", True, {"type": "any"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            True,
            {"type": "tool", "name": "get_time"},
        ),
    ],
)
def test_tool_choice(choice: Any, parallel: bool, expected: dict[str, Any] | None) -> None:
    p = ChatParams(
        messages=[{"role": "user", "content": "x"}],
        max_tokens=5,
        tools=[WEATHER, TIME],
        tool_choice=choice,
        parallel_tool_calls=parallel,
    )
    assert request(p).get("tool_choice") == expected


@pytest.mark.parametrize(
    ("params", "param"),
    [
        (
            ChatParams(
                messages=[
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": None, "tool_calls": [call("c", "f", "[1]")]},
                ],
                max_tokens=5,
            ),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            ChatParams(messages=[{"role": "tool", "content": "x"}], max_tokens=5),
            "messages[0].tool_call_id",
        ),
        (
            ChatParams(messages=[{"role": "user", "content": "x"}], max_tokens=5, json_object=True),
            "response_format",
        ),
        (ChatParams(messages=[{"role": "system", "content": "x"}], max_tokens=5), "messages"),
        (
            ChatParams(
                messages=[
                    {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]}
                ],
                max_tokens=5,
            ),
            "messages[0]",
        ),
        (
            ChatParams(messages=[{"role": "user", "content": "x"}], max_tokens=5, tools=[{"type": "code"}]),
            "tools[0]",
        ),
    ],
)
def test_what_anthropic_cannot_express_is_a_400_naming_it(params: ChatParams, param: str) -> None:
    with pytest.raises(TollwayError) as e:
        to_messages_request(params, "m")
    assert e.value.status == 400 and e.value.param == param


# -------------------------------------------------------------------- answers


def standin(params: ChatParams, max_tokens: int = 50) -> dict[str, Any]:
    return answer(request(params, max_tokens), 1)


def stream(msg: dict[str, Any]) -> tuple[list[Delta | ToolCallDelta], Finish]:
    reader = StreamReader()
    out: list[Delta | ToolCallDelta] = []
    for line in events(msg).decode().splitlines():
        if line.startswith("data:"):
            out += reader.feed(json.loads(line[5:]))
    return out, reader.finish()


def test_a_text_answer_whole_and_streamed() -> None:
    msg = standin(ChatParams(messages=[{"role": "user", "content": "hi"}], max_tokens=5), max_tokens=3)
    text, finish = read_message(msg)
    assert (text, finish.reason, finish.completion_tokens) == ("Hello from the", "length", 3)
    assert finish.prompt_tokens == msg["usage"]["input_tokens"] > 0 and finish.tool_calls is None
    pieces, streamed = stream(msg)
    assert "".join(p.text for p in pieces if isinstance(p, Delta)) == text
    assert streamed == finish


def test_a_tool_call_whole_and_streamed() -> None:
    msg = standin(
        ChatParams(
            messages=[{"role": "user", "content": "x"}], max_tokens=5, tools=[WEATHER], tool_choice="required"
        )
    )
    text, finish = read_message(msg)
    assert text == "" and finish.reason == "tool_calls"
    assert finish.tool_calls == [call("toolu_standin1", "get_weather", '{"city":"Paris"}')]
    pieces, streamed = stream(msg)
    assert pieces[0] == ToolCallDelta(0, "toolu_standin1", "get_weather")
    assert all(isinstance(p, ToolCallDelta) and p.index == 0 and p.id is None for p in pieces[1:])
    assert json.loads("".join(p.arguments for p in pieces)) == {"city": "Paris"}  # type: ignore[union-attr]
    assert streamed.reason == "tool_calls" and streamed.tool_calls is not None
    assert json.loads(streamed.tool_calls[0]["function"]["arguments"]) == {"city": "Paris"}


@pytest.mark.parametrize(
    ("stop_reason", "reason"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls")],
)
def test_stop_reasons(stop_reason: str, reason: str) -> None:
    msg = {"type": "message", "content": [], "stop_reason": stop_reason, "usage": {"input_tokens": 1}}
    assert read_message(msg)[1].reason == reason


def test_cached_input_tokens_count_as_prompt_tokens() -> None:
    usage = {
        "input_tokens": 3,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
        "output_tokens": 2,
    }
    msg = {
        "type": "message",
        "content": [{"type": "text", "text": "x"}],
        "stop_reason": "end_turn",
        "usage": usage,
    }
    assert (read_message(msg)[1].prompt_tokens, read_message(msg)[1].completion_tokens) == (123, 2)


@pytest.mark.parametrize(
    "msg",
    [
        [],
        {"type": "message"},
        {"type": "message", "content": [{"type": "text", "text": 3}], "usage": {}},
        {
            "type": "message",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "[]"}],
            "usage": {},
        },
        {"type": "message", "content": [{"type": "tool_use", "name": "f", "input": {}}], "usage": {}},
        {"type": "message", "content": [], "stop_reason": "end_turn"},
    ],
)
def test_a_malformed_answer_is_a_bad_answer(msg: Any) -> None:
    with pytest.raises(BadAnswer):
        read_message(msg)


def test_a_malformed_stream_is_a_bad_answer() -> None:
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 4, "output_tokens": 1}}}
    tool = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "tool_use", "id": "t", "name": "f"},
    }
    bad_json = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "input_json_delta", "partial_json": "{"},
    }
    reader = StreamReader()
    for ev in (start, tool, bad_json, {"type": "message_stop"}):
        reader.feed(ev)
    with pytest.raises(BadAnswer, match="not a JSON object"):
        reader.finish()
    cut = StreamReader()
    cut.feed(start)
    with pytest.raises(BadAnswer, match="before message_stop"):
        cut.finish()
    assert StreamReader().feed({"type": "some_future_event", "x": 1}) == []  # ignored, as Anthropic asks
    with pytest.raises(BadAnswer, match="without a type"):
        StreamReader().feed({"index": 0})
    with pytest.raises(BadAnswer, match="outside a tool_use"):
        StreamReader().feed({**bad_json, "index": 7})
    with pytest.raises(BadAnswer) as e:
        StreamReader().feed({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    assert e.value.retryable and "overloaded_error" in e.value.why
    with pytest.raises(BadAnswer) as e:
        StreamReader().feed({"type": "error", "error": {"type": "invalid_request_error", "message": "no"}})
    assert not e.value.retryable


# Any OpenAI tool loop: user texts, assistant texts and tool calls, each call
# answered by a tool message, system messages anywhere.
_text = st.text(alphabet="abc xyz", min_size=1, max_size=8).filter(str.strip)
_step = st.one_of(
    st.tuples(st.just("user"), _text),
    st.tuples(st.just("system"), _text),
    st.tuples(st.just("assistant"), st.one_of(st.none(), _text), st.integers(0, 3)),
)


@given(st.lists(_step, min_size=1, max_size=12))
@settings(max_examples=200, deadline=None)
def test_any_openai_tool_loop_is_a_request_anthropic_accepts(steps: list[tuple[Any, ...]]) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "start"}]
    calls = 0
    for step in steps:
        if step[0] == "assistant":
            _, text, n = step
            made = [call(f"call_{calls + k}", "get_weather", '{"city": "Oslo"}') for k in range(n)]
            calls += n
            messages.append({"role": "assistant", "content": text, **({"tool_calls": made} if made else {})})
            messages += [{"role": "tool", "tool_call_id": c["id"], "content": "ok"} for c in made]
        else:
            messages.append({"role": step[0], "content": step[1]})
    body = request(ChatParams(messages=messages, max_tokens=5, tools=[WEATHER]))
    used = [b for m in body["messages"] for b in m["content"] if b["type"] == "tool_use"]
    answered = [b for m in body["messages"] for b in m["content"] if b["type"] == "tool_result"]
    assert len(used) == len(answered) == calls
    texts = [b["text"] for m in body["messages"] for b in m["content"] if b["type"] == "text"]
    assert texts == [m["content"] for m in messages if m["role"] in ("user", "assistant") and m["content"]]
