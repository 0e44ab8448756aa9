"""Ids are unique and, within a process, strictly increasing."""

from __future__ import annotations

from tollway.core import ids
from tollway.core.ids import new_id


def test_monotonic_and_unique() -> None:
    ids = [new_id("tr") for _ in range(50_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(len(i) == len("tr_") + 31 for i in ids)


def test_random_hex_is_that_many_bits_as_fixed_width_hex() -> None:
    """A request id's random part: as secrets.token_hex(12) wrote it (24 hex digits)."""
    got = {ids.random_hex(96) for _ in range(1000)}
    assert len(got) == 1000
    assert all(len(h) == 24 and int(h, 16) < 2**96 and h == h.lower() for h in got)
    assert len(ids.random_hex(1)) == 1 and len(ids.random_hex(5)) == 2
