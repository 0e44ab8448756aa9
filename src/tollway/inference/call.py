"""One model call: who it is for (:class:`Caller`), what it used
(:class:`Metered`), a chat generation with its money held (:class:`ChatCall`)
and an embeddings result (:class:`Embedding`). A call owns its settle
(``settling``), which the gateway joins before the charge is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tollway.billing.service import Standing
from tollway.charge import Hold, prepaid
from tollway.charge.hold import Cap, Payer
from tollway.core.errors import TollwayError
from tollway.inference import routing
from tollway.inference.backends.base import Cancel, ChatBackend, ChatParams, Delta, Finish, Progress
from tollway.inference.config import ModelConfig
from tollway.observe import tracing

if TYPE_CHECKING:
    from tollway.inference.service import Inference

log = logging.getLogger("tollway.inference")


@dataclass(slots=True)
class Caller:
    customer_id: str
    account_id: str
    key_id: str | None = None
    caps: tuple[Cap, ...] = ()  # spend limits and quotas every charge must also fit (the gateway sets them)
    prepaid: bool = False  # paid in full up front (an x402 payment of the maximum): no hold
    standing: Standing | None = None  # the customer's plan (None: the default plan)
    tags: tuple[tuple[str, str], ...] = ()  # recorded on each charge's usage event (an agent token's)
    # Who pays instead of the plan's sources (an agent token's wallet, with its limits as caps):
    # the caller's caps are added to its own.
    funding: Payer | None = None
    # Who pays, with all the caps: built once, on first use (dataclasses.replace,
    # by which a caller gains caps, starts a new one: init=False is not copied).
    payer: Payer | None = field(default=None, init=False, repr=False)

    @property
    def rate(self) -> int | None:
        return None if self.standing is None else self.standing.rate


@dataclass(slots=True)
class Metered:
    input_tokens: int
    output_tokens: int
    mneurons: int
    charged: int
    latency_ms: float
    ttft_ms: float | None = None
    finish_reason: str = "stop"
    deployment: str = ""
    attempts: int = 1

    def headers(self) -> dict[str, str]:
        return {
            "x-tollway-neurons": f"{self.mneurons / 1000:.3f}",
            "x-tollway-charged": str(self.charged),
        }


async def _joined(settling: asyncio.Future[Any] | None) -> None:
    if settling is not None:
        await asyncio.shield(settling)


@dataclass(slots=True)
class Embedding:
    """An embeddings call's result; its charge's settle runs until :meth:`committed`."""

    vectors: list[list[float]]
    metered: Metered
    settling: asyncio.Future[Any] | None = None  # the settle's commit, while it runs

    async def committed(self) -> None:
        """Wait until the charge is in the ledger (a no-op for an uncharged call)."""
        await _joined(self.settling)


@dataclass(slots=True)
class Deployment:
    cfg: ModelConfig
    backend: ChatBackend
    params: ChatParams
    prompt_tokens: int


@dataclass
class ChatCall:
    """One chat generation with its money held: :meth:`open` finds a deployment
    that answers (retrying and falling back), then iterate :meth:`events` once."""

    svc: Inference
    caller: Caller
    cfg: ModelConfig
    plan: list[Deployment]
    hold: Hold | None
    progress: Progress = field(default_factory=Progress)
    metered: Metered | None = None
    settling: asyncio.Future[Any] | None = None  # the settle's commit, while it runs
    served: Deployment | None = None
    attempts: int = 0
    t0: float = field(default_factory=time.perf_counter)
    _cancel: Cancel = field(default_factory=Cancel)
    _it: AsyncIterator[Delta | Finish] | None = None
    _first: Delta | Finish | None = None
    span: Any = None  # the call's client span (tollway.observe.tracing), while tracing is on

    @property
    def provider(self) -> str:
        return self.served.cfg.name if self.served else self.plan[0].cfg.name

    async def open(self) -> None:
        """Start the call on the first deployment that answers (retrying, falling back)."""

        async def first_event(d: Deployment) -> tuple[AsyncIterator[Delta | Finish], Delta | Finish]:
            if self._cancel.is_set():  # a fresh flag for a retry
                self._cancel = Cancel()
            self.progress = Progress()
            it = d.backend.stream(d.params, self._cancel, self.progress).__aiter__()
            try:
                return it, await anext(it)
            except BaseException:
                self._cancel.set()
                await _aclose(it)
                raise

        served, (it, first), self.attempts = await routing.first_success(
            self.cfg.name, self.plan, lambda d: d.cfg.name, self.cfg.retry, first_event
        )
        self.served, self._it, self._first = served, it, first

    async def committed(self) -> None:
        """Wait until the charge is in the ledger (a no-op before the settle starts)."""
        await _joined(self.settling)

    async def abort(self) -> None:
        """Stop a call that was opened but will not be consumed."""
        self._cancel.set()
        await _aclose(self._it)
        self.end_span(None)

    def end_span(self, err: BaseException | None) -> None:
        """End the call's span (once): failed with ``err``, or stopped."""
        s, self.span = self.span, None
        tracing.end(s, err)

    async def _stream(self) -> AsyncIterator[Delta | Finish]:
        assert self._it is not None and self._first is not None
        yield self._first
        async for ev in self._it:
            yield ev

    async def events(self, *, stream: bool) -> AsyncIterator[Delta | Finish]:
        """Yields deltas, then the Finish; settles the charge exactly once, also
        when the consumer goes away mid-stream (only produced tokens are charged)."""
        t0 = self.t0
        ttft: float | None = None
        finish: Finish | None = None
        settled = False
        if stream and self.hold is not None:
            # Tokens reach the client before the charge: a crash mid-stream
            # still charges what was checkpointed (tollway.charge.recovery).
            self.hold.progress = self._so_far
        try:
            async for ev in self._stream():
                if isinstance(ev, Finish):
                    finish = ev
                    break
                if ttft is None:
                    ttft = (time.perf_counter() - t0) * 1000
                yield ev
            assert finish is not None
            await _aclose(self._it)  # hand the instance back before settling
            self._settle(finish.prompt_tokens, finish.completion_tokens, finish.reason, t0, ttft, stream)
            settled = True
            yield finish
        except BaseException as e:
            self._cancel.set()
            await _aclose(self._it)
            self.end_span(e)
            if not settled:
                if self.progress.completion_tokens and not isinstance(e, TollwayError):
                    # The client went away (or the stream broke) after output: charge what was made.
                    reason = "cancelled"
                    p = self.progress
                    self._settle(p.prompt_tokens, p.completion_tokens, reason, t0, ttft, stream)
                    if self.hold is not None:  # None: paid up front (x402), nothing to settle
                        await self.hold.wait()
                elif self.hold is not None:
                    await self.hold.release()
            raise

    def _so_far(self) -> tuple[int, int, dict[str, Any]]:
        """What the stream produced so far costs: (amount, neurons, usage metadata)."""
        served = self.served.cfg if self.served else self.cfg
        p = self.progress
        mn, cost = self.svc.price(served, p.prompt_tokens, p.completion_tokens, self.caller.rate)
        m = Metered(p.prompt_tokens, p.completion_tokens, mn, cost, 0.0, None, "recovered", served.name)
        return cost, mn, self.svc.usage(self.caller, self.cfg, m, stream=True, attempts=self.attempts)

    def _settle(
        self, prompt: int, completion: int, reason: str, t0: float, ttft: float | None, stream: bool
    ) -> None:
        """Meter the call and start its settle (:meth:`committed` joins it)."""
        served = self.served.cfg if self.served else self.cfg
        mn, cost = self.svc.price(served, prompt, completion, self.caller.rate)
        charged = cost
        if self.hold is not None and cost > self.hold.max_amount:
            log.error("call cost %d over its reservation %d; capped", cost, self.hold.max_amount)
            charged = self.hold.max_amount
        m = Metered(
            prompt,
            completion,
            mn,
            charged if self.hold else 0,
            (time.perf_counter() - t0) * 1000,
            ttft,
            reason,
            served.name,
        )
        self.metered = m
        if self.span is not None or tracing.METRICS_ENABLED:
            self._observed(m, served)
        if self.caller.prepaid:  # paid up front: an upto payment settles what was metered
            prepaid.add(cost)
        if self.hold is not None:
            self.settling = self.hold.settle_soon(
                m.charged,
                quantity=mn,
                linger=self.svc.linger,
                **self.svc.usage(self.caller, self.cfg, m, stream=stream, attempts=self.attempts),
            )

    def _observed(self, m: Metered, served: ModelConfig) -> None:
        """The call's outcome on its span (which ends) and in the GenAI metrics."""
        s, self.span = self.span, None
        tracing.genai_end(
            s,
            provider=served.backend,
            response_model=served.upstream_model or served.name,
            input_tokens=m.input_tokens,
            output_tokens=m.output_tokens,
            finish_reason=m.finish_reason,
            charge_micros=m.charged,
            attempts=self.attempts,
        )
        tracing.record_genai(
            "chat",
            served.backend,
            self.cfg.name,
            m.input_tokens,
            m.output_tokens,
            m.latency_ms / 1000,
            None,
        )


async def _aclose(it: AsyncIterator[Any] | None) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        with contextlib.suppress(BaseException):
            await close()
