"""Agent sessions over HTTP against the stand-in model (bench/agent_model.py)
and a real tool server: turns, the tool loop and its faults, single writer,
escalation, budgets, accounting, versions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_helpers import AgentModel, ToolServer, agent_settings, customer_key, tool
from conftest import ADMIN, err, settings_for
from tollway.agents.store import COUNTERS, scoped
from tollway.inference.service import Caller
from tollway.runtime import Runtime

pytest_plugins = ["agent_support"]

BASE = "/v1/agents/support/sessions"


async def open_session(http: httpx.AsyncClient, auth: dict[str, str], sid: str = "s1") -> dict[str, Any]:
    r = await http.post(BASE, json={"id": sid}, headers=auth)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def say(http: httpx.AsyncClient, auth: dict[str, str], text: str, sid: str = "s1") -> dict[str, Any]:
    r = await http.post(f"{BASE}/{sid}/messages", json={"content": text}, headers=auth)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_turn_persists_and_charges(http: httpx.AsyncClient, art: Runtime) -> None:
    auth = await customer_key(http, art)
    s = await open_session(http, auth)
    assert s["version"] == 1 and s["status"] == "active" and s["turns"] == 0
    out = await say(http, auth, "hello there")
    assert out["reply"]["role"] == "assistant" and out["reply"]["content"] == "echo: hello there"
    assert [m["role"] for m in out["messages"]] == ["user", "assistant"]
    assert out["usage"]["input_tokens"] > 0 and out["usage"]["cost"] > 0 and out["usage"]["mneurons"] > 0
    got = (await http.get(f"{BASE}/s1", headers=auth)).json()
    assert got["turns"] == 1 and got["usage"]["cost"] == out["usage"]["cost"]
    msgs = (await http.get(f"{BASE}/s1/messages", headers=auth)).json()["data"]
    assert [(m["seq"], m["role"], m["content"]) for m in msgs] == [
        (1, "user", "hello there"),
        (2, "assistant", "echo: hello there"),
    ]
    # Charged through the inference charge path: the customer's usage shows the call.
    usage = (await http.get("/v1/agents/support/usage", headers=auth)).json()
    assert usage["sessions"] == 1 and usage["turns"] == 1 and usage["cost"] == out["usage"]["cost"]
    # The second turn sees the first (history in the context).
    out2 = await say(http, auth, "and again")
    assert out2["turn"] == 2


async def test_unknown_agent_or_session_is_404(http: httpx.AsyncClient, art: Runtime) -> None:
    auth = await customer_key(http, art)
    err(await http.post("/v1/agents/nope/sessions", json={}, headers=auth), 404, "agent_not_found", "agent")
    err(await http.get(f"{BASE}/missing", headers=auth), 404, "session_not_found", "id")
    err(
        await http.post(f"{BASE}/missing/messages", json={"content": "hi"}, headers=auth),
        404,
        "session_not_found",
    )
    err(
        await http.post("/v1/agents/nope/sessions/x/messages", json={"content": "hi"}, headers=auth),
        404,
        "agent_not_found",
    )
    # Another customer's session is not found either.
    await open_session(http, auth)
    other = await customer_key(http, art)
    err(await http.get(f"{BASE}/s1", headers=other), 404, "session_not_found")
    err(await http.post(BASE, json={"id": "s1"}, headers=auth), 409, "session_exists", "id")
    err(await http.post(BASE, json={"id": "bad id!"}, headers=auth), 400, "invalid_session_id", "id")
    err(await http.post(BASE, json={"id": "x" * 116}, headers=auth), 400, "invalid_session_id", "id")


async def test_another_customers_session_id_is_like_an_absent_one(
    http: httpx.AsyncClient, art: Runtime
) -> None:
    """Session ids are each customer's own: another customer's id answers exactly as
    an id nobody uses (404 on every route, and free to create), and reveals nothing."""
    victim = await customer_key(http, art)
    await open_session(http, victim)
    await say(http, victim, "my secret order 1234")
    attacker = await customer_key(http, art)

    def same_404(taken: httpx.Response, absent: httpx.Response) -> None:
        assert taken.status_code == absent.status_code == 404, (taken.text, absent.text)
        assert taken.json()["error"] == {
            **absent.json()["error"],
            "message": taken.json()["error"]["message"],
        }
        assert taken.json()["error"]["message"] == absent.json()["error"]["message"].replace("nobody", "s1")

    for method, suffix, body in (
        ("GET", "", None),
        ("GET", "/messages", None),
        ("GET", "/tool_calls", None),
        ("GET", "/schedules", None),
        ("PATCH", "/state", {"state": {"k": "v"}}),
        ("POST", "/messages", {"content": "hi"}),
        ("POST", "/messages", {"content": "hi", "stream": True}),
        ("POST", "/schedules", {"content": "hi", "delay_seconds": 60}),
    ):
        taken = await http.request(method, f"{BASE}/s1{suffix}", json=body, headers=attacker)
        absent = await http.request(method, f"{BASE}/nobody{suffix}", json=body, headers=attacker)
        same_404(taken, absent)
    # Creating it is what creating an unused id is: the attacker's own, empty session.
    r = await http.post(BASE, json={"id": "s1"}, headers=attacker)
    assert r.status_code == 201 and r.json()["id"] == "s1" and r.json()["turns"] == 0, r.text
    assert (await http.get(f"{BASE}/s1/messages", headers=attacker)).json()["data"] == []
    mine = (await http.get(f"{BASE}/s1/messages", headers=victim)).json()["data"]
    assert mine[0]["content"] == "my secret order 1234"


async def test_too_long_message_is_400_and_changes_nothing(http: httpx.AsyncClient, art: Runtime) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    err(
        await http.post(f"{BASE}/s1/messages", json={"content": "x" * 8001}, headers=auth),
        400,
        "message_too_long",
        "content",
    )
    err(
        await http.post(f"{BASE}/s1/messages", json={"content": ""}, headers=auth),
        400,
        "invalid_content",
        "content",
    )
    err(
        await http.post(f"{BASE}/s1/messages", json={"content": "hi", "x": 1}, headers=auth),
        400,
        "unknown_parameter",
    )
    got = (await http.get(f"{BASE}/s1", headers=auth)).json()
    assert got["turns"] == 0 and got["usage"]["cost"] == 0
    assert (await http.get(f"{BASE}/s1/messages", headers=auth)).json()["data"] == []


async def test_tool_loop_calls_logs_and_feeds_back(
    http: httpx.AsyncClient, art: Runtime, tool_server: tuple[ToolServer, str]
) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    out = await say(http, auth, "where is my order A1001?")
    assert out["reply"]["content"].startswith("tool said: ") and "shipped" in out["reply"]["content"]
    [call] = out["tool_calls"]
    assert call["tool"] == "order_status" and call["status"] == "ok"
    assert call["arguments"] == {"order_id": "A1001"} and call["request"]["url"].endswith("/orders/A1001")
    assert out["usage"]["tool_calls"] == 1 and out["reply"]["tool_calls"] == [call["id"]]
    log = (await http.get(f"{BASE}/s1/tool_calls", headers=auth)).json()["data"]
    assert [(t["tool"], t["status"], t["turn"]) for t in log] == [("order_status", "ok", 1)]
    assert json.loads(log[0]["response"]) == {"status": "shipped", "eta": "2 days"}


async def test_a_repeated_tool_call_is_answered_without_calling_again(
    http: httpx.AsyncClient, art: Runtime, agent_model: tuple[AgentModel, str]
) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    calls = agent_model[0].calls
    out = await say(http, auth, "loop on A1001")
    assert [c["arguments"] for c in out["tool_calls"]] == [{"order_id": "A1001"}]
    assert out["reply"]["content"] == "echo: loop on A1001"
    assert agent_model[0].calls - calls == 3  # the call, the repeat, the answer without tools


@pytest.mark.parametrize("agent_def", [{"tools": [], "max_steps": 2}], indirect=True)
async def test_agent_without_tools_answers(http: httpx.AsyncClient, art: Runtime) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    out = await say(http, auth, "order A1001?")
    assert out["reply"]["content"] == "echo: order A1001?" and out["tool_calls"] == []


async def test_invalid_tool_call_is_asked_once_more_then_answers_without(
    http: httpx.AsyncClient, art: Runtime
) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    out = await say(http, auth, "badcall please")
    assert out["tool_calls"] == [] and out["reply"]["content"] == "echo: badcall please"
    assert "invalid_tool_call" in out["reply"]["flags"]
    out = await say(http, auth, "badonce for A1001")  # bad, corrected, then a good call
    assert [c["status"] for c in out["tool_calls"]] == ["ok"]
    assert out["reply"]["content"].startswith("tool said:")


@pytest.mark.parametrize(
    "agent_def",
    [
        {
            "tools": [
                tool("order_status", "http://127.0.0.1:1/unused/{order_id}"),
            ]
        }
    ],
    indirect=True,
)
async def test_tool_faults_are_logged_and_the_turn_continues(
    http: httpx.AsyncClient, art: Runtime, tool_server: tuple[ToolServer, str]
) -> None:
    auth = await customer_key(http, art)
    base = tool_server[1]
    for i, (url, status) in enumerate(
        [
            (base + "/garbage/{order_id}", "ok"),  # garbage is fed back as text
            (base + "/slow/{order_id}", "timeout"),
            (base + "/orders/{order_id}?x=1", "ok"),
            ("http://10.255.255.1/orders/{order_id}", "refused"),  # private network, not allowed
        ]
    ):
        spec = art.settings.agents.definitions[0].model_dump(mode="json")
        spec["tools"] = [tool("order_status", url, timeout_seconds=0.5, idempotent=False)]
        r = await http.put("/admin/agents/support", json=spec, headers=ADMIN)
        assert r.status_code == 200 and r.json()["created"], r.text
        sid = f"f{i}"
        s = await open_session(http, auth, sid)
        assert s["version"] == r.json()["version"]
        out = await say(http, auth, "status of A1001", sid)
        [call] = out["tool_calls"]
        assert call["status"] == status, call
        assert out["reply"]["role"] == "assistant" and out["reply"]["content"].startswith("tool said:")
        if status in ("timeout", "refused"):
            assert "failed" in out["reply"]["content"] and call["error"]


async def test_concurrent_messages_to_one_session_apply_in_order(
    http: httpx.AsyncClient, art: Runtime
) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    n = 12
    results = await asyncio.gather(*(say(http, auth, f"message {i}") for i in range(n)))
    assert sorted(r["turn"] for r in results) == list(range(1, n + 1))
    msgs = (await http.get(f"{BASE}/s1/messages?limit=1000", headers=auth)).json()["data"]
    assert len(msgs) == 2 * n
    # Never interleaved: each user message is followed by its own answer.
    for u, a in zip(msgs[::2], msgs[1::2], strict=True):
        assert u["role"] == "user" and a["role"] == "assistant" and a["content"] == "echo: " + u["content"]
        assert u["turn"] == a["turn"]
    assert sorted(int(m["content"].split()[1]) for m in msgs[::2]) == list(range(n))


async def test_turns_apply_in_the_order_sent(http: httpx.AsyncClient, art: Runtime) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    key = await art.keys.verify(auth["Authorization"].split()[1])
    caller = Caller(key.customer_id, key.account_id, key.id)
    tasks = [asyncio.ensure_future(art.agents.send(caller, "support", "s1", f"m {i}")) for i in range(30)]
    await asyncio.sleep(0)
    assert art.agents.writers.queued("support", scoped(key.customer_id, "s1")) == 30
    outs = await asyncio.gather(*tasks)
    assert [o["turn"] for o in outs] == list(range(1, 31))
    msgs = (await http.get(f"{BASE}/s1/messages?limit=1000", headers=auth)).json()["data"]
    assert [m["content"] for m in msgs[::2]] == [f"m {i}" for i in range(30)]


async def test_escalation_to_a_person_and_back(http: httpx.AsyncClient, art: Runtime) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    out = await say(http, auth, "I want to talk to a human please")
    assert out["status"] == "escalated" and out["escalation"]["reason"] == "human_requested"
    queue = (await http.get("/v1/escalations", headers=ADMIN)).json()["data"]
    assert [(e["session_id"], e["reason"], e["status"]) for e in queue] == [("s1", "human_requested", "open")]
    err(await http.get("/v1/escalations", headers=auth), 401, "invalid_admin_token")
    # While a person has it, messages wait for them (no model call).
    waiting = await say(http, auth, "hello?")
    assert waiting["reply"] is None and waiting["status"] == "escalated" and waiting["usage"]["cost"] == 0
    esc = queue[0]["id"]
    r = await http.post(
        f"/v1/escalations/{esc}/reply", json={"content": "Hi, Sam here.", "by": "sam"}, headers=ADMIN
    )
    assert r.status_code == 200 and r.json()["status"] == "active", r.text
    assert r.json()["reply"]["role"] == "human" and r.json()["reply"]["by"] == "sam"
    err(
        await http.post(f"/v1/escalations/{esc}/reply", json={"content": "again"}, headers=ADMIN),
        409,
        "escalation_answered",
    )
    err(
        await http.post("/v1/escalations/esc_nope/reply", json={"content": "x"}, headers=ADMIN),
        404,
        "escalation_not_found",
    )
    done = (await http.get(f"/v1/escalations/{esc}", headers=ADMIN)).json()
    assert done["status"] == "answered" and done["answer"] == "Hi, Sam here." and done["answered_by"] == "sam"
    # The session continues with the model, the person's answer in its history.
    after = await say(http, auth, "thanks")
    assert after["status"] == "active" and after["reply"]["content"] == "echo: thanks"


@pytest.mark.parametrize("agent_def", [{"guardrails": {"escalate_keywords": ["lawyer"]}}], indirect=True)
async def test_keyword_escalation_and_redaction(http: httpx.AsyncClient, art: Runtime) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    out = await say(http, auth, "my email is ada@example.com")
    assert out["messages"][0]["content"] == "my email is [email]"
    assert out["reply"]["content"] == "echo: my email is [email]"  # the model never saw it
    out = await say(http, auth, "I will call my lawyer")
    assert out["status"] == "escalated" and out["escalation"]["reason"] == "keyword"


@pytest.mark.parametrize("agent_def", [{"budget": {"usd": "$0.00005"}}], indirect=True)
async def test_session_budget_is_a_ledger_cap_and_escalates(http: httpx.AsyncClient, art: Runtime) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    outs = []
    for i in range(40):
        outs.append(await say(http, auth, f"turn number {i} with a few more words to cost more"))
        if outs[-1]["status"] == "escalated":
            break
    assert outs[-1]["status"] == "escalated" and outs[-1]["escalation"]["reason"] == "budget_exhausted"
    s = (await http.get(f"{BASE}/s1", headers=auth)).json()
    assert s["budget"]["limit"] == 50 and s["budget"]["spent"] <= 50 and s["budget"]["held"] == 0
    assert s["usage"]["cost"] == s["budget"]["spent"]


@pytest.mark.parametrize(
    "agent_def",
    [{"budget": {"usd": "$0.00005"}, "guardrails": {"escalate_on_budget_exhausted": False}}],
    indirect=True,
)
async def test_budget_without_escalation_is_402_and_nothing_recorded(
    http: httpx.AsyncClient, art: Runtime
) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    for i in range(40):
        r = await http.post(
            f"{BASE}/s1/messages", json={"content": f"turn {i} with several words in it"}, headers=auth
        )
        if r.status_code != 200:
            break
    err(r, 402, "session_budget_exceeded")
    s = (await http.get(f"{BASE}/s1", headers=auth)).json()
    assert s["turns"] == i and s["budget"]["spent"] <= 50


async def test_definitions_are_versioned(http: httpx.AsyncClient, art: Runtime) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth, "old")
    spec = art.settings.agents.definitions[0].model_dump(mode="json")
    r = await http.put("/admin/agents/support", json=spec, headers=ADMIN)
    assert r.json() == {"agent": "support", "version": 1, "created": False}
    spec["system_prompt"] = "You are terse."
    r = await http.put("/admin/agents/support", json=spec, headers=ADMIN)
    assert r.json() == {"agent": "support", "version": 2, "created": True}
    new = await open_session(http, auth, "new")
    assert new["version"] == 2 and (await http.get(f"{BASE}/old", headers=auth)).json()["version"] == 1
    versions = (await http.get("/admin/agents/support/versions", headers=ADMIN)).json()["data"]
    assert [(v["version"], v["source"]) for v in versions] == [(1, "config"), (2, "api")]
    assert versions[1]["definition"]["system_prompt"] == "You are terse."
    err(
        await http.put("/admin/agents/support", json={**spec, "model": "nope"}, headers=ADMIN),
        404,
        "model_not_found",
    )
    err(
        await http.put("/admin/agents/support", json={**spec, "max_steps": 0}, headers=ADMIN),
        400,
        "invalid_agent",
        "max_steps",
    )
    bad_tools = {**spec, "tools": [{"name": "t", "url": "http://x/{nope}"}]}
    err(await http.put("/admin/agents/support", json=bad_tools, headers=ADMIN), 400, "invalid_agent")
    bad_guard = {**spec, "guardrails": {"blocked_patterns": ["("]}}
    err(await http.put("/admin/agents/support", json=bad_guard, headers=ADMIN), 400, "invalid_agent")
    assert len((await http.get("/admin/agents/support/versions", headers=ADMIN)).json()["data"]) == 2


async def test_sse_stream_and_websocket(http: httpx.AsyncClient, art: Runtime) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    async with http.stream(
        "POST", f"{BASE}/s1/messages", json={"content": "order A1001", "stream": True}, headers=auth
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [ln.split(": ", 1)[1] async for ln in r.aiter_lines() if ln.startswith("event: ")]
    assert events == ["tool_call", "message", "done"]
    err(
        await http.post(f"{BASE}/nope/messages", json={"content": "x", "stream": True}, headers=auth),
        404,
        "session_not_found",
    )


def test_websocket(
    db_url: str, tmp_path: Path, agent_model: tuple[AgentModel, str], tool_server: tuple[ToolServer, str]
) -> None:
    from starlette.testclient import TestClient

    from tollway.api.app import create_app

    app = create_app(agent_settings(db_url, agent_model[1], tool_server[1], tmp_path))
    with TestClient(app) as tc:
        c = tc.post("/admin/customers", json={"name": "Ada"}, headers=ADMIN).json()
        auth = {
            "Authorization": "Bearer "
            + tc.post("/admin/keys", json={"customer_id": c["id"]}, headers=ADMIN).json()["key"]
        }
        assert tc.post(BASE, json={"id": "w1"}, headers=auth).status_code == 201
        with tc.websocket_connect(f"{BASE}/w1/ws", headers=auth) as ws:
            ws.send_text(json.dumps({"content": "over the socket"}))
            got = []
            while True:
                m = ws.receive_json()
                got.append(m)
                if m["event"] in ("done", "error"):
                    break
            assert got[-1]["event"] == "done", got
            assert got[-1]["data"]["reply"]["content"] == "echo: over the socket"
            ws.send_text(json.dumps({"content": "x" * 9000}))
            assert ws.receive_json()["data"]["error"]["code"] == "message_too_long"
        with tc.websocket_connect(f"{BASE}/nope/ws", headers=auth) as ws:
            assert ws.receive_json()["data"]["error"]["code"] == "session_not_found"
        msgs = tc.get(f"{BASE}/w1/messages", headers=auth).json()["data"]
        assert [m["role"] for m in msgs] == ["user", "assistant"]


async def test_schedules_deliver_messages_through_the_turn(http: httpx.AsyncClient, art: Runtime) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    sched = f"{BASE}/s1/schedules"
    r = await http.post(sched, json={"content": "wake up", "delay_seconds": 0}, headers=auth)
    assert r.status_code == 201 and r.json()["task"] == "agent.message", r.text
    assert r.json()["owner"] == "agent:support:s1"
    later = await http.post(sched, json={"content": "much later", "cron": "0 9 * * 1"}, headers=auth)
    assert later.json()["kind"] == "cron"
    err(await http.post(sched, json={"content": "x"}, headers=auth), 400, "invalid_schedule", "delay_seconds")
    err(
        await http.post(sched, json={"content": "x", "at": "2020-01-01"}, headers=auth),
        400,
        "invalid_schedule",
        "at",
    )
    err(
        await http.post(sched, json={"content": "x", "delay_seconds": 1, "cron": "* * * * *"}, headers=auth),
        400,
        "invalid_schedule",
    )
    err(
        await http.post(f"{BASE}/nope/schedules", json={"content": "x", "delay_seconds": 1}, headers=auth),
        404,
        "session_not_found",
    )
    listed = (await http.get(sched, headers=auth)).json()["data"]
    assert [s["payload"]["content"] for s in listed] == ["wake up", "much later"]
    assert await art.scheduler.run_due() == 1
    msgs = (await http.get(f"{BASE}/s1/messages", headers=auth)).json()["data"]
    assert [m["content"] for m in msgs] == ["wake up", "echo: wake up"]
    # At least once: a repeated delivery of the same run makes no second turn.
    done = (await http.get(f"{sched}/{r.json()['id']}", headers=auth)).json()
    assert done["status"] == "done"
    from tollway.schedules import Schedule

    await art.alarms.deliver(
        Schedule(
            **{**{k: done[k] for k in done if k != "object"}, "next_run_us": msgs[0]["origin"]["run_us"]}
        )
    )
    assert len((await http.get(f"{BASE}/s1/messages", headers=auth)).json()["data"]) == 2
    c = await http.delete(f"{sched}/{later.json()['id']}", headers=auth)
    assert c.status_code == 200 and c.json()["status"] == "cancelled"
    assert (await http.get(sched, headers=auth)).json()["data"] == []
    other = await customer_key(http, art)
    err(await http.get(sched, headers=other), 404, "session_not_found")


async def test_key_value_state_is_durable_and_seen_by_the_model(
    http: httpx.AsyncClient, art: Runtime, agent_model: tuple[AgentModel, str]
) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    r = await http.patch(f"{BASE}/s1/state", json={"state": {"plan": "pro", "tries": 2}}, headers=auth)
    assert r.status_code == 200 and r.json()["state"] == {"plan": "pro", "tries": 2}, r.text
    r = await http.patch(f"{BASE}/s1/state", json={"state": {"tries": None, "lang": "en"}}, headers=auth)
    assert r.json()["state"] == {"plan": "pro", "lang": "en"}
    err(
        await http.patch(f"{BASE}/s1/state", json={"state": {"x": [1]}}, headers=auth),
        400,
        "invalid_state",
        "state.x",
    )
    err(await http.patch(f"{BASE}/s1/state", json={"state": {}}, headers=auth), 400, "invalid_state")
    err(
        await http.patch(f"{BASE}/nope/state", json={"state": {"a": 1}}, headers=auth),
        404,
        "session_not_found",
    )
    await say(http, auth, "hi")
    assert "Session state: plan=pro, lang=en" in agent_model[0].bodies[-1]["messages"][0]["content"]
    assert (await http.get(f"{BASE}/s1", headers=auth)).json()["state"] == {"plan": "pro", "lang": "en"}


async def test_turns_pass_the_gateway_like_chat_completions(http: httpx.AsyncClient, art: Runtime) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    first = await say(http, auth, "hello")
    log = (await http.get("/admin/requests", headers=ADMIN)).json()["data"]
    [entry] = [e for e in log if e["endpoint"] == "agents.messages"]
    assert (
        entry["status"] == 200 and entry["cost"] == first["usage"]["cost"] and entry["model"] == "agent-model"
    )
    key_id = entry["key_id"]
    # The key's daily budget caps every model call of the turns, as it caps chat completions.
    r = await http.patch(
        f"/admin/keys/{key_id}/limits", json={"daily_budget": 3 * first["usage"]["cost"]}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    codes = []
    for _ in range(6):
        r = await http.post(f"{BASE}/s1/messages", json={"content": "hello"}, headers=auth)
        codes.append(r.status_code)
    assert 402 in codes and codes.index(402) <= 3, codes
    assert r.json()["error"]["code"] == "budget_exceeded"  # a key's budget refuses; it does not escalate
    view = (await http.get(f"/admin/keys/{key_id}/limits", headers=ADMIN)).json()
    [daily] = view["budgets"]
    assert daily["held"] == 0 and daily["spent"] <= daily["budget"]
    # And its rate limit.
    await http.patch(f"/admin/keys/{key_id}/limits", json={"daily_budget": None, "rpm": 1}, headers=ADMIN)
    await http.post(f"{BASE}/s1/messages", json={"content": "one"}, headers=auth)
    err(
        await http.post(f"{BASE}/s1/messages", json={"content": "two"}, headers=auth),
        429,
        "rate_limit_exceeded",
    )


@pytest.mark.parametrize(
    "agent_def",
    [
        {
            "tools": [tool("order_status", "http://127.0.0.1:1/down/{order_id}")],
            "guardrails": {
                "escalate_on_tool_failure": True,
                "refusals": [{"pattern": "medical", "message": "I cannot give medical advice."}],
            },
        }
    ],
    indirect=True,
)
async def test_tool_failure_escalates_and_refusals_skip_the_model(
    http: httpx.AsyncClient, art: Runtime, agent_model: tuple[AgentModel, str]
) -> None:
    auth = await customer_key(http, art)
    await open_session(http, auth)
    calls = agent_model[0].calls
    out = await say(http, auth, "is this medical question ok?")
    assert out["reply"]["content"] == "I cannot give medical advice." and out["reply"]["refusal"] is True
    assert agent_model[0].calls == calls and out["usage"]["cost"] == 0  # no model call
    out = await say(http, auth, "where is A1001?")
    [call] = out["tool_calls"]
    assert call["status"] == "error" and out["status"] == "escalated"
    assert agent_model[0].calls == calls + 1  # the model is not asked again once a person takes over
    assert out["escalation"]["reason"] == "tool_failure"
    [esc] = (await http.get("/v1/escalations", headers=ADMIN)).json()["data"]
    assert esc["reason"] == "tool_failure" and "order_status" in esc["detail"]
    log = (await http.get(f"{BASE}/s1/tool_calls", headers=auth)).json()["data"]
    assert [t["status"] for t in log] == ["error"]


async def test_many_sessions_at_once_on_a_small_pool(
    db_url: str, tmp_path: Path, agent_model: tuple[AgentModel, str], tool_server: tuple[ToolServer, str]
) -> None:
    """More concurrent sessions than the pool has connections: on PostgreSQL
    each turn holds one for its advisory lock and needs others; none starves."""
    s = agent_settings(db_url, agent_model[1], tool_server[1], tmp_path)
    s = s.model_copy(update={"database": s.database.model_copy(update={"pool_size": 2})})
    rt = Runtime.build(s)
    try:
        c = await rt.customers.create("Ada")
        await rt.ledger.transfer("sys_funding", c.account_id, 10_000_000)
        caller = Caller(c.id, c.account_id)
        n = 12
        for i in range(n):
            await rt.agents.create_session(c.id, "support", f"p{i}")

        async def user(i: int) -> list[int]:
            return [(await rt.agents.send(caller, "support", f"p{i}", f"m{t}"))["turn"] for t in range(3)]

        turns = await asyncio.wait_for(asyncio.gather(*(user(i) for i in range(n))), 120)
        assert turns == [[1, 2, 3]] * n
    finally:
        await rt.close()


async def test_sessions_made_before_namespaces_are_their_customers_after_the_migration(
    tmp_path: Path,
) -> None:
    """Migration 0013 moves each session (its messages, tool log, escalations and
    schedules) to its customer's namespace: the customer still finds it by its id."""
    from sqlalchemy import text

    from tollway.core import migrate
    from tollway.runtime import Runtime

    rt = Runtime.build(settings_for(f"sqlite:///{tmp_path / 'old.db'}"))
    try:
        await migrate.upgrade(rt.engine, "0012")
        counters = ", ".join(f"{c}" for c in COUNTERS)
        async with rt.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO agent_sessions (agent, id, customer_id, version, status, turns, next_seq,"
                    f" summary, summary_through, state, {counters}, created_at_us, updated_at_us)"
                    f" VALUES ('support', 'old-1', 'cus_a', 1, 'active', 1, 3, '', 1, '{{}}',"
                    f" {', '.join('0' for _ in COUNTERS)}, 0, 0)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO agent_messages (agent, session_id, seq, turn, role, content, meta,"
                    " created_at_us) VALUES ('support', 'old-1', 1, 1, 'user', 'hello', '{}', 0)"
                )
            )
        await migrate.upgrade(rt.engine, "head")
        new = scoped("cus_a", "old-1")
        async with rt.engine.connect() as conn:
            assert (await conn.execute(text("SELECT id FROM agent_sessions"))).scalars().all() == [new]
            got = (await conn.execute(text("SELECT session_id FROM agent_messages"))).scalars().all()
            assert got == [new]
        s = await rt.agents.store.load("support", new, "cus_a")
        assert s.to_dict()["id"] == "old-1" and [m.content for m in s.recent] == ["hello"]
    finally:
        await rt.close()
