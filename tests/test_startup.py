"""Start-up is ready at once: work that loads models (the demo's knowledge
base, which loads the embeddings model) runs in the background, and /healthz
says what is still running."""

from __future__ import annotations

import asyncio
import threading

import pytest
from starlette.testclient import TestClient

from conftest import settings_for
from tollway.agents import demo as agents_demo
from tollway.api.app import create_app
from tollway.runtime import Runtime


def test_healthz_is_ready_while_the_demo_ingest_runs(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    async def slow_seed(rt: Runtime) -> None:  # stands in for loading a model and embedding the docs
        await asyncio.to_thread(release.wait, 60)

    monkeypatch.setattr(agents_demo, "seed", slow_seed)
    app = create_app(settings_for(db_url, agents={"demo": True}))
    with TestClient(app) as client:  # start-up has finished: the ingest has not
        r = client.get("/healthz")
        assert r.status_code == 200 and r.json()["background"] == {"demo_ingest": "running"}, r.text
        release.set()
        for _ in range(1000):
            if client.get("/healthz").json()["background"] == {"demo_ingest": "done"}:
                break
            threading.Event().wait(0.01)
        assert client.get("/healthz").json()["background"] == {"demo_ingest": "done"}
