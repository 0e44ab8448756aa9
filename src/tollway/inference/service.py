"""Inference on the charge path: identify → price the maximum → reserve →
generate → count tokens → post the actual → usage event.

Model weights load lazily, once per process (a failed load is reported to
that model's callers; other models keep serving).  Pools and locks belong to
a :class:`Inference` (one per runtime, so per event loop).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field, replace
from typing import Any

from tollway.billing.service import Billing, Standing
from tollway.charge import Charger, Hold
from tollway.charge.hold import Cap, Payer
from tollway.core.clock import Clock
from tollway.core.config import ModelConfig, Settings
from tollway.core.errors import TollwayError, invalid, not_found
from tollway.core.money import parse_amount
from tollway.inference import routing
from tollway.inference.backends.anthropic_upstream import AnthropicUpstream
from tollway.inference.backends.base import (
    Cancel,
    ChatBackend,
    ChatParams,
    Delta,
    Finish,
    Progress,
    context_exceeded,
)
from tollway.inference.backends.llama_cpp import LlamaCppBackend
from tollway.inference.backends.openai_upstream import OpenAIUpstream
from tollway.inference.backends.sentence_transformers import SentenceTransformersBackend
from tollway.inference.metering import milli_neurons, price_micros

log = logging.getLogger("tollway.inference")

_LOAD_LOCK = threading.Lock()
_LOADED: dict[str, Any] = {}


@atexit.register
def _free_weights() -> None:
    """Close llama.cpp models before interpreter teardown (their finalizers
    otherwise run after the C bindings are gone and print tracebacks)."""
    with _LOAD_LOCK:
        for weights in _LOADED.values():
            for inst in weights if isinstance(weights, list) else ():
                inst.llm.close()
        _LOADED.clear()


def _load_weights(cfg: ModelConfig) -> Any:
    """Blocking and cached per process: a model's weights load once."""
    key = cfg.model_dump_json()
    with _LOAD_LOCK:
        if key not in _LOADED:
            t0 = time.perf_counter()
            loader = LlamaCppBackend.load if cfg.backend == "llama_cpp" else SentenceTransformersBackend.load
            _LOADED[key] = loader(cfg)
            log.info("loaded model %s in %.2fs", cfg.name, time.perf_counter() - t0)
        return _LOADED[key]


@dataclass(slots=True)
class Caller:
    customer_id: str
    account_id: str
    key_id: str | None = None
    caps: tuple[Cap, ...] = ()  # spend limits and quotas every charge must also fit (the gateway sets them)
    prepaid: bool = False  # paid in full up front (an x402 payment of the maximum): no hold
    standing: Standing | None = None  # the customer's plan (None: the default plan)

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
    # The settle's commit while it is still running. The API joins it before it
    # reports the charge ([ledger] acknowledge = "durable"), or just after the
    # response ("fast"; see tollway.inference.api.acknowledged).
    committing: asyncio.Future[Any] | None = None

    def headers(self) -> dict[str, str]:
        return {
            "x-tollway-neurons": f"{self.mneurons / 1000:.3f}",
            "x-tollway-charged": str(self.charged),
        }


class Inference:
    def __init__(self, settings: Settings, charger: Charger, clock: Clock, billing: Billing) -> None:
        self.configs = {m.name: m for m in settings.models}
        self.charger = charger
        self.clock = clock
        self.billing = billing
        self.micros_per_1000_neurons = parse_amount(settings.inference.usd_per_1000_neurons)
        self.hold_timeout_s = settings.inference.hold_timeout_seconds
        # Settles are joined before the response ("durable"): none lingers.
        self.linger = settings.ledger.acknowledge == "fast"
        self._backends: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ models

    def model(self, name: str, task: str | None = None) -> ModelConfig:
        cfg = self.configs.get(name)
        if cfg is None:
            raise not_found("model_not_found", f"no model {name!r}; GET /v1/models lists them", "model")
        if task is not None and cfg.task != task:
            raise invalid("model_wrong_task", f"model {name!r} serves {cfg.task}, not {task}", "model")
        return cfg

    async def backend(self, cfg: ModelConfig) -> Any:
        b = self._backends.get(cfg.name)
        if b is not None:
            return b
        lock = self._locks.setdefault(cfg.name, asyncio.Lock())
        async with lock:
            b = self._backends.get(cfg.name)
            if b is None:
                if cfg.backend == "openai":
                    b = OpenAIUpstream(cfg)
                elif cfg.backend == "anthropic":
                    b = AnthropicUpstream(cfg)
                else:
                    weights = await asyncio.to_thread(_load_weights, cfg)
                    b = (
                        LlamaCppBackend(cfg, weights)
                        if cfg.backend == "llama_cpp"
                        else SentenceTransformersBackend(cfg, weights)
                    )
                self._backends[cfg.name] = b
        return b

    async def aclose(self) -> None:
        for b in self._backends.values():
            if isinstance(b, OpenAIUpstream | AnthropicUpstream):
                await b.aclose()
        self._backends.clear()

    def price(
        self, cfg: ModelConfig, input_tokens: int, output_tokens: int = 0, rate: int | None = None
    ) -> tuple[int, int]:
        """(milli-neurons, micro-USD) for a call, at the caller's plan's ``rate``."""
        mn = milli_neurons(cfg, input_tokens, output_tokens)
        return mn, price_micros(mn, self.micros_per_1000_neurons if rate is None else rate)

    async def know(self, caller: Caller) -> None:
        """Load the caller's plan if the request path did not bring it."""
        if caller.standing is None and not caller.prepaid:
            caller.standing = await self.billing.standing_of(caller.customer_id)

    async def payer(self, caller: Caller) -> Payer:
        await self.know(caller)
        assert caller.standing is not None
        payer = await self.billing.payer(caller.standing, caller.account_id)
        return replace(payer, caps=caller.caps) if caller.caps else payer

    async def _hold(self, caller: Caller, cfg: ModelConfig, max_cost: int) -> Hold | None:
        """Reserve ``max_cost`` and return once the ledger has decided it: the
        call starts, and may answer, while the reservation commits; the settle
        joins the commit (:meth:`Hold.confirm`). Waiting for the commit before
        answering would buy nothing: if the process dies before the settle, a
        committed reservation only expires, and the call goes uncharged either
        way. A failed commit makes the call free; the ledger stays exact."""
        if max_cost <= 0 or caller.prepaid:
            return None
        payer = await self.payer(caller)
        hold = self.charger.hold(
            payer, max_cost, meter="neurons", description=cfg.name, timeout_s=self.hold_timeout_s
        )
        await self._reserve(caller, hold, early=True)
        return hold

    async def _reserve(self, caller: Caller, hold: Hold, *, early: bool) -> None:
        try:
            await hold.reserve(early=early)
        except TollwayError as e:
            assert caller.standing is not None
            raise self.billing.refused(caller.standing, e) from None

    async def charge_flat(self, caller: Caller, amount: int, meter: str, description: str) -> int:
        """Charge a fixed amount through the same charge path (e.g. a cache hit)."""
        payer = await self.payer(caller)
        hold = self.charger.hold(payer, amount, meter=meter, description=description)
        await self._reserve(caller, hold, early=False)
        await hold.settle(amount, quantity=1, key_id=caller.key_id, model=description)
        return amount

    # -------------------------------------------------------------------- chat

    async def plan_chat(
        self, cfg: ModelConfig, params: ChatParams, requested_max: int | None, rate: int | None = None
    ) -> tuple[list[Deployment], int]:
        """Every deployment the call may use, priced: (the plan, the most it can cost)."""
        targets = routing.order(cfg, self.configs)
        plan: list[Deployment] = []
        refusal: TollwayError | None = None
        for t in targets:
            backend: ChatBackend = await self.backend(t)
            pool = getattr(backend, "pool", None)
            p = replace(params)
            try:
                if pool is not None:
                    pool.check_capacity()  # 503 before any money moves
                n = backend.prompt_tokens(p)
                if n >= t.n_ctx:
                    raise context_exceeded(n, t.n_ctx, "messages")
            except TollwayError as e:
                refusal = refusal or e
                continue
            p.max_tokens = min(requested_max or t.max_tokens, t.max_tokens, t.n_ctx - n)
            plan.append(Deployment(t, backend, p, n))
        if not plan:
            assert refusal is not None
            raise refusal
        return plan, max(self.price(d.cfg, d.prompt_tokens, d.params.max_tokens, rate)[1] for d in plan)

    async def start_chat(
        self, caller: Caller, cfg: ModelConfig, params: ChatParams, requested_max: int | None
    ) -> ChatCall:
        """Price the call on every deployment it may use, reserve the most it can
        cost, and start it (retries and fallbacks happen here, before any output)."""
        await self.know(caller)
        plan, max_cost = await self.plan_chat(cfg, params, requested_max, caller.rate)
        call = ChatCall(self, caller, cfg, plan, None)
        if all(isinstance(d.backend, LlamaCppBackend) for d in plan):
            # Local models: evaluate the prompt while the reservation is decided.
            # No token reaches the caller before the ledger has accepted it; if
            # it is refused, the generation is stopped. (Upstream calls cost
            # real money, so they start only once the ledger has accepted the
            # reservation.)
            opening = asyncio.ensure_future(call.open())
            try:
                call.hold = await self._hold(caller, cfg, max_cost)
            except BaseException:
                opening.cancel()
                with contextlib.suppress(BaseException):
                    await opening
                await call.abort()
                raise
            opened: Awaitable[None] = opening
        else:
            call.hold = await self._hold(caller, cfg, max_cost)
            opened = call.open()
        try:
            await opened
        except BaseException:
            if call.hold is not None:
                await call.hold.release()
            raise
        return call

    # -------------------------------------------------------------- embeddings

    async def plan_embed(
        self, cfg: ModelConfig, texts: list[str], rate: int | None = None
    ) -> tuple[list[tuple[ModelConfig, Any, int]], int]:
        """Every deployment the call may use, with its token count: (the plan, the most it can cost)."""
        plan = []
        for t in routing.order(cfg, self.configs):
            backend = await self.backend(t)
            counts = backend.token_counts(texts)
            for i, n in enumerate(counts):
                if n > t.n_ctx:
                    raise context_exceeded(n, t.n_ctx, f"input[{i}]" if len(texts) > 1 else "input")
            plan.append((t, backend, sum(counts)))
        return plan, max(self.price(t, n, rate=rate)[1] for t, _, n in plan)

    async def embed(
        self, caller: Caller, cfg: ModelConfig, texts: list[str]
    ) -> tuple[list[list[float]], Metered]:
        t0 = time.perf_counter()
        await self.know(caller)
        plan, max_cost = await self.plan_embed(cfg, texts, caller.rate)
        hold = await self._hold(caller, cfg, max_cost)

        async def run(target: tuple[ModelConfig, Any, int]) -> tuple[list[list[float]], int]:
            _, backend, counted = target
            if isinstance(backend, OpenAIUpstream):
                return await backend.embed_with_usage(texts)
            return await backend.embed(texts), counted

        try:
            (t, _, _), (vectors, tokens), attempts = await routing.first_success(
                cfg.name, plan, lambda p: p[0].name, cfg.retry, run
            )
            mn, cost = self.price(t, tokens, rate=caller.rate)
            m = Metered(tokens, 0, mn, min(cost, max_cost), (time.perf_counter() - t0) * 1000)
            m.deployment, m.attempts = t.name, attempts
            if hold is not None:
                m.committing = hold.settle_soon(
                    m.charged,
                    quantity=mn,
                    linger=self.linger,
                    **self._usage(caller, cfg, m, stream=False, attempts=attempts),
                )
            return vectors, m
        except BaseException:
            if hold is not None:
                await hold.release()
            raise

    @staticmethod
    def _usage(caller: Caller, cfg: ModelConfig, m: Metered, **extra: Any) -> dict[str, Any]:
        return {
            "model": cfg.name,
            "key_id": caller.key_id,
            "input_tokens": m.input_tokens,
            "output_tokens": m.output_tokens,
            "mneurons": m.mneurons,
            "latency_ms": round(m.latency_ms, 3),
            "ttft_ms": None if m.ttft_ms is None else round(m.ttft_ms, 3),
            "finish_reason": m.finish_reason,
            "deployment": m.deployment or cfg.name,
            **extra,
        }


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
    served: Deployment | None = None
    attempts: int = 0
    t0: float = field(default_factory=time.perf_counter)
    _cancel: Cancel = field(default_factory=Cancel)
    _it: AsyncIterator[Delta | Finish] | None = None
    _first: Delta | Finish | None = None

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

    async def abort(self) -> None:
        """Stop a call that was opened but will not be consumed."""
        self._cancel.set()
        await _aclose(self._it)

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
            if not settled:
                if self.progress.completion_tokens and not isinstance(e, TollwayError):
                    # The client went away (or the stream broke) after output: charge what was made.
                    reason = "cancelled"
                    p = self.progress
                    self._settle(p.prompt_tokens, p.completion_tokens, reason, t0, ttft, stream)
                    assert self.hold is not None
                    await self.hold.wait()
                elif self.hold is not None:
                    await self.hold.release()
            raise

    def _settle(
        self, prompt: int, completion: int, reason: str, t0: float, ttft: float | None, stream: bool
    ) -> None:
        """Meter the call and start its settle (``metered.committing`` joins it)."""
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
        if self.hold is not None:
            m.committing = self.hold.settle_soon(
                m.charged,
                quantity=mn,
                linger=self.svc.linger,
                **Inference._usage(self.caller, self.cfg, m, stream=stream, attempts=self.attempts),
            )


async def _aclose(it: AsyncIterator[Any] | None) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        with contextlib.suppress(BaseException):
            await close()
