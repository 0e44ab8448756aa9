"""Tool calling on ``/v1/chat/completions``, driven by the official ``openai`` SDK:
an upstream model's calls passed through (whole and streamed, as OpenAI
streams them), a tool loop's follow-up turn, refusals naming the parameter,
and a local llama.cpp model forced to call a tool through the grammar."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from fake_upstream import FakeUpstream
from test_inference import CHAT, Env, make_env

pytest_plugins = ["upstream_env"]  # the fixtures up and uenv

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


async def test_an_upstream_s_tool_call_is_passed_through_and_charged(uenv: Env, up: FakeUpstream) -> None:
    r = await uenv.sdk.chat.completions.with_raw_response.create(
        model="up", messages=ASK, tools=[WEATHER], tool_choice="auto", parallel_tool_calls=False
    )
    c = r.parse()
    [call] = c.choices[0].message.tool_calls or []
    assert c.choices[0].finish_reason == "tool_calls" and c.choices[0].message.content is None
    assert (call.id, call.type, call.function.name) == ("call_fake1", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert up.last_request["tools"] == [WEATHER] and up.last_request["tool_choice"] == "auto"
    assert up.last_request["parallel_tool_calls"] is False
    assert int(r.headers["x-tollway-charged"]) == await uenv.spent() > 0

    # The loop's next turn: the assistant's call (content null) and the tool's result.
    follow = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    c2 = await uenv.sdk.chat.completions.create(model="up", messages=follow, tools=[WEATHER])
    assert c2.choices[0].message.content and not c2.choices[0].message.tool_calls
    sent = up.last_request["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_fake1" and sent[1]["content"] is None
    assert sent[2] == {"role": "tool", "content": '{"temp_c": 21}', "tool_call_id": "call_fake1"}


async def test_a_streamed_tool_call_arrives_as_openai_streams_it(uenv: Env) -> None:
    stream = await uenv.sdk.chat.completions.create(
        model="up", messages=ASK, tools=[WEATHER], stream=True, stream_options={"include_usage": True}
    )
    chunks = [ch async for ch in stream]
    deltas = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert deltas[0].index == 0 and deltas[0].id == "call_fake1" and deltas[0].function.name == "get_weather"
    args = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(args) == {"city": "Paris"}
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert await uenv.spent() > 0


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        ([{"type": "function", "function": {"name": "bad name!"}}], None, "tools[0].function.name"),
        ([WEATHER, WEATHER], None, "tools[1].function.name"),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
        ([], "required", "tool_choice"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "foo"}}}],
            None,
            "tools[0].function.parameters",
        ),
    ],
)
async def test_bad_tools_are_a_400_naming_the_parameter_and_charge_nothing(
    uenv: Env, tools: list[dict[str, Any]], choice: Any, param: str
) -> None:
    body: dict[str, Any] = {"model": "up", "messages": ASK, "tools": tools}
    if choice is not None:
        body["tool_choice"] = choice
    r = await uenv.http.post("/v1/chat/completions", json=body, headers=uenv.auth)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert await uenv.spent() == 0


@pytest.mark.parametrize(
    "message",
    [
        {"role": "tool", "content": "x"},  # no tool_call_id
        {"role": "user", "content": None},
        {"role": "user", "content": "x", "tool_call_id": "c"},
        {"role": "assistant", "content": None},
    ],
)
async def test_malformed_tool_messages_are_a_400(uenv: Env, message: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError):
        await uenv.sdk.chat.completions.create(model="up", messages=[message])  # type: ignore[list-item]
    assert await uenv.spent() == 0


async def test_a_local_model_forced_to_call_a_tool_always_parses(db_url: str) -> None:
    async for env in make_env(db_url):
        c = await env.sdk.chat.completions.create(
            model=CHAT,
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=64,
            temperature=0,
        )
        [call] = c.choices[0].message.tool_calls or []
        assert c.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
        args = json.loads(call.function.arguments)
        assert set(args) == {"city"} and isinstance(args["city"], str)
        assert c.usage is not None and await env.spent() > 0


# ------------------------------------------------ the rest of what clients send


async def test_models_retrieve(uenv: Env) -> None:
    m = await uenv.sdk.models.retrieve("up")
    assert m.id == "up" and m.object == "model" and m.model_dump()["task"] == "chat"
    with pytest.raises(openai.NotFoundError):
        await uenv.sdk.models.retrieve("nope")


async def test_neutral_parameters_are_accepted_and_user_and_metadata_logged(uenv: Env) -> None:
    from conftest import ADMIN

    c = await uenv.sdk.chat.completions.create(
        model="up",
        messages=[{"role": "user", "content": "hi"}],
        logprobs=False,
        store=False,
        service_tier="auto",
        user="end-user-7",
        metadata={"team": "search"},
    )
    assert c.choices[0].message.content
    r = await uenv.http.get("/admin/requests", params={"limit": 1}, headers=ADMIN)
    [row] = r.json()["data"]
    assert row["end_user"] == "end-user-7" and json.loads(row["tags"]) == {"team": "search"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
    ],
)
async def test_what_tollway_does_not_do_is_a_400_naming_it(
    uenv: Env, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "up", "messages": [{"role": "user", "content": "hi"}], **extra}
    r = await uenv.http.post("/v1/chat/completions", json=body, headers=uenv.auth)
    assert r.status_code == 400 and r.json()["error"]["param"].startswith(param), r.text
    assert await uenv.spent() == 0
