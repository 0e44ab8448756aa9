"""The AI binding's socket, without a sandbox: what it forwards (the routes,
the credential it adds in place of any the app sends, streaming) and what it
refuses in the one error shape (other routes, path tricks, bodies over the
limit, requests over the deployment's concurrency)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import err
from tollway.provision.ai_binding import AIBinding
from tollway.provision.config import ProvisionConfig
from tollway.provision.workers import Worker

BEARER = "tw_agt_binding_secret"


class Target:
    """A stand-in for tollway's app: echoes what reached it; ``/v1/chat/completions``
    with ``{"hold": true}`` waits for :attr:`release`, ``{"stream": true}`` sends
    two chunks, the second after :attr:`release`."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = asyncio.Semaphore(0)  # released by each request that waits for release
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        req = json.loads(body or b"{}")
        headers = [[k.decode(), v.decode()] for k, v in scope["headers"]]
        self.seen.append({"path": scope["path"], "raw_path": scope["raw_path"].decode(), "headers": headers})
        if req.get("hold"):
            self.holding.release()
            await self.release.wait()
        start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        await send(start)
        if req.get("stream"):
            await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
            await self.release.wait()
            await send({"type": "http.response.body", "body": b"second\n"})
            return
        out = json.dumps({"path": scope["path"], "headers": headers, "body": req}).encode()
        await send({"type": "http.response.body", "body": out})


class Bound:
    def __init__(self, binding: AIBinding, worker: Worker, target: Target, env: dict[str, str]) -> None:
        self.binding, self.worker, self.target, self.env = binding, worker, target, env

    @property
    def path(self) -> str:
        return self.env["TOLLWAY_AI_SOCKET"]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=self.path), base_url="http://ai")


async def _bind(tmp_path: Path, **cfg: Any) -> Bound:
    conf = ProvisionConfig.model_validate(cfg)

    async def bearer(deployment_id: str) -> str:
        assert deployment_id == "dep_a"
        return BEARER

    b = AIBinding(conf, bearer)
    target = Target()
    b.serve(target)
    home = tmp_path / "w"
    (home / "run").mkdir(parents=True)
    w = Worker(pid=os.getpid(), port=0, started=0.0, uid=os.getuid(), dir=home)
    env = await b.attach("dep_a", w, str(home / "run"))
    return Bound(b, w, target, env)


@pytest.fixture
async def bound(tmp_path: Path) -> AsyncIterator[Bound]:
    b = await _bind(tmp_path, ai_binding_max_body_bytes=2048, ai_binding_concurrency=2)
    yield b
    b.binding.detach(b.worker)


async def test_the_worker_gets_its_socket_and_where_it_is(bound: Bound) -> None:
    assert bound.env == {"TOLLWAY_AI_SOCKET": bound.path, "TOLLWAY_AI_URL": "http://tollway.ai/v1"}
    st = os.stat(bound.path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    if os.getuid() == 0:
        assert (st.st_uid, st.st_gid) == (0, bound.worker.uid)


async def test_a_request_goes_on_with_the_bindings_credential_only(bound: Bound) -> None:
    async with bound.client() as c:
        r = await c.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": []},
            headers=[
                ("authorization", "Bearer sk-someone-elses-key"),
                ("Authorization", "Bearer second"),
                ("x-api-key", "sk-other"),
                ("cookie", "session=x"),
                ("x-forwarded-for", "1.2.3.4"),
                ("proxy-authorization", "Basic eA=="),
            ],
        )
    assert r.status_code == 200, r.text
    out = r.json()
    creds = ("authorization", "x-api-key", "cookie", "proxy-authorization")
    auth = [v for k, v in out["headers"] if k in creds]
    assert auth == [f"Bearer {BEARER}"]
    assert not [k for k, _ in out["headers"] if k.startswith("x-forwarded-")]
    assert out["body"] == {"model": "m", "messages": []} and out["path"] == "/v1/chat/completions"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/admin/wallets", 404, "route_not_found"),
        ("POST", "/v1/chat/completions/../../admin/wallets", 404, "route_not_found"),
        ("POST", "/v1/chat/completions%2F..%2F..%2Fadmin", 404, "route_not_found"),
        ("POST", "//v1/chat/completions", 404, "route_not_found"),
        ("POST", "/v1/broker/provision/deployments", 404, "route_not_found"),
        ("GET", "/v1/wallet", 404, "route_not_found"),
        ("GET", "/v1/chat/completions", 405, "method_not_allowed"),
        ("POST", "/v1/models", 405, "method_not_allowed"),
    ],
)
async def test_other_routes_are_refused(bound: Bound, method: str, path: str, status: int, code: str) -> None:
    async with bound.client() as c:
        r = await c.request(method, httpx.URL("http://ai" + path), content=b"{}")
    err(r, status, code)
    assert bound.target.seen == []


async def test_the_allowed_routes_reach_tollway(bound: Bound) -> None:
    async with bound.client() as c:
        assert (await c.get("/v1/models")).status_code == 200
        assert (await c.post("/v1/embeddings", json={"input": "x"})).status_code == 200
    assert [s["path"] for s in bound.target.seen] == ["/v1/models", "/v1/embeddings"]


async def test_a_body_over_the_limit_is_413(bound: Bound) -> None:
    big = json.dumps({"messages": "x" * 4000}).encode()

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted as it arrives
        for i in range(0, len(big), 500):
            yield big[i : i + 500]

    async with bound.client() as c:
        err(await c.post("/v1/chat/completions", content=big), 413, "request_too_large")
        err(await c.post("/v1/chat/completions", content=chunks()), 413, "request_too_large")
    assert bound.target.seen == []


async def test_requests_over_the_deployments_concurrency_get_429(bound: Bound) -> None:
    async with bound.client() as c1, bound.client() as c2, bound.client() as c3:
        held = [asyncio.create_task(c.post("/v1/chat/completions", json={"hold": True})) for c in (c1, c2)]
        for _ in held:
            await bound.target.holding.acquire()
        err(await c3.post("/v1/chat/completions", json={}), 429, "ai_binding_concurrency")
        bound.target.release.set()
        assert [(await t).status_code for t in held] == [200, 200]
        assert bound.binding.inflight == {}
        assert (await c3.post("/v1/chat/completions", json={})).status_code == 200


async def test_an_answer_streams_through(bound: Bound) -> None:
    async with bound.client() as c:
        async with c.stream("POST", "/v1/chat/completions", json={"stream": True}) as r:
            lines = r.aiter_lines()
            assert await anext(lines) == "first"  # before the second chunk is even sent
            bound.target.release.set()
            assert await anext(lines) == "second"


async def test_detach_removes_the_socket_and_stops_serving(tmp_path: Path) -> None:
    b = await _bind(tmp_path)
    async with b.client() as c:
        assert (await c.get("/v1/models")).status_code == 200
        b.binding.detach(b.worker)
        assert not Path(b.path).exists() and b.binding.sockets() == []  # noqa: ASYNC240
        with pytest.raises(httpx.TransportError):
            await c.get("/v1/models")


async def test_off_or_without_tollways_app_no_socket(tmp_path: Path) -> None:
    async def bearer(_: str) -> str:
        return BEARER

    home = tmp_path / "w"
    (home / "run").mkdir(parents=True)
    w = Worker(pid=1, port=0, started=0.0, uid=os.getuid(), dir=home)
    off = AIBinding(ProvisionConfig.model_validate({"ai_binding": False}), bearer)
    off.serve(Target())
    assert await off.attach("dep_a", w, "/run/tollway") == {}
    unset = AIBinding(ProvisionConfig(), bearer)
    assert await unset.attach("dep_a", w, "/run/tollway") == {}
    assert list((home / "run").iterdir()) == []
