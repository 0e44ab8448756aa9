"""The Responses API at ``/v1/responses``, driven by the official ``openai`` SDK
against an OpenAI-compatible stand-in upstream: text, a function call, a tool
loop's next turn over ``previous_response_id``, stored responses per customer,
the typed streaming events, refusals naming the parameter, and the charge."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest

from conftest import ADMIN
from fake_upstream import FakeUpstream
from test_inference import CHAT, Env, make_env

pytest_plugins = ["upstream_env"]  # the fixtures up and uenv

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
ASK = "What is the weather in Paris?"


async def test_text_is_answered_and_charged(uenv: Env, up: FakeUpstream) -> None:
    r = await uenv.sdk.responses.with_raw_response.create(
        model="up", input="Say hello.", instructions="Be brief.", max_output_tokens=16, temperature=0
    )
    resp = r.parse()
    assert resp.id.startswith("resp_") and resp.object == "response"
    # The stand-in stops at its length limit: an incomplete response, as OpenAI reports it.
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output_text == "Hello from the fake upstream!"
    [item] = resp.output
    assert item.type == "message" and item.role == "assistant" and item.id.startswith("msg_")
    assert resp.usage is not None and resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert up.last_request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello."},
    ]
    assert int(r.headers["x-tollway-charged"]) == await uenv.spent() > 0
    assert resp.model_dump()["x_tollway"]["charged"] == await uenv.spent()


async def test_a_tool_loop_over_previous_response_id(uenv: Env, up: FakeUpstream) -> None:
    first = await uenv.sdk.responses.create(model="up", input=ASK, tools=[WEATHER])  # type: ignore[list-item]
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.call_id == "call_fake1" and call.id is not None and call.id.startswith("fc_")
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert up.last_request["tools"] == [
        {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}
    ]
    spent = await uenv.spent()

    second = await uenv.sdk.responses.create(
        model="up",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert second.output_text and second.output[0].type == "message"
    assert second.previous_response_id == first.id
    sent = up.last_request["messages"]
    assert sent[0] == {"role": "user", "content": ASK}
    assert sent[1]["role"] == "assistant" and sent[1]["content"] is None
    assert sent[1]["tool_calls"][0]["id"] == "call_fake1"
    assert sent[2] == {"role": "tool", "content": '{"temp_c": 21}', "tool_call_id": "call_fake1"}
    assert await uenv.spent() > spent

    # The stored conversation goes on: each turn's items come back as input.
    third = await uenv.sdk.responses.create(model="up", previous_response_id=second.id, input="Thanks!")
    assert [m["role"] for m in up.last_request["messages"]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert third.output_text


async def test_stored_responses_are_kept_per_customer(uenv: Env) -> None:
    resp = await uenv.sdk.responses.create(model="up", input="Say hello.")
    got = await uenv.sdk.responses.retrieve(resp.id)
    assert got.id == resp.id and got.output_text == resp.output_text

    # Another customer sees none of it: not to read, continue or delete.
    r = await uenv.http.post("/admin/customers", json={"name": "Bob"}, headers=ADMIN)
    k = await uenv.http.post("/admin/keys", json={"customer_id": r.json()["id"]}, headers=ADMIN)
    other = openai.AsyncOpenAI(
        base_url="http://tollway.test/v1", api_key=k.json()["key"], http_client=uenv.http
    )
    with pytest.raises(openai.NotFoundError):
        await other.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        await other.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError) as e:
        await other.responses.create(model="up", input="hi", previous_response_id=resp.id)
    assert e.value.body["param"] == "previous_response_id"  # type: ignore[index]

    await uenv.sdk.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):
        await uenv.sdk.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        await uenv.sdk.responses.delete(resp.id)

    unstored = await uenv.sdk.responses.create(model="up", input="Say hello.", store=False)
    with pytest.raises(openai.NotFoundError):
        await uenv.sdk.responses.retrieve(unstored.id)


async def test_a_streamed_response_sends_the_typed_events_in_order(uenv: Env) -> None:
    stream = await uenv.sdk.responses.create(model="up", input="Say hello.", stream=True)
    events = [ev async for ev in stream]
    kinds = [ev.type for ev in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [ev.sequence_number for ev in events] == list(range(len(events)))
    text = "".join(ev.delta for ev in events if ev.type == "response.output_text.delta")
    assert text == "Hello from the fake upstream!"
    done = events[-1]
    assert done.type == "response.completed" and done.response.output_text == text
    assert done.response.usage is not None and done.response.usage.output_tokens > 0
    assert done.response.model_dump()["x_tollway"]["charged"] == await uenv.spent() > 0
    assert (await uenv.sdk.responses.retrieve(done.response.id)).output_text == text


async def test_a_streamed_function_call(uenv: Env) -> None:
    stream = await uenv.sdk.responses.create(model="up", input=ASK, tools=[WEATHER], stream=True)  # type: ignore[list-item]
    events = [ev async for ev in stream]
    kinds = [ev.type for ev in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    args = "".join(ev.delta for ev in events if ev.type == "response.function_call_arguments.delta")
    assert json.loads(args) == {"city": "Paris"}
    [call] = events[-1].response.output  # type: ignore[attr-defined]
    assert call.type == "function_call" and call.call_id == "call_fake1"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "name": "bad name!"}]}, "tools[0].name"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].name"),
        ({"tools": [{**WEATHER, "parameters": {"type": "foo"}}]}, "tools[0].parameters"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content[0]"),
        ({"input": [{"type": "reasoning"}]}, "input[0].type"),
        ({"background": True}, "background"),
        ({"text": {"format": {"type": "xml"}}}, "text.format"),
    ],
)
async def test_what_is_refused_is_a_400_naming_the_parameter(
    uenv: Env, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "up", "input": "hi", **extra}
    r = await uenv.http.post("/v1/responses", json=body, headers=uenv.auth)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text
    assert await uenv.spent() == 0


async def test_neutral_parameters_are_accepted_and_logged(uenv: Env) -> None:
    resp = await uenv.sdk.responses.create(
        model="up",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        store=False,
        parallel_tool_calls=True,
        text={"format": {"type": "text"}},
        user="end-user-7",
        metadata={"team": "search"},
    )
    assert resp.output_text
    r = await uenv.http.get("/admin/requests", params={"limit": 1}, headers=ADMIN)
    [row] = r.json()["data"]
    assert row["endpoint"] == "responses" and row["end_user"] == "end-user-7"
    assert json.loads(row["tags"]) == {"team": "search"}


async def test_a_local_model_forced_to_call_a_tool_always_parses(db_url: str) -> None:
    async for env in make_env(db_url):
        resp = await env.sdk.responses.create(
            model=CHAT,
            input=ASK,
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "function", "name": "get_weather"},
            max_output_tokens=64,
            temperature=0,
        )
        [call] = resp.output
        assert call.type == "function_call" and call.name == "get_weather"
        args = json.loads(call.arguments)
        assert set(args) == {"city"} and isinstance(args["city"], str)
        assert resp.usage is not None and await env.spent() > 0


async def test_a_refused_request_is_in_the_request_log(uenv: Env) -> None:
    body = {"model": "up", "input": "hi", "previous_response_id": "resp_nope"}
    r = await uenv.http.post("/v1/responses", json=body, headers=uenv.auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found"
    r = await uenv.http.get("/admin/requests", params={"limit": 1}, headers=ADMIN)
    [row] = r.json()["data"]
    assert (row["endpoint"], row["status"], row["error_code"]) == ("responses", 404, "response_not_found")


async def test_the_sdk_s_stream_helper_builds_the_final_response(uenv: Env) -> None:
    async with uenv.sdk.responses.stream(model="up", input=ASK, tools=[WEATHER]) as stream:  # type: ignore[list-item]
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    [call] = final.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}
    async with uenv.sdk.responses.stream(model="up", input="Say hello.") as stream:
        text = "".join([ev.delta async for ev in stream if ev.type == "response.output_text.delta"])
        final = await stream.get_final_response()
    assert final.output_text == text == "Hello from the fake upstream!"


async def test_expired_responses_are_swept(uenv: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the retention period a response is gone from the table too: storing a
    response starts a sweep once an hour per process (on SQLite, on the ledger's writer)."""
    from sqlalchemy import select, update

    from tollway.core.schema import responses
    from tollway.inference import response_store

    old = await uenv.sdk.responses.create(model="up", input="Say hello.")
    kept = await uenv.sdk.responses.create(model="up", input="Say hello.")
    async with uenv.rt.engine.begin() as conn:  # the first one's 30 days are over
        past = uenv.rt.clock.now_us() - 1
        await conn.execute(update(responses).where(responses.c.id == old.id).values(expires_at_us=past))
    with pytest.raises(openai.NotFoundError):
        await uenv.sdk.responses.retrieve(old.id)

    monkeypatch.setattr(response_store, "_last_sweep", None)  # an hour has gone by
    await uenv.sdk.responses.create(model="up", input="Say hello.")
    for _ in range(100):  # the sweep runs beside the request
        if not response_store._sweeping:
            break
        await asyncio.sleep(0.01)
    async with uenv.rt.engine.connect() as conn:
        ids = set((await conn.execute(select(responses.c.id))).scalars())
    assert old.id not in ids and kept.id in ids
    # Due again only in an hour: nothing is started meanwhile.
    await uenv.sdk.responses.create(model="up", input="Say hello.")
    assert not response_store._sweeping
    assert await response_store.sweep(uenv.rt.engine, uenv.rt.clock, uenv.rt.ledger) == 0
