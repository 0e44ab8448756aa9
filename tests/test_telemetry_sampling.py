"""observe/spans.py decides a new trace with the built-in samplers' rule inline
(no result object per span) and makes a span current with its own context
manager instead of OpenTelemetry's ``use_span``: both must behave exactly as
the SDK's would."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.context import Context
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import SpanKind, StatusCode, get_current_span, use_span

from tollway.observe.spans import Recorder, Using, root_decision

_SAMPLERS: list[Any] = [
    sampling.ALWAYS_ON,
    sampling.ALWAYS_OFF,
    sampling.ParentBased(sampling.ALWAYS_ON),
    sampling.ParentBased(sampling.ALWAYS_OFF),
    sampling.ParentBasedTraceIdRatio(0.25),
    *(sampling.TraceIdRatioBased(r) for r in (0.0, 1e-9, 0.1, 0.5, 0.999, 1.0)),
    *(sampling.ParentBased(sampling.TraceIdRatioBased(r)) for r in (0.0, 0.3, 1.0)),
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_SAMPLERS), st.integers(1, 2**128 - 1))
def test_the_inline_root_decision_is_the_samplers_own(sampler: Any, trace_id: int) -> None:
    decide = root_decision(sampler)
    assert decide is not None
    sdk = sampler.should_sample(Context(), trace_id, "x", SpanKind.SERVER, None)
    assert decide(trace_id) == sdk.decision.is_sampled()


def test_another_sampler_is_asked_every_time() -> None:
    asked: list[int] = []

    class Mine(sampling.Sampler):
        def should_sample(
            self, parent_context: Any, trace_id: int, *a: Any, **k: Any
        ) -> sampling.SamplingResult:
            asked.append(trace_id)
            return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE, {"mine": True})

        def get_description(self) -> str:
            return "Mine"

    assert root_decision(Mine()) is None
    assert root_decision(sampling.ParentBased(Mine())) is None
    done: list[Any] = []
    s = Recorder(sampling.ParentBased(Mine()), done.append).start("root", "server")
    s.end()
    assert len(asked) == 1 and done[0][9] == {"mine": True}


@pytest.mark.parametrize("end", [True, False])
def test_a_failure_in_the_block_is_what_use_span_makes_it(end: bool) -> None:
    theirs: list[Any] = []
    mine: list[Any] = []
    for using, out in (
        (lambda s: use_span(s, end_on_exit=end, record_exception=end), theirs),
        (lambda s: Using(s, end), mine),
    ):
        s = Recorder(sampling.ALWAYS_ON, out.append).start("op")
        with pytest.raises(ValueError), using(s):
            assert get_current_span() is s
            raise ValueError("boom")
        assert get_current_span() is not s
        if not end:
            s.end()
    assert len(theirs) == len(mine) == 1
    t, m = theirs[0], mine[0]
    assert (m[10], m[11]) == (t[10], t[11]) == (StatusCode.ERROR.value, "ValueError: boom")
    assert [e[0] for e in m[12]] == [e[0] for e in t[12]] == (["exception"] if end else [])


def test_a_cancellation_does_not_fail_the_span() -> None:
    done: list[Any] = []

    async def main() -> None:
        s = Recorder(sampling.ALWAYS_ON, done.append).start("op")

        async def block() -> None:
            with Using(s, True):
                await asyncio.sleep(10)

        t = asyncio.ensure_future(block())
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(main())
    assert done[0][10] == StatusCode.UNSET.value and done[0][12] == []
