"""Periodic malloc_trim: found on glibc, called on schedule, off when the interval is 0."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tollway.observe import memory


def test_glibc_malloc_trim_is_found_and_callable() -> None:
    trim = memory._malloc_trim()
    assert trim is not None and trim(0) in (0, 1)


async def test_trim_runs_every_interval_and_not_at_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda: calls.append)
    task = asyncio.create_task(memory.trim_forever(0.01))
    await asyncio.sleep(0.2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert len(calls) >= 3 and set(calls) == {0}
    calls.clear()
    await asyncio.wait_for(memory.trim_forever(0), 1)  # returns at once: disabled
    assert calls == []
