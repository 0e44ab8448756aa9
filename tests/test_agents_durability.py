"""``kill -9`` in the middle of a turn: the real server (``python -m
tollway.cli.main serve``) in a subprocess, on SQLite or PostgreSQL, killed
while the model is answering; restarted on the same database, the session
is exactly as it was after its last complete turn, and continues."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_helpers import AgentModel, ToolServer, agent_settings
from conftest import ADMIN, ADMIN_TOKEN, PG_SKIP, PG_URL
from threaded import free_port

pytest_plugins = ["agent_support"]


def toml(v: Any) -> str:
    """A value as TOML (inline tables and arrays); None values are left out."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml(x)}" for k, x in v.items() if x is not None) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


@contextmanager
def serve(env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    cmd = [sys.executable, "-m", "tollway.cli.main", "serve", "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text())
        time.sleep(0.1)
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(20)


def server_env(db_url: str, model_url: str, tools_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a server with the test support agent (its tollway.toml written)."""
    s = agent_settings(db_url, model_url, tools_url, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    env["TOLLWAY_CONFIG"] = str(tmp_path / "tollway.toml")
    (tmp_path / "tollway.toml").write_text(
        "\n".join(
            [
                f"models = {toml([m.model_dump(mode='json') for m in s.models])}",
                "[database]",
                f"url = {toml(db_url)}",
                "[admin]",
                f"token = {toml(ADMIN_TOKEN)}",
                "[vectors]",
                f"path = {toml(str(tmp_path / 'vectors'))}",
                "[agents]",
                f"tool_allow = {toml(s.agents.tool_allow)}",
                f"definitions = {toml([a.model_dump(mode='json') for a in s.agents.definitions])}",
            ]
        )
    )
    return env


def customer(url: str) -> dict[str, str]:
    """A funded customer's API key, as an auth header."""
    c = httpx.post(url + "/admin/customers", json={"name": "Ada"}, headers=ADMIN).json()
    httpx.post(
        url + "/admin/ledger/transfers",
        json={"debit_account_id": "sys_funding", "credit_account_id": c["account_id"], "amount": 10_000_000},
        headers=ADMIN,
    )
    key = httpx.post(url + "/admin/keys", json={"customer_id": c["id"]}, headers=ADMIN).json()["key"]
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.skipif(not PG_URL, reason=PG_SKIP)
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_two_processes_one_session_single_writer(
    db_url: str, tmp_path: Path, agent_model: tuple[AgentModel, str], tool_server: tuple[ToolServer, str]
) -> None:
    """Two servers on one PostgreSQL take turns for the same session (the
    advisory lock): every turn is whole, none lost, none interleaved."""
    env = server_env(db_url, agent_model[1], tool_server[1], tmp_path)
    log = tmp_path / "serve.log"
    with serve(env, log) as (_, a), serve(env, log) as (_, b):
        auth = customer(a)
        assert (
            httpx.post(a + "/v1/agents/support/sessions", json={"id": "shared"}, headers=auth).status_code
            == 201
        )
        n = 16

        async def go() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as h:
                return await asyncio.gather(
                    *(
                        h.post(
                            (a, b)[i % 2] + "/v1/agents/support/sessions/shared/messages",
                            json={"content": f"sleep:0.05 m{i}"},
                            headers=auth,
                        )
                        for i in range(n)
                    )
                )

        rs = asyncio.run(go())
        assert [r.status_code for r in rs] == [200] * n, [r.text for r in rs if r.status_code != 200]
        assert sorted(r.json()["turn"] for r in rs) == list(range(1, n + 1))
        msgs = httpx.get(b + "/v1/agents/support/sessions/shared/messages?limit=1000", headers=auth).json()[
            "data"
        ]
        assert len(msgs) == 2 * n
        for u, r in zip(msgs[::2], msgs[1::2], strict=True):
            assert (u["role"], r["role"]) == ("user", "assistant") and r["content"] == "echo: " + u["content"]
            assert u["turn"] == r["turn"]
        assert sorted(m["content"] for m in msgs[::2]) == sorted(f"sleep:0.05 m{i}" for i in range(n))


def test_kill_9_mid_turn_leaves_the_session_intact(
    db_url: str, tmp_path: Path, agent_model: tuple[AgentModel, str], tool_server: tuple[ToolServer, str]
) -> None:
    model, model_url = agent_model
    env = server_env(db_url, model_url, tool_server[1], tmp_path)
    log = tmp_path / "serve.log"
    base = "/v1/agents/support/sessions/s1"
    with serve(env, log) as (proc, url):
        auth = customer(url)
        assert (
            httpx.post(url + "/v1/agents/support/sessions", json={"id": "s1"}, headers=auth).status_code
            == 201
        )
        r = httpx.post(url + base + "/messages", json={"content": "order A1001"}, headers=auth, timeout=30)
        assert r.status_code == 200 and r.json()["tool_calls"][0]["status"] == "ok", r.text
        before = httpx.get(url + base, headers=auth).json()
        msgs_before = httpx.get(url + base + "/messages", headers=auth).json()["data"]
        tools_before = httpx.get(url + base + "/tool_calls", headers=auth).json()["data"]
        calls = model.calls
        hung: dict[str, Any] = {}

        def send() -> None:
            try:
                hung["r"] = httpx.post(
                    url + base + "/messages",
                    json={"content": "sleep:30 then A1002"},
                    headers=auth,
                    timeout=60,
                )
            except httpx.HTTPError as e:
                hung["e"] = e

        t = threading.Thread(target=send)
        t.start()
        deadline = time.monotonic() + 20
        while model.calls == calls:  # the turn is in the model: kill the server now
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        t.join(10)
        assert "e" in hung  # the client saw the connection drop
    with serve(env, log) as (_, url):
        after = httpx.get(url + base, headers=auth).json()
        assert after == before
        assert httpx.get(url + base + "/messages", headers=auth).json()["data"] == msgs_before
        assert httpx.get(url + base + "/tool_calls", headers=auth).json()["data"] == tools_before
        # It resumes: the next turn is turn 2, with the first in its history.
        r = httpx.post(url + base + "/messages", json={"content": "still there?"}, headers=auth, timeout=30)
        assert r.status_code == 200 and r.json()["turn"] == 2, r.text
        assert r.json()["reply"]["content"] == "echo: still there?"
        history = model.bodies[-1]["messages"]
        assert next(m["content"] for m in history if m["role"] == "user") == "order A1001"
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
