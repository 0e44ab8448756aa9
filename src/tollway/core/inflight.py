"""How many HTTP requests this process is serving now, counted by the one
telemetry layer every request passes (``api/telemetry.py``).

The ledger reads it: a durable COMMIT (its fsync) runs on the writer thread so
the event loop serves other requests meanwhile; with no other request in
flight there is nothing to serve, and the COMMIT runs on the loop instead,
without the thread round trip (docs/benchmarks.md, "AI gateway overhead")."""

from __future__ import annotations

_n = 0


def enter() -> None:
    global _n
    _n += 1


def leave() -> None:
    global _n
    _n -= 1


def count() -> int:
    return _n
