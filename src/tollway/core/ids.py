"""Identifiers: a short prefix, then 11 hex digits of milliseconds and 20 of randomness.

Ids sort by creation time (B-tree inserts stay append-mostly) and carry 80
random bits, so processes never coordinate to make them.  ``random`` is
seeded from the OS and reseeded after ``fork``; ids are not secrets (API key
secrets come from :mod:`secrets`).
"""

from __future__ import annotations

import random
import time

_bits = random.SystemRandom().getrandbits(64)
_rng = random.Random(_bits ^ time.time_ns())


def _reseed() -> None:
    _rng.seed(random.SystemRandom().getrandbits(64) ^ time.time_ns())


import os  # noqa: E402

os.register_at_fork(after_in_child=_reseed)


def new_id(prefix: str) -> str:
    return f"{prefix}_{time.time_ns() // 1_000_000:011x}{_rng.getrandbits(80):020x}"
