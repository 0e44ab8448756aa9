"""Shared by the provisioning tests: bundles of small apps, and a funded
wallet with an agent token talking to tollway over HTTP."""

from __future__ import annotations

import base64
import contextlib
import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from conftest import ADMIN, settings_for
from threaded import free_port
from tollway.api.app import create_app
from tollway.runtime import Runtime

HELLO = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b"hello %s " + scope["path"].encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""

WSGI = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi " + environ["PATH_INFO"].encode()]
"""


def zipped(files: dict[str, str | bytes]) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return base64.b64encode(buf.getvalue()).decode()


def hello(tag: str) -> str:
    return zipped({"app.py": HELLO % tag})


CRASHING = zipped({"app.py": "raise RuntimeError('boom at import')\n"})


class Agent:
    """A funded wallet and its agent token, over tollway's HTTP API."""

    def __init__(self, rt: Runtime, http: httpx.AsyncClient) -> None:
        self.rt, self.http = rt, http
        self.wallet: dict[str, Any] = {}
        self.token = ""

    async def setup(self, policy: dict[str, Any] | None = None, fund: int = 100_000_000) -> Agent:
        c = (await self.http.post("/admin/customers", json={"name": "Agent owner"}, headers=ADMIN)).json()
        await self.rt.ledger.transfer("sys_funding", c["account_id"], fund)
        r = await self.http.post(
            "/admin/wallets", json={"customer_id": c["id"], "policy": policy or {}}, headers=ADMIN
        )
        assert r.status_code == 201, r.text
        self.wallet = r.json()
        r = await self.http.post(
            f"/admin/wallets/{self.wallet['id']}/topup", json={"amount": fund}, headers=ADMIN
        )
        assert r.status_code == 200, r.text
        r = await self.http.post(f"/admin/wallets/{self.wallet['id']}/tokens", json={}, headers=ADMIN)
        self.token = r.json()["token"]
        return self

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    async def available(self) -> int:
        r = await self.http.get(f"/admin/wallets/{self.wallet['id']}", headers=ADMIN)
        out: int = r.json()["available"]
        return out

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post(f"/v1/broker/provision{path}", json=body, headers=self.auth)

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(f"/v1/broker/provision{path}", params=params, headers=self.auth)

    async def delete(self, path: str) -> httpx.Response:
        return await self.http.delete(f"/v1/broker/provision{path}", headers=self.auth)


@contextlib.asynccontextmanager
async def provisioned(
    db_url: str,
    data_dir: Path,
    *,
    edge: bool = True,
    policy: dict[str, Any] | None = None,
    start: bool = True,
    sections: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    **provision: Any,
) -> AsyncIterator[Agent]:
    """A runtime with provisioning (``[provision]`` overrides in ``provision``)
    started unless ``start`` is False (the edge on a free port, or none), its
    app over ASGI, and a funded agent. ``sections`` (or ``settings``): other settings
    (``{"x402": {...}}``)."""
    port = free_port() if edge else 0
    s = settings_for(
        db_url,
        provision={"edge_port": port, "data_dir": str(data_dir), **provision},
        **(sections or {}),
        **(settings or {}),
    )
    rt = Runtime.build(s)
    app = create_app(rt=rt)
    if start:
        await rt.provision.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            yield await Agent(rt, http).setup(policy)
    finally:
        await rt.close()
