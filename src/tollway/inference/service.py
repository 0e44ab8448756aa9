"""Inference, the face the gateway calls (:class:`tollway.gateway.face.Face`):
model calls on the charge path: price the maximum → reserve → generate →
count tokens → post the actual → usage event. A call owns its settle
(``settling``); the gateway joins it before the charge is reported.

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
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

from tollway.billing.service import Billing
from tollway.charge import Charger, Hold, prepaid
from tollway.charge.hold import Payer
from tollway.core.clock import Clock
from tollway.core.errors import TollwayError, invalid, not_found
from tollway.core.money import parse_amount, price_micros
from tollway.inference import routing
from tollway.inference.backends.anthropic_upstream import AnthropicUpstream
from tollway.inference.backends.base import ChatBackend, ChatParams, context_exceeded
from tollway.inference.backends.llama_cpp import LlamaCppBackend
from tollway.inference.backends.openai_upstream import OpenAIUpstream
from tollway.inference.backends.sentence_transformers import SentenceTransformersBackend

# The call's types live in inference/call.py; they are named here too, where
# the faces that call inference (agents, vectors) import them from.
from tollway.inference.call import Caller as Caller
from tollway.inference.call import ChatCall as ChatCall
from tollway.inference.call import Deployment
from tollway.inference.call import Embedding as Embedding
from tollway.inference.call import Metered as Metered
from tollway.inference.config import InferenceSettings, ModelConfig
from tollway.inference.metering import milli_neurons
from tollway.observe import tracing

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


class Inference:
    def __init__(self, settings: InferenceSettings, charger: Charger, clock: Clock, billing: Billing) -> None:
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
        if caller.standing is None and not caller.prepaid and caller.funding is None:
            caller.standing = await self.billing.standing_of(caller.customer_id)

    async def payer(self, caller: Caller) -> Payer:
        """Who pays for the caller's calls, with all its caps: built once per caller."""
        payer = caller.payer
        if payer is None and caller.funding is not None:
            f = caller.funding
            caller.payer = payer = Payer(f.account_id, f.customer_id, f.sources, (*f.caps, *caller.caps))
        elif payer is None:
            await self.know(caller)
            assert caller.standing is not None
            funding = await self.billing.payer(caller.standing, caller.account_id)
            if caller.caps:
                funding = Payer(funding.account_id, funding.customer_id, funding.sources, caller.caps)
            caller.payer = payer = funding
        return payer

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
            if caller.standing is None:  # a payer of its own (an agent token's wallet): its words
                raise
            raise self.billing.refused(caller.standing, e) from None

    async def charge_flat(self, caller: Caller, amount: int, meter: str, description: str) -> int:
        """Charge a fixed amount through the same charge path (e.g. a cache hit)."""
        payer = await self.payer(caller)
        hold = self.charger.hold(payer, amount, meter=meter, description=description)
        await self._reserve(caller, hold, early=False)
        await hold.settle(amount, quantity=1, key_id=caller.key_id, model=description, **dict(caller.tags))
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
        call = ChatCall(self, caller, cfg, [], None)
        call.span = tracing.genai_span("chat", cfg.name, cfg.backend)
        try:
            with tracing.use(call.span):  # the hold's and the upstream's parent
                return await self._start_chat(call, caller, cfg, params, requested_max)
        except BaseException as e:
            call.end_span(e)
            raise

    async def _start_chat(
        self, call: ChatCall, caller: Caller, cfg: ModelConfig, params: ChatParams, requested_max: int | None
    ) -> ChatCall:
        await self.know(caller)
        plan, max_cost = await self.plan_chat(cfg, params, requested_max, caller.rate)
        call.plan = plan
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
        """Embed ``texts``, charged: returns once the charge has committed."""
        e = await self.start_embed(caller, cfg, texts)
        await e.committed()
        return e.vectors, e.metered

    async def start_embed(self, caller: Caller, cfg: ModelConfig, texts: list[str]) -> Embedding:
        """Embed ``texts`` and start the charge's settle (:meth:`Embedding.committed` joins it)."""
        s = tracing.genai_span("embeddings", cfg.name, cfg.backend)
        try:
            with tracing.use(s):
                out = await self._start_embed(caller, cfg, texts)
        except BaseException as e:
            tracing.end(s, e)
            raise
        m = out.metered
        if s is not None or tracing.METRICS_ENABLED:
            served = self.configs.get(m.deployment, cfg)
            tracing.genai_end(
                s,
                provider=served.backend,
                response_model=served.upstream_model or served.name,
                input_tokens=m.input_tokens,
                output_tokens=None,
                finish_reason=None,
                charge_micros=m.charged,
                attempts=m.attempts,
            )
            tracing.record_genai(
                "embeddings", served.backend, cfg.name, m.input_tokens, 0, m.latency_ms / 1000, None
            )
        return out

    async def _start_embed(self, caller: Caller, cfg: ModelConfig, texts: list[str]) -> Embedding:
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
            if caller.prepaid:  # paid up front: an upto payment settles what was metered
                prepaid.add(m.charged)
            out = Embedding(vectors, m)
            if hold is not None:
                out.settling = hold.settle_soon(
                    m.charged,
                    quantity=mn,
                    linger=self.linger,
                    **self.usage(caller, cfg, m, stream=False, attempts=attempts),
                )
            return out
        except BaseException:
            if hold is not None:
                await hold.release()
            raise

    @staticmethod
    def usage(caller: Caller, cfg: ModelConfig, m: Metered, **extra: Any) -> dict[str, Any]:
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
            **dict(caller.tags),
            **extra,
        }
