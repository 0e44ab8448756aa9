"""The AI binding in the sandbox: the shipped example app, deployed through the
real API, answers ``/answer`` through the edge with a model's answer (a fake
upstream) paid by its owner; another deployment's socket is out of reach
(not mounted, and its directory closed to other uids); the socket goes with
the deployment, and so does its token."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

import tollway.provision
from conftest import ADMIN
from fake_upstream import FakeUpstream, model
from provision_support import Agent, provisioned, zipped
from tollway.core.schema import usage_events as U
from tollway.provision.ai_tokens import CATEGORY

pytestmark = pytest.mark.slow

EXAMPLE = Path(tollway.provision.__file__).parent / "examples" / "ai_answer" / "app.py"
PROBE = r"""
import errno, http.client, json, os, socket
from urllib.parse import parse_qs

class Conn(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("tollway.ai", timeout=30)
        self.path_ = path
    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path_)
        self.sock = s

def call(q):
    c = Conn(os.environ["TOLLWAY_AI_SOCKET"])
    headers = {"content-type": "application/json"}
    if q.get("auth"):
        headers["authorization"] = q["auth"]
    c.request(q.get("method", "POST"), q["path"], q.get("body"), headers)
    r = c.getresponse()
    return {"status": r.status, "body": r.read().decode()}

def connect(q):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(q["path"])
        return {"ok": True}
    except OSError as e:
        return {"ok": False, "error": errno.errorcode.get(e.errno or 0, type(e).__name__)}
    finally:
        s.close()

def listdir(q):
    try:
        return {"ok": True, "names": sorted(os.listdir(q["path"]))}
    except OSError as e:
        return {"ok": False, "error": errno.errorcode.get(e.errno or 0, type(e).__name__)}

ROUTES = {"/call": call, "/connect": connect, "/listdir": listdir, "/env": lambda q: dict(os.environ)}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    q = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    fn = ROUTES.get(scope["path"])
    out = fn(q) if fn else {"ok": True}
    body = json.dumps(out).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.fixture(scope="module")
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as u:
        yield u


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Below a path every uid may traverse (pytest's own is root's only), so the only
    gate left to another worker's socket is the binding's own directory."""
    d = Path(tempfile.mkdtemp(prefix="tw-ai-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@contextlib.asynccontextmanager
async def serving(db_url: str, data_dir: Path, up: FakeUpstream) -> AsyncIterator[Agent]:
    models = {"models": [model("up", up.url)]}
    async with provisioned(db_url, data_dir / "prov", settings=models, warm_workers=1) as a:
        yield a


async def edge(a: Agent, name: str, route: str, /, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{a.rt.provision.edge_port}") as c:
        return await c.get(route, params=params, headers={"host": f"{name}.tollway.localhost"}, timeout=60)


async def deploy(a: Agent, name: str, source: str, env: dict[str, str] | None = None) -> str:
    bundle = zipped({"app.py": source})
    r = await a.post("/deployments", {"name": name, "entrypoint": "app:app", "bundle": bundle, "env": env})
    assert r.status_code == 201, r.text
    out: str = r.json()["id"]
    return out


async def spent(a: Agent, customer_id: str) -> int:
    """Micro-USD charged to the customer for AI usage (free allowance + prepaid)."""
    async with a.rt.engine.connect() as conn:
        q = select(func.coalesce(func.sum(U.c.amount), 0)).where(U.c.customer_id == customer_id)
        return int((await conn.execute(q)).scalar_one())


async def api_key_bearer(a: Agent) -> Callable[[str], Awaitable[str]]:
    """A key of the wallet's owner, funded: the binding's credential until agent tokens
    may call the AI routes (the costs branch)."""
    cust = a.wallet["customer_id"]
    key: str = (await a.http.post("/admin/keys", json={"customer_id": cust}, headers=ADMIN)).json()["key"]
    c = (await a.http.get(f"/admin/customers/{cust}", headers=ADMIN)).json()
    await a.rt.ledger.transfer("sys_funding", c["account_id"], 1_000_000)

    async def bearer(_: str) -> str:
        return key

    a.rt.provision.ai_binding.bearer = bearer
    return bearer


def expected_cost(a: Agent, answer: dict[str, Any]) -> int:
    u = answer["usage"]
    _, cost = a.rt.inference.price(a.rt.inference.configs["up"], u["prompt_tokens"], u["completion_tokens"])
    return cost


async def test_the_example_app_answers_through_the_binding(
    db_url: str, data_dir: Path, up: FakeUpstream
) -> None:
    async with serving(db_url, data_dir, up) as a:
        await api_key_bearer(a)
        customer = a.wallet["customer_id"]
        await deploy(a, "answer", EXAMPLE.read_text(), {"AI_MODEL": "up", "AI_MAX_TOKENS": "5"})
        before = await spent(a, customer)
        r = await edge(a, "answer", "/answer", q="What is a toll road?")
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["question"] == "What is a toll road?" and out["answer"]
        assert out["usage"]["completion_tokens"] == 5
        assert up.last_request["messages"] == [{"role": "user", "content": "What is a toll road?"}]
        assert await spent(a, customer) - before == expected_cost(a, out) > 0
        err = (await edge(a, "answer", "/answer")).json()["error"]
        assert err["code"] == "missing_q"


async def test_the_binding_token_pays_from_the_wallet(
    db_url: str, data_dir: Path, up: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(db_url, data_dir, up) as a:
        await deploy(a, "answer", EXAMPLE.read_text(), {"AI_MODEL": "up", "AI_MAX_TOKENS": "5"})
        before = await a.available()
        r = await edge(a, "answer", "/answer", q="hello")
        assert r.status_code == 200, r.text
        assert before - await a.available() == expected_cost(a, r.json()) > 0


async def test_the_deployment_gets_its_own_ai_inference_token_revoked_on_delete(
    db_url: str, data_dir: Path, up: FakeUpstream
) -> None:
    async with serving(db_url, data_dir, up) as a:
        dep = await deploy(a, "probe", PROBE)
        env = (await edge(a, "probe", "/env")).json()
        assert env["TOLLWAY_AI_SOCKET"] == "/run/tollway/ai.sock"
        assert env["TOLLWAY_AI_URL"] == "http://tollway.ai/v1"
        assert not any(v.startswith("tw_agt_") for v in env.values())
        body = json.dumps({"model": "up", "messages": [{"role": "user", "content": "hi"}]})
        r = (await edge(a, "probe", "/call", path="/v1/chat/completions", body=body)).json()
        assert r["status"] in (200, 401), r  # 401 until agent tokens may call the AI routes
        tid = await a.rt.provision.ai_tokens.token_id(dep)
        assert tid is not None
        token = await a.rt.wallets.token(tid)
        assert token.wallet_id == a.wallet["id"] and token.limits.categories == [CATEGORY]
        assert token.revoked_at_us is None and "tw_agt_" not in r["body"]
        [sock] = a.rt.provision.ai_binding.sockets()
        assert sock.exists()
        a.rt.provision.runner.stop(dep)  # scaled to zero: the socket goes with the worker
        assert not sock.exists() and a.rt.provision.ai_binding.sockets() == []
        assert (await edge(a, "probe", "/connect", path="/run/tollway/ai.sock")).json() == {"ok": True}
        [sock] = a.rt.provision.ai_binding.sockets()  # woken: a new worker, a new socket, the same token
        r = (await edge(a, "probe", "/call", path="/v1/chat/completions", body=body)).json()
        assert r["status"] in (200, 401) and await a.rt.provision.ai_tokens.token_id(dep) == tid
        assert (await a.delete("/deployments/probe")).status_code == 200
        assert not sock.exists() and a.rt.provision.ai_binding.sockets() == []
        assert (await a.rt.wallets.token(tid)).revoked_at_us is not None


async def test_an_app_cannot_reach_another_deployments_socket(
    db_url: str, data_dir: Path, up: FakeUpstream
) -> None:
    async with serving(db_url, data_dir, up) as a:
        key_bearer = await api_key_bearer(a)
        runner = a.rt.provision.runner
        pa, pb = await deploy(a, "pa", PROBE), await deploy(a, "pb", PROBE)
        wa, wb = runner.running[pa], runner.running[pb]
        assert wa.dir is not None and wb.dir is not None and wa.uid != wb.uid
        own, other = wa.dir / "run" / "ai.sock", wb.dir / "run" / "ai.sock"
        assert other.exists()

        async def connect(path: str) -> Any:
            return (await edge(a, "pa", "/connect", path=path)).json()

        assert await connect("/run/tollway/ai.sock") == {"ok": True}
        for path in (str(other), str(own), f"/run/tollway/../..{other}", "/run/tollway/../../" + other.name):
            assert (await connect(path))["ok"] is False, path
        for path, names in (("/run", ["tollway"]), ("/run/tollway", ["ai.sock"])):
            assert (await edge(a, "pa", "/listdir", path=path)).json() == {"ok": True, "names": names}
        if os.getuid() == 0:  # outside any sandbox, as worker A's uid: its own socket only
            assert _connect_as(wa.uid, own) == 0
            assert _connect_as(wa.uid, other) == 13  # EACCES
            assert _connect_as(wb.uid, own) == 13

        # the app's own credential is dropped: only the binding's is used
        body = json.dumps({"model": "up", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        chat = {"path": "/v1/chat/completions", "body": body}
        r = (await edge(a, "pa", "/call", **chat, auth="Bearer sk-nope")).json()
        assert r["status"] == 200, r
        stream = json.dumps({**json.loads(body), "stream": True})
        r = (await edge(a, "pa", "/call", path="/v1/chat/completions", body=stream)).json()
        assert r["status"] == 200 and r["body"].rstrip().endswith("data: [DONE]"), r
        models = (await edge(a, "pa", "/call", method="GET", path="/v1/models")).json()
        assert models["status"] == 200 and "up" in [m["id"] for m in json.loads(models["body"])["data"]]
        valid = f"Bearer {await key_bearer('')}"

        async def refused(_: str) -> str:
            return "sk-not-a-key"

        a.rt.provision.ai_binding.bearer = refused
        r = (await edge(a, "pa", "/call", **chat, auth=valid)).json()
        assert r["status"] == 401, r
        for path in ("/admin/wallets", "/v1/chat/completions/../../admin/wallets", "/v1/wallet"):
            r = (await edge(a, "pa", "/call", method="GET", path=path)).json()
            assert r["status"] == 404 and json.loads(r["body"])["error"]["code"] == "route_not_found", r


def _connect_as(uid: int, path: Path) -> int:
    """Connect to the Unix socket ``path`` as ``uid`` (and gid, no groups): 0 or the errno."""
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    sys.exit(e.errno)\n"
    )
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-I", "-c", code]
    return subprocess.run([*cmd, str(path)], check=False, timeout=30).returncode
