"""JSON logs: one object per line with the request id and trace id, an access
line per request, and never a secret (bearer tokens, API keys, agent tokens,
Stripe keys, webhook secrets), whatever logs it."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fake_upstream import FakeUpstream, model
from test_inference import Env, make_env
from threaded import free_port
from tollway.observe import logs, tracing
from upstream_env import up  # noqa: F401  (fixture)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SECRETS = [
    "tw_abcdefghijkl_abcdefghijklmnopqrstuvwxyz012345",  # an API key
    "tw_agt_abcdefghijkl_abcdefghijklmnopqrstuvwxyz012345",  # an agent (wallet) token
    "sk_live_51HxYzAbCdEfGhIjKlMnOp",  # Stripe
    "rk_test_51HxYzAbCdEfGhIjKlMnOp",
    "whsec_abcdefghijklmnop1234",
    "sk-proj-abcdefghijklmnopqrstuvwx",  # OpenAI
    "sk-ant-api03-abcdefghijklmnopqrstuv",  # Anthropic
    "0x" + "ab" * 32,  # a private key
]


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture
async def jenv(db_url: str, up: FakeUpstream) -> AsyncIterator[Env]:  # noqa: F811
    over = {"telemetry": {"log_format": "json"}}
    async for e in make_env(db_url, models=[model("up", up.url)], **over):
        yield e


@pytest.mark.parametrize("secret", SECRETS)
def test_secrets_are_redacted_wherever_they_appear(secret: str, captured: io.StringIO) -> None:
    log = logging.getLogger("tollway.test")
    log.warning("Authorization: Bearer %s", secret)
    log.warning("the key %s failed", secret)
    log.warning("config api_key=%s; token: %s", secret, secret)
    log.info("plain", extra={"header": f"Bearer {secret}", "detail": secret})
    try:
        raise ValueError(f"refused {secret}")
    except ValueError:
        log.exception("oops with %s", secret)
    text = captured.getvalue()
    assert secret not in text and secret[8:30] not in text
    assert logs.REDACTED in text
    for line in _lines(captured):
        assert set(line) >= {"timestamp", "level", "logger", "message", "request_id", "trace_id", "span_id"}


def test_ordinary_text_is_kept() -> None:
    for text in ["model smollm2 answered 200 in 12 ms", "req_0123456789abcdef", "tokens=42 key_id=key_123"]:
        assert logs.redact(text) == text


async def test_json_lines_carry_request_and_trace_ids(jenv: Env, captured: io.StringIO) -> None:
    exporter = InMemorySpanExporter()
    tracing.enable(SimpleSpanProcessor(exporter))
    try:
        r = await jenv.http.post(
            "/v1/chat/completions",
            json={"model": "up", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            headers={
                **jenv.auth,
                "x-request-id": "abc-123",
                "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01",
            },
        )
    finally:
        tracing.disable()
    assert r.status_code == 200
    lines = _lines(captured)
    [access] = [x for x in lines if x["logger"] == "tollway.access"]
    assert access["request_id"] == "abc-123" and access["trace_id"] == TRACE and access["span_id"]
    assert access["status"] == 200 and access["route"] == "/v1/chat/completions"
    assert access["http_method"] == "POST" and access["duration_ms"] > 0
    assert access["message"] == "POST /v1/chat/completions 200"
    assert access["timestamp"].endswith("Z") and access["level"] == "info"
    assert jenv.key not in captured.getvalue()


async def test_no_secret_reaches_the_logs_of_requests(jenv: Env, captured: io.StringIO) -> None:
    stolen = "tw_abcdefghijkl_abcdefghijklmnopqrstuvwxyz012345"
    for auth in (f"Bearer {stolen}", f"Bearer {jenv.key}", "Basic dXNlcjpwYXNzd29yZA=="):
        r = await jenv.http.post(
            "/v1/chat/completions",
            json={"model": "up", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": auth},
        )
        assert r.status_code in (200, 401)
    # A secret in the path or query (a client's mistake) is logged redacted, if at all.
    await jenv.http.get(f"/v1/models?api_key={stolen}", headers=jenv.auth)
    await jenv.http.get(f"/nope/{stolen}")
    text = captured.getvalue()
    assert stolen not in text and jenv.key not in text and "dXNlcjpwYXNzd29yZA" not in text
    assert len([x for x in _lines(captured) if x["logger"] == "tollway.access"]) == 5


async def test_request_ids_differ_per_request(jenv: Env, captured: io.StringIO) -> None:
    a = await jenv.http.get("/healthz")
    b = await jenv.http.get("/healthz", headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    assert a.headers["x-request-id"] != b.headers["x-request-id"]
    access = [x for x in _lines(captured) if x["logger"] == "tollway.access"]
    assert [x["request_id"] for x in access] == [a.headers["x-request-id"], b.headers["x-request-id"]]
    # Tracing off: the incoming trace id still marks the line.
    assert [x["trace_id"] for x in access] == [None, TRACE]


def test_log_format_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert logs.log_format("text") == "text"
    monkeypatch.setenv("TOLLWAY_LOG_FORMAT", "json")
    assert logs.log_format("text") == "json"
    monkeypatch.setenv("TOLLWAY_LOG_FORMAT", "yaml")  # not a format: the config's
    assert logs.log_format("text") == "text"


@pytest.mark.slow
def test_tollway_serve_writes_only_json_lines(tmp_path: Path) -> None:
    """`tollway serve` with TOLLWAY_LOG_FORMAT=json: uvicorn's, alembic's and tollway's
    lines alike are JSON, the access line included, and a presented key is in none."""
    src = Path(__file__).resolve().parent.parent / "src"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOLLWAY_", "OTEL_"))}
    env |= {"PYTHONPATH": str(src), "TOLLWAY_LOG_FORMAT": "json"}
    cli = [sys.executable, "-m", "tollway.cli.main"]
    cfg = tmp_path / "tollway.toml"
    subprocess.run([*cli, "init", "--path", str(cfg)], cwd=tmp_path, env=env, check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen(
        [*cli, "--config", str(cfg), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    secret = "tw_abcdefghijkl_abcdefghijklmnopqrstuvwxyz012345"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server never answered"
                time.sleep(0.2)
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 401
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    text = out.decode()
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    assert {x["logger"] for x in lines} >= {"uvicorn.error", "tollway.access"}
    [refused] = [x for x in lines if x["logger"] == "tollway.access" and x["path"] == "/v1/models"]
    assert refused["status"] == 401 and refused["request_id"] == r.headers["x-request-id"]
    assert secret not in text and "color_message" not in text
