"""The edge as ``tollway serve`` runs it: inside uvicorn's lifespan, on uvloop,
handing connections to workers; a worker that dies after going live is
started again by the next request."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from conftest import ADMIN, settings_for
from provision_support import hello
from threaded import ThreadServer, free_port
from tollway.api.app import create_app

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("handoff", [True, False], ids=["handoff", "relay"])
def test_the_edge_under_uvicorn_and_uvloop(tmp_path: Path, handoff: bool) -> None:
    edge = free_port()
    s = settings_for(
        f"sqlite:///{tmp_path / 'tollway.db'}",
        provision={"edge_port": edge, "data_dir": str(tmp_path / "prov"), "edge_handoff": handoff},
    )
    with ThreadServer(create_app(s)) as srv, httpx.Client(base_url=srv.url, timeout=30) as h:
        w = h.post("/admin/wallets", json={"owner": "ops"}, headers=ADMIN).json()
        h.post(
            f"/admin/wallets/{w['id']}/topup", json={"amount": "$5", "source": "sys_funding"}, headers=ADMIN
        )
        tok = h.post(f"/admin/wallets/{w['id']}/tokens", json={}, headers=ADMIN).json()["token"]
        r = h.post(
            "/v1/broker/provision/deployments",
            json={"name": "live", "entrypoint": "app:app", "bundle": hello("u")},
            headers={"authorization": f"Bearer {tok}"},
        )
        assert r.status_code == 201, r.text
        with httpx.Client(
            base_url=f"http://127.0.0.1:{edge}", headers={"host": "live.tollway.localhost"}
        ) as e:
            assert [e.get(f"/{i}").text for i in range(3)] == [f"hello u /{i}" for i in range(3)]
        runner = srv.server.config.app.state.runtime.provision.runner
        (worker,) = runner.running.values()
        os.killpg(worker.pid, signal.SIGKILL)  # the worker dies after going live
        for _ in range(200):  # its sandbox's processes die asynchronously: until its port is closed
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", worker.port)) != 0:
                    break
            time.sleep(0.01)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{edge}", headers={"host": "live.tollway.localhost"}
        ) as e:
            assert e.get("/again").text == "hello u /again"
