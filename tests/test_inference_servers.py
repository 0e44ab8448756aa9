"""Inference against real servers on loopback:

- a client that hangs up mid-stream on a real ``tollway serve``: generation
  stops and only the tokens produced are charged;
- the ``openai`` backend against llama-cpp-python's own OpenAI-compatible
  server on the shipped GGUF (the scale-out path), and an upstream that is
  down (502 naming the provider, nothing charged).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ADMIN, ADMIN_TOKEN
from test_inference import CHAT, HI, make_env
from tollway.inference.backends.embedded import default_gguf

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def tollway_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    d = tmp_path_factory.mktemp("serve")
    db = d / "tollway.db"
    port = free_port()
    (d / "tollway.toml").write_text(
        f'[database]\nurl = "sqlite:///{db}"\n[admin]\ntoken = "{ADMIN_TOKEN}"\n[server]\nport = {port}\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollway.cli.main", "--config", str(d / "tollway.toml"), "serve"],
        cwd=d,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        yield f"http://127.0.0.1:{port}", db
    finally:
        stop(proc)


def customer_with_key(base: str, name: str) -> tuple[dict[str, Any], str]:
    with httpx.Client(base_url=base, timeout=60) as http:
        c = http.post("/admin/customers", json={"name": name}, headers=ADMIN).json()
        key = http.post("/admin/keys", json={"customer_id": c["id"]}, headers=ADMIN).json()["key"]
    return c, key


LONG_STORY = {
    "model": CHAT,
    "messages": [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}],
    "temperature": 0,
}


def test_client_disconnect_stops_generation_and_charges_only_produced(
    tollway_server: tuple[str, Path],
) -> None:
    base, db = tollway_server
    _, key = customer_with_key(base, "Ada")
    body = {**LONG_STORY, "max_tokens": 400, "stream": True}
    with httpx.Client(base_url=base, timeout=60) as http:
        got = 0
        with http.stream(
            "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content"' in line and '"content":""' not in line:
                    got += 1  # a piece of text (not the opening role chunk): at least one token
                    if got >= 4:
                        break  # hang up: the context manager closes the connection
        # The server notices, stops generating and settles what was produced.
        deadline = time.time() + 30
        rows: list[Any] = []
        while time.time() < deadline and not rows:
            with sqlite3.connect(db) as conn:
                rows = conn.execute("SELECT amount, quantity, metadata FROM usage_events").fetchall()
            time.sleep(0.2)
        [(amount, mneurons, meta)] = rows
        m = json.loads(meta)
        assert m["finish_reason"] == "cancelled" and m["stream"] is True
        assert 4 <= m["output_tokens"] < 400
        expected_mn = -(-(m["input_tokens"] * 2457 + m["output_tokens"] * 18252) // 1000)
        assert mneurons == expected_mn and amount == -(-expected_mn * 11_000 // 1_000_000)
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM ledger_pending").fetchone()[0] == 0


def test_non_streaming_client_that_hangs_up_is_charged_only_for_produced_tokens(
    tollway_server: tuple[str, Path],
) -> None:
    base, db = tollway_server
    c, key = customer_with_key(base, "Bo")
    body = {**LONG_STORY, "max_tokens": 500}
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=base, timeout=1.5) as http:
        http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    deadline = time.time() + 30
    meta: dict[str, Any] = {}
    while time.time() < deadline and not meta:
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT metadata FROM usage_events WHERE customer_id = ?", (c["id"],)
            ).fetchall()
        meta = json.loads(rows[0][0]) if rows else {}
        time.sleep(0.2)
    assert meta["finish_reason"] == "cancelled" and meta["stream"] is False
    assert 0 < meta["output_tokens"] < 500


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            # llama.cpp's own server, loading without the AMX weight repacking
            # that segfaults on some CPUs (see no_weight_repacking).
            "import runpy; from tollway.inference.backends.llama_cpp import no_weight_repacking; "
            "no_weight_repacking(); runpy.run_module('llama_cpp.server', run_name='__main__')",
            "--model",
            str(default_gguf()),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--n_ctx",
            "2048",
            "--model_alias",
            "smol-upstream",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)


def upstream_model(base_url: str, name: str = "upstream-chat") -> dict[str, Any]:
    return {
        "name": name,
        "task": "chat",
        "backend": "openai",
        "base_url": base_url,
        "upstream_model": "smol-upstream",
        "api_key_env": "TOLLWAY_TEST_UPSTREAM_KEY",
        "max_tokens": 64,
        "neurons_per_m_input": 2457,
        "neurons_per_m_output": 18252,
    }


@pytest.fixture
async def upstream_env(db_url: str, upstream: str) -> AsyncIterator[Any]:
    models = [upstream_model(upstream), upstream_model("http://127.0.0.1:9/v1", "down")]
    async for env in make_env(db_url, models=models):
        yield env


async def test_openai_upstream_chat_and_stream(upstream_env: Any) -> None:
    env = upstream_env
    c = await env.sdk.chat.completions.create(model="upstream-chat", messages=HI, max_tokens=8, temperature=0)
    assert c.model == "upstream-chat" and c.choices[0].message.content
    assert c.usage.completion_tokens > 0
    _, cost = env.rt.inference.price(
        env.rt.inference.configs["upstream-chat"], c.usage.prompt_tokens, c.usage.completion_tokens
    )
    assert await env.spent() == cost
    stream = await env.sdk.chat.completions.create(
        model="upstream-chat", messages=HI, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = [ch async for ch in stream]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len(await env.events()) == 2


async def test_upstream_down_is_502_naming_provider_and_charges_nothing(upstream_env: Any) -> None:
    env = upstream_env
    await env.http.get("/v1/usage", headers=env.auth)  # today's free allowance is granted (not a charge)
    before = await env.balances()
    r = await env.http.post("/v1/chat/completions", json={"model": "down", "messages": HI}, headers=env.auth)
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["code"] == "upstream_error" and "127.0.0.1" in err["message"]
    assert await env.balances() == before and await env.events() == []
    r = await env.http.post(
        "/v1/chat/completions", json={"model": "down", "messages": HI, "stream": True}, headers=env.auth
    )
    assert "upstream_error" in r.text
    assert await env.balances() == before and await env.events() == []
