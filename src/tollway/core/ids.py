"""Identifiers: a short prefix, then 11 hex digits of milliseconds and 20 of randomness.

Ids sort by creation time (B-tree inserts stay append-mostly, and "newest
first" is ``ORDER BY id DESC``).  Within one process they are strictly
increasing, like monotonic ULIDs: an id made in the same millisecond as the
previous one takes the previous random part plus one.  Across processes the
80 random bits keep them unique without coordination.  ``random`` is seeded
from the OS and reseeded after ``fork``; ids are not secrets (API keys use
:mod:`secrets`).
"""

from __future__ import annotations

import os
import random
import threading
import time

_rng = random.Random(random.SystemRandom().getrandbits(64))
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0
_RAND_MAX = (1 << 80) - 1


def _reseed() -> None:
    _rng.seed(random.SystemRandom().getrandbits(64))


os.register_at_fork(after_in_child=_reseed)


def new_id(prefix: str) -> str:
    global _last_ms, _last_rand
    ms = time.time_ns() // 1_000_000
    with _lock:
        if ms > _last_ms:
            rand = _rng.getrandbits(79)  # headroom to count up within one millisecond
        elif _last_rand < _RAND_MAX:
            ms, rand = _last_ms, _last_rand + 1
        else:
            ms, rand = _last_ms + 1, _rng.getrandbits(79)
        _last_ms, _last_rand = ms, rand
    return f"{prefix}_{ms:011x}{rand:020x}"


def random_hex(bits: int) -> str:
    """``bits`` random bits as hex (a request id's): seeded as ids are, no system call."""
    return f"{_rng.getrandbits(bits):0{(bits + 3) // 4}x}"
