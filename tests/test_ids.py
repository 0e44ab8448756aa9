"""Ids are unique and, within a process, strictly increasing."""

from __future__ import annotations

from tollway.core.ids import new_id


def test_monotonic_and_unique() -> None:
    ids = [new_id("tr") for _ in range(50_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(len(i) == len("tr_") + 31 for i in ids)
