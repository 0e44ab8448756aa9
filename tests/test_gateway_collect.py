"""A non-streamed call's collection (``Ending.collect_unless_gone``): it runs in
the request's own task, and a client that disconnects first cancels it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tollway.gateway.served import Ending

pytestmark = pytest.mark.asyncio


def _ending() -> Ending:
    return Ending(None, None, None, None, None, None)  # type: ignore[arg-type]  # only _collect runs


async def test_the_generation_is_collected_in_the_requests_own_task(monkeypatch: pytest.MonkeyPatch) -> None:
    ran_in: list[asyncio.Task[Any] | None] = []

    async def collect(self: Ending) -> tuple[str, Any]:
        ran_in.append(asyncio.current_task())
        await asyncio.sleep(0.01)
        return "text", None

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client stays
        raise AssertionError("unreachable")

    monkeypatch.setattr(Ending, "_collect", collect)
    tasks_before = len(asyncio.all_tasks())
    got = await _ending().collect_unless_gone(receive)
    assert got == ("text", None)
    assert ran_in == [asyncio.current_task()]  # not a task of its own
    await asyncio.sleep(0)  # the cancelled watcher finishes
    assert len(asyncio.all_tasks()) == tasks_before


async def test_a_client_that_disconnects_first_cancels_the_collection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stopped: list[str] = []

    async def collect(self: Ending) -> tuple[str, Any]:
        try:
            await asyncio.Event().wait()  # a long generation
        except asyncio.CancelledError:
            stopped.append("cancelled")
            raise
        raise AssertionError("unreachable")

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    monkeypatch.setattr(Ending, "_collect", collect)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.ensure_future(_ending().collect_unless_gone(receive))
    assert stopped == ["cancelled"]
