"""The eval loop (issue 23 §5) on the support agent (the stand-in model that
uses tools), graded by a deterministic grader stand-in (an OpenAI-compatible
upstream in the registry), and once by the local model: sampling (every
escalated session), grades and deterministic checks, the operator paying,
version comparison by replay, labelled examples as JSONL, the API, the CLI
and the weekly schedule."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from agent_helpers import AgentModel, ToolServer, agent_settings, customer_key
from conftest import ADMIN, err
from threaded import ThreadServer, read_body
from tollway.core.schema import usage_events
from tollway.evals.grader import parse
from tollway.runtime import Runtime
from tollway.settings import Settings

pytest_plugins = ["agent_support"]
BASE = "/v1/agents/support/sessions"


class GraderModel:
    """Scores by rule, in a chatty answer around the JSON (the parser must cope):
    helpfulness 1 for a blocked answer, 3 for a hand-over, 5 after a tool, else 4."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        req = json.loads(body)
        with self.lock:
            self.requests.append(req)
        text = req["messages"][-1]["content"]
        convo = text.split("Conversation:", 1)[1]
        helpful = 4
        if "I cannot share that answer" in convo:
            helpful = 1
        elif "passed this conversation to a person" in convo:
            helpful = 3
        elif "tool said" in convo:
            helpful = 5
        grounded = 5 if "(no chunks were cited)" in text else 4
        content = f'Scores: {{"helpfulness": {helpful}, "safety": 5, "groundedness": {grounded}}} -- done'
        out = {
            "id": "chatcmpl-grader",
            "object": "chat.completion",
            "created": 0,
            "model": "grader",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
        }
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(out).encode()})


@pytest.fixture(scope="module")
def grader() -> Iterator[tuple[GraderModel, str]]:
    app = GraderModel()
    with ThreadServer(app, lifespan="off") as srv:
        yield app, srv.url + "/v1"


def eval_settings(base: Settings, grader_url: str, **evals: Any) -> Settings:
    d = base.model_dump(mode="json")
    d["models"].append(
        {
            "name": "grader-model",
            "task": "chat",
            "backend": "openai",
            "base_url": grader_url,
            "neurons_per_m_input": 100_000,
            "neurons_per_m_output": 200_000,
        }
    )
    d["evals"] = {"grader": "grader-model", **evals}
    return Settings.model_validate(d)


@pytest.fixture
async def ert(
    db_url: str,
    tmp_path: Path,
    agent_model: tuple[AgentModel, str],
    tool_server: tuple[ToolServer, str],
    grader: tuple[GraderModel, str],
) -> AsyncIterator[Runtime]:
    base = agent_settings(db_url, agent_model[1], tool_server[1], tmp_path)
    rt = Runtime.build(eval_settings(base, grader[1], weekly=True))
    yield rt
    await rt.close()


@pytest.fixture
async def http(ert: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    from tollway.api.app import create_app

    app = create_app(rt=ert)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tollway.test") as c:
        yield c


async def say(http: httpx.AsyncClient, auth: dict[str, str], sid: str, *texts: str) -> None:
    r = await http.post(BASE, json={"id": sid}, headers=auth)
    assert r.status_code == 201, r.text
    for t in texts:
        r = await http.post(f"{BASE}/{sid}/messages", json={"content": t}, headers=auth)
        assert r.status_code == 200, r.text


async def traffic(http: httpx.AsyncClient, rt: Runtime) -> str:
    """Four sessions: a tool call, two chats, one escalated and answered by a person."""
    auth = await customer_key(http, rt)
    await say(http, auth, "order", "Where is my order A1001?")
    await say(http, auth, "chat1", "hello there")
    await say(http, auth, "chat2", "good morning")
    await say(http, auth, "human", "I want to talk to a human please")
    [esc] = (await http.get("/v1/escalations", headers=ADMIN)).json()["data"]
    r = await http.post(
        f"/v1/escalations/{esc['id']}/reply",
        json={"content": "Hi, Sam here: refunded.", "by": "sam"},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    return str(esc["id"])


def test_the_grader_output_is_parsed_leniently() -> None:
    assert parse('{"helpfulness": 4, "safety": 5, "groundedness": 3}') == {
        "helpfulness": 4,
        "safety": 5,
        "groundedness": 3,
    }
    assert parse('Sure! {"helpfulness": 9, "safety": "2", "groundedness": 0.4} bye') == {
        "helpfulness": 5,
        "safety": 2,
        "groundedness": 1,
    }
    assert parse('{"helpfulness": 4, "safety": 5, "grounded') == {
        "helpfulness": 4,
        "safety": 5,
        "groundedness": None,
    }
    assert parse("helpfulness=3, Safety: 4") == {"helpfulness": 3, "safety": 4, "groundedness": None}
    assert parse("") == {"helpfulness": None, "safety": None, "groundedness": None}
    assert parse('{"helpfulness": true, "safety": [1]}') == {
        "helpfulness": None,
        "safety": None,
        "groundedness": None,
    }


async def test_a_run_samples_every_escalated_session_and_grades_charged_to_the_operator(
    http: httpx.AsyncClient, ert: Runtime, grader: tuple[GraderModel, str]
) -> None:
    await traffic(http, ert)
    grader[0].requests.clear()
    # share 0: the escalated session only, every time.
    for seed in (1, 2, 3):
        sampled = await ert.evals.sample("support", None, share=0.0, seed=seed)
        assert [(s.session_id.split("~")[0], s.escalated) for s in sampled] == [("human", True)]
    run = await ert.evals.run("support", share=1.0, seed=7)
    assert run["status"] == "done" and run["kind"] == "run" and run["grader"] == "grader-model"
    by = {g["session_id"]: g for g in run["grades"]}
    assert set(by) == {"order", "chat1", "chat2", "human"}
    assert by["order"]["helpfulness"] == 5 and by["order"]["checks"]["tool_calls"] == 1
    assert by["human"]["helpfulness"] == 3 and by["human"]["escalated"] == 1
    assert by["human"]["checks"]["escalations"] == 1
    assert by["chat1"]["helpfulness"] == 4 and all(g["safety"] == 5 for g in run["grades"])
    assert all(g["checks"]["passed"] for g in run["grades"])
    s = run["summary"]
    assert s["graded"] == 4 and s["escalated"] == 1 and s["scores"]["helpfulness"] == 4.0
    assert s["examples_kept"] == 1
    # The grader was asked for JSON under the rubric's schema.
    rf = grader[0].requests[0]["response_format"]
    assert rf["type"] == "json_schema" and set(rf["json_schema"]["schema"]["required"]) == {
        "helpfulness",
        "safety",
        "groundedness",
    }
    # Charged like any model call, to the operator's customer.
    assert run["cost"] > 0 and run["cost"] == sum(g["cost"] for g in run["grades"])
    async with ert.engine.connect() as conn:
        paid = (
            await conn.execute(
                select(func.coalesce(func.sum(usage_events.c.amount), 0)).where(
                    usage_events.c.customer_id == "cus_operator"
                )
            )
        ).scalar_one()
    assert paid == run["cost"]
    assert (await ert.evals.show(run["id"]))["grades"] == run["grades"]
    assert [r["id"] for r in await ert.evals.runs("support")] == [run["id"]]


async def test_compare_two_versions_by_replay(
    http: httpx.AsyncClient, ert: Runtime, agent_model: tuple[AgentModel, str]
) -> None:
    await traffic(http, ert)
    spec = ert.settings.agents.definitions[0].model_dump(mode="json")
    spec["guardrails"] = {"blocked_patterns": ["^echo"]}  # version 2 cannot answer small talk
    r = await http.put("/admin/agents/support", json=spec, headers=ADMIN)
    assert r.json()["version"] == 2
    out = await ert.evals.compare("support", 1, 2, share=1.0, seed=1)
    assert out["kind"] == "compare" and out["version"] == 1 and out["version_b"] == 2
    grades = {(g["session_id"], g["arm"]): g for g in out["grades"]}
    assert {k[1] for k in grades} == {"a", "b"} and len(grades) == 8
    assert grades[("chat1", "a")]["helpfulness"] == 4 and grades[("chat1", "b")]["helpfulness"] == 1
    assert grades[("chat1", "b")]["version"] == 2 and grades[("chat1", "a")]["version"] == 1
    assert (
        grades[("chat1", "b")]["checks"]["guardrail_hits"] and not grades[("chat1", "b")]["checks"]["passed"]
    )
    assert grades[("order", "b")]["helpfulness"] == 5  # "tool said ...": not blocked
    d = out["summary"]["delta"]
    assert d["helpfulness"] < 0 and d["safety"] == 0 and d["checks_passed"] < 0
    # The replays are the operator's scratch sessions: not sampled later; their
    # hand-overs wait for nobody (closed, no alert) and are no labelled examples.
    sampled = await ert.evals.sample("support", None, share=1.0)
    assert len(sampled) == 4
    assert (await http.get("/v1/escalations", params={"status": "open"}, headers=ADMIN)).json()["data"] == []
    await ert.alert_checks.run_once()
    assert await ert.alerts.list(kind="escalation_waiting") == []
    assert len(await ert.evals.examples.export()) == 1
    with pytest.raises(Exception) as e:
        await ert.evals.compare("support", 1, 9)
    assert getattr(e.value, "code", "") == "agent_not_found"


async def test_examples_export_as_openai_fine_tuning_jsonl(http: httpx.AsyncClient, ert: Runtime) -> None:
    await traffic(http, ert)
    lines = await ert.evals.examples.export("support")
    assert lines == [
        {
            "messages": [
                {"role": "system", "content": "You are a support agent."},
                {"role": "user", "content": "I want to talk to a human please"},
                {"role": "assistant", "content": "Hi, Sam here: refunded."},
            ]
        }
    ]
    assert await ert.evals.examples.harvest() == 0  # kept once
    r = await http.get("/admin/evals/examples", params={"agent": "support"}, headers=ADMIN)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/jsonl")
    assert [json.loads(x) for x in r.text.splitlines()] == lines
    r = await http.get("/admin/evals/examples", params={"agent": "nobody"}, headers=ADMIN)
    assert r.status_code == 200 and r.text == ""


async def test_the_admin_api_and_bad_input(http: httpx.AsyncClient, ert: Runtime) -> None:
    await traffic(http, ert)
    r = await http.post("/admin/evals/runs", json={"agent": "support", "share": 0}, headers=ADMIN)
    assert r.status_code == 201, r.text
    run = r.json()
    assert [g["session_id"] for g in run["grades"]] == ["human"]
    r = await http.get(f"/admin/evals/runs/{run['id']}", headers=ADMIN)
    assert r.status_code == 200 and r.json()["id"] == run["id"]
    r = await http.get("/admin/evals/runs", headers=ADMIN)
    assert [x["id"] for x in r.json()["data"]] == [run["id"]]
    err(await http.get("/admin/evals/runs/evr_nope", headers=ADMIN), 404, "eval_run_not_found")
    err(await http.post("/admin/evals/runs", json={"agent": "nobody"}, headers=ADMIN), 404, "agent_not_found")
    err(await http.post("/admin/evals/runs", json={}, headers=ADMIN), 400, "invalid_agent", "agent")
    err(
        await http.post("/admin/evals/runs", json={"agent": "support", "share": 2}, headers=ADMIN),
        400,
        "invalid_share",
    )
    err(
        await http.post("/admin/evals/runs", json={"agent": "support", "share": "x"}, headers=ADMIN),
        400,
        "invalid_share",
    )
    err(
        await http.post("/admin/evals/runs", json={"agent": "support", "version": "1"}, headers=ADMIN),
        400,
        "invalid_version",
    )
    for big in (2**31, 2**62, -1):
        err(
            await http.post("/admin/evals/runs", json={"agent": "support", "version": big}, headers=ADMIN),
            400,
            "invalid_version",
        )
    err(
        await http.post(
            "/admin/evals/compare",
            json={"agent": "support", "version_a": 1, "version_b": 2**40},
            headers=ADMIN,
        ),
        400,
        "invalid_version_b",
    )
    err(
        await http.post("/admin/evals/runs", json={"agent": "support", "x": 1}, headers=ADMIN),
        400,
        "unknown_parameter",
    )
    err(
        await http.post("/admin/evals/compare", json={"agent": "support", "version_a": 1}, headers=ADMIN),
        400,
        "invalid_version_b",
    )
    r = await http.post(
        "/admin/evals/runs", content=b"{nope", headers={**ADMIN, "content-type": "application/json"}
    )
    assert r.status_code == 400 and "error" in r.json()
    assert (await http.post("/admin/evals/runs", json={"agent": "support"})).status_code == 401
    auth = await customer_key(http, ert)  # a customer's key is no admin token
    for path in ("/admin/evals/runs", "/admin/evals/compare"):
        err(await http.post(path, json={"agent": "support"}, headers=auth), 401, "invalid_admin_token")
    for path in ("/admin/evals/runs", f"/admin/evals/runs/{run['id']}", "/admin/evals/examples"):
        err(await http.get(path, headers=auth), 401, "invalid_admin_token")
    # Nothing was run by the refusals.
    assert len((await http.get("/admin/evals/runs", headers=ADMIN)).json()["data"]) == 1


async def test_the_weekly_schedule_is_made_once_and_runs_every_agent(
    http: httpx.AsyncClient, ert: Runtime
) -> None:
    await traffic(http, ert)
    s1 = await ert.evals_weekly.ensure()
    s2 = await ert.evals_weekly.ensure()
    assert s1 is not None and s2 is not None and s1.id == s2.id and s1.cron == "0 3 * * 1"
    assert s1.task == "evals.weekly"
    await ert.evals_weekly.run(s1)
    [run] = await ert.evals.runs()
    assert run["agent"] == "support" and run["status"] == "done" and run["summary"]["escalated"] == 1
    # Another cron: the old schedule is cancelled; disabled: none is left.
    ert.evals.cfg = ert.evals.cfg.model_copy(update={"weekly_cron": "0 4 * * 2"})
    s3 = await ert.evals_weekly.ensure()
    assert s3 is not None and s3.id != s1.id
    assert [(s.id, s.cron) for s in await ert.scheduler.list("evals")] == [(s3.id, "0 4 * * 2")]
    ert.evals.cfg = ert.evals.cfg.model_copy(update={"weekly": False})
    assert await ert.evals_weekly.ensure() is None and await ert.scheduler.list("evals") == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_evals_run_show_compare_export(
    db_url: str,
    tmp_path: Path,
    agent_model: tuple[AgentModel, str],
    tool_server: tuple[ToolServer, str],
    grader: tuple[GraderModel, str],
) -> None:
    from tollway.cli.main import app

    settings = eval_settings(agent_settings(db_url, agent_model[1], tool_server[1], tmp_path), grader[1])

    async def seed() -> None:
        from tollway.api.app import create_app

        rt = Runtime.build(settings)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t"
        ) as h:
            await traffic(h, rt)
        await rt.close()

    asyncio.run(seed())
    cfg = tmp_path / "tollway.toml"
    cfg.write_text(
        f"""
[database]
url = "{db_url}"
[vectors]
path = "{tmp_path / "vectors"}"
[evals]
grader = "grader-model"
[agents]
tool_allow = ["127.0.0.1/32"]
[[agents.definitions]]
name = "support"
model = "agent-model"
system_prompt = "You are a support agent."
[[models]]
name = "agent-model"
task = "chat"
backend = "openai"
base_url = "{agent_model[1]}"
[[models]]
name = "grader-model"
task = "chat"
backend = "openai"
base_url = "{grader[1]}"
"""
    )
    runner = CliRunner()

    def cli(*args: str) -> Any:
        r = runner.invoke(app, ["--config", str(cfg), "evals", *args])
        assert r.exit_code == 0, r.output
        return r.stdout

    run = json.loads(cli("run", "support", "--share", "1", "--seed", "3", "--json"))
    assert run["summary"]["graded"] == 4
    shown = json.loads(cli("show", run["id"], "--json"))
    assert shown["id"] == run["id"] and len(shown["grades"]) == 4
    assert json.loads(cli("show", "--json"))["data"][0]["id"] == run["id"]
    assert "helpfulness" in cli("show", run["id"])
    cmp_ = json.loads(cli("compare", "support", "1", "1", "--share", "0", "--json"))
    assert cmp_["summary"]["delta"]["safety"] == 0
    lines = [json.loads(x) for x in cli("export", "--agent", "support").splitlines()]
    assert lines[0]["messages"][-1] == {"role": "assistant", "content": "Hi, Sam here: refunded."}
    r = runner.invoke(app, ["--config", str(cfg), "evals", "run", "nobody", "--json"])
    assert r.exit_code == 1 and json.loads(r.stdout)["error"]["code"] == "agent_not_found"
    assert re.search(r"evr_", cli("show"))


@pytest.mark.slow  # loads SmolLM2 and generates: ~40 s on a loaded 2-core machine
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_run_graded_by_the_local_model(
    db_url: str,
    tmp_path: Path,
    agent_model: tuple[AgentModel, str],
    tool_server: tuple[ToolServer, str],
) -> None:
    """SmolLM2-135M on llama.cpp grades under the rubric's JSON schema (its grammar):
    whatever it thinks, its answer parses into three scores from 1 to 5."""
    from tollway.api.app import create_app

    base = agent_settings(db_url, agent_model[1], tool_server[1], tmp_path)
    rt = Runtime.build(
        Settings.model_validate({**base.model_dump(mode="json"), "evals": {"grader_max_tokens": 40}})
    )
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t"
        ) as h:
            auth = await customer_key(h, rt)
            await say(h, auth, "human", "I want to talk to a human please")
        run = await rt.evals.run("support", share=0.0)
        [g] = run["grades"]
        assert run["grader"] == "smollm2-135m-instruct" and g["escalated"] == 1
        assert all(
            isinstance(g[k], int) and 1 <= g[k] <= 5 for k in ("helpfulness", "safety", "groundedness")
        ), g
        assert json.loads(g["grader_output"]).keys() == {"helpfulness", "safety", "groundedness"}
        assert g["cost"] > 0
    finally:
        await rt.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_demo_agent_graded_on_the_chunks_it_cited(
    db_url: str,
    tmp_path: Path,
    agent_model: tuple[AgentModel, str],
    grader: tuple[GraderModel, str],
) -> None:
    """``tollway init --demo``'s support agent (its knowledge base ingested with the
    real embeddings model): the grader reads the text of every chunk an answer cited."""
    import tomllib

    from tollway.agents import demo
    from tollway.api.app import create_app
    from tollway.inference.config import default_models

    agents_cfg = tomllib.loads(demo.demo_config())["agents"]
    agents_cfg["definitions"][0]["model"] = "agent-model"
    agents_cfg["definitions"][0]["tools"] = []  # the order tool is served by a running server only
    models = [m.model_dump(mode="json") for m in default_models()]
    models.append({"name": "agent-model", "task": "chat", "backend": "openai", "base_url": agent_model[1]})
    base = Settings.model_validate(
        {
            "database": {"url": db_url},
            "admin": {"token": ADMIN["Authorization"].split()[1]},
            "vectors": {"path": str(tmp_path / "vectors")},
            "agents": agents_cfg,
            "models": models,
        }
    )
    rt = Runtime.build(eval_settings(base, grader[1]))
    try:
        await rt.migrate()
        await demo.seed(rt)
        grader[0].requests.clear()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t"
        ) as h:
            auth = await customer_key(h, rt)
            await say(h, auth, "ship", "How long does express shipping take?")
        run = await rt.evals.run("support", share=1.0)
        [g] = run["grades"]
        assert g["groundedness"] == 4  # the stand-in: chunks were cited
        [req] = grader[0].requests
        prompt = req["messages"][-1]["content"]
        cited = prompt.split("Conversation:")[0]
        assert "express shipping takes 1 to 2 business days" in cited.replace("\n", " ")
    finally:
        await rt.close()
