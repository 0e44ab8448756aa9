"""How many HTTP requests this process is serving now, counted by the one
telemetry layer every request passes (``api/telemetry.py``).

The ledger reads it: a durable COMMIT (its fsync) runs on the writer thread so
the event loop serves other requests meanwhile; with no other request in
flight there is nothing to serve, and the COMMIT runs on the loop instead,
without the thread round trip (docs/benchmarks.md, "AI gateway overhead").
What is registered with :func:`when_idle` runs (on the loop, once the current
step is done) each time the count drops to zero: the last response is out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

_n = 0
_idle: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = []


def enter() -> None:
    global _n
    _n += 1


def leave() -> None:
    global _n
    _n -= 1
    if _n == 0 and _idle:
        loop = asyncio.get_running_loop()
        for on, fn in _idle:
            if on is loop:  # (tests run servers on other threads' loops)
                loop.call_soon(fn)


def when_idle(fn: Callable[[], None]) -> None:
    """Run ``fn`` on this event loop whenever the count drops to zero."""
    _idle.append((asyncio.get_running_loop(), fn))


def not_when_idle(fn: Callable[[], None]) -> None:
    _idle[:] = [(on, f) for on, f in _idle if f != fn]


def count() -> int:
    return _n
