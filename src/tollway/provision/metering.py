"""Hosting's price, exactly: what a deployment owes for all the use it ever
had, in whole micro-USD.

Prices are micro-USD with up to 3 decimals, so they are integers of
1/1000 micro-USD ("nanos"); worker time is counted in microseconds. The
owed total is the floor of the exact figure, and each charge is the owed
total now minus what was billed before, so the charges telescope: over any
split into ticks they sum to ``owed(everything)``, with no drift (the
unbilled remainder is always under one micro-USD, carried in the totals,
never rounded away)."""

from __future__ import annotations

_NANOS_PER_MICRO = 1_000
_US_PER_S = 1_000_000


def owed(worker_us: int, requests: int, nanos_per_worker_second: int, nanos_per_request: int) -> int:
    """Micro-USD owed for ``worker_us`` microseconds of live workers and
    ``requests`` requests, ever (floor of the exact price)."""
    nanos_x_us = worker_us * nanos_per_worker_second + requests * nanos_per_request * _US_PER_S
    return nanos_x_us // (_NANOS_PER_MICRO * _US_PER_S)
