"""The single writer, as a property: whatever the interleaving, turns to one
session never overlap and run in the order they were sent; different sessions
run concurrently; nothing is left behind."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import create_async_engine

from tollway.agents.writer import Writers, lock_key

sends = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(sends)
def test_turns_to_a_session_never_overlap_and_keep_their_order(plan: list[tuple[int, int]]) -> None:
    async def go() -> None:
        engine = create_async_engine("sqlite+aiosqlite://")
        w = Writers(engine)
        log: list[tuple[str, int, int]] = []
        inside: dict[int, int] = {}
        overlap = [0]

        async def turn(i: int, session: int, yields: int) -> None:
            async with w.hold("agent", f"s{session}"):
                inside[session] = inside.get(session, 0) + 1
                overlap[0] = max(overlap[0], sum(1 for v in inside.values() if v))
                assert inside[session] == 1  # never two turns of one session at once
                log.append(("in", session, i))
                for _ in range(yields):
                    await asyncio.sleep(0)
                inside[session] -= 1

        tasks = [asyncio.ensure_future(turn(i, s, y)) for i, (s, y) in enumerate(plan)]
        await asyncio.gather(*tasks)
        for s in {s for s, _ in plan}:
            order = [i for _, sess, i in log if sess == s]
            assert order == sorted(order)  # the order they were sent
            assert w.queued("agent", f"s{s}") == 0
        assert w._locks == {}  # no lock left behind
        first: dict[int, int] = {}
        for s, y in plan:
            first.setdefault(s, y)
        if sum(1 for y in first.values() if y) > 1:  # two sessions' first turns both wait
            assert overlap[0] >= 2  # so they ran at the same time
        await engine.dispose()

    asyncio.run(go())


@given(st.text(max_size=50), st.text(max_size=50))
def test_lock_keys_are_signed_64_bit_and_stable(agent: str, session: str) -> None:
    k = lock_key(agent, session)
    assert -(2**63) <= k < 2**63 and k == lock_key(agent, session)
