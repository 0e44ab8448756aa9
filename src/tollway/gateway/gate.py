"""The gateway's policies around one AI request, in the order they apply:

1. rate limits (requests and tokens per minute, per key and per customer) → 429,
   and the plan's entitlements and request quotas (:meth:`Gateway.admit`);
2. the response cache (``x-tollway-cache-*`` headers, single-flight): a hit is
   replayed at the cache price (:meth:`Gateway.chat`);
3. who pays, built once with every cap: quotas, and spend limits as ledger
   budget caps on the call's reservation → 402 ``budget_exceeded``, or a
   downgrade to a cheaper model;
4. the call itself, through the :class:`~tollway.gateway.face.Face` (routing,
   retries, fallbacks and the charge live in the inference face);
5. the call's end (:class:`~tollway.gateway.served.Ending`): the request log,
   written in batches off the hot path, the tokens booked, the cache entry;
   the settle joined before the charge is reported, or, with ``[ledger]
   acknowledge = "fast"``, handed to the gateway's set of settles (drained on
   close).

A :class:`Pass` carries one request through them and produces its headers.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tollway.billing.plans import AI_CHAT, REQUESTS
from tollway.billing.service import Billing, Standing
from tollway.charge.hold import Cap
from tollway.core.clock import Clock
from tollway.core.errors import ErrorType, TollwayError
from tollway.core.money import parse_price
from tollway.core.ratelimit import LocalWindows, RedisWindows, Tally, Verdict, Windows
from tollway.gateway.budgets import Budgets
from tollway.gateway.cache import CacheControl, ResponseCache, cache_key, control
from tollway.gateway.cache import Entry as CacheEntry
from tollway.gateway.config import GatewayConfig
from tollway.gateway.face import Call, Face
from tollway.gateway.limits import Limits, defaults, effective
from tollway.gateway.requestlog import Entry, RequestLog
from tollway.gateway.served import Ending, Lead, Served, replayed
from tollway.identity.keys import ApiKey
from tollway.inference.backends.base import ChatParams
from tollway.inference.call import Caller, Embedding, Metered
from tollway.inference.config import ModelConfig
from tollway.ledger import Ledger

log = logging.getLogger("tollway.gateway")


def _reset(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``."""
    s = max(0, math.ceil(seconds))
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


@dataclass(slots=True)
class Pass:
    key: ApiKey
    entry: Entry
    cache: CacheControl
    key_limits: Limits
    customer_limits: Limits
    token_windows: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    standing: Standing | None = None  # the customer's plan (None: paid up front over x402)
    quota_caps: tuple[Cap, ...] = ()
    caller: Caller | None = None  # who pays, with every cap: built once (Gateway.caller)

    @property
    def downgrade_model(self) -> str | None:
        for lim in (self.key_limits, self.customer_limits):
            if lim.on_budget == "downgrade" and lim.downgrade_model:
                return lim.downgrade_model
        return None


class Gateway:
    def __init__(
        self, cfg: GatewayConfig, ledger: Ledger, clock: Clock, request_log: RequestLog, billing: Billing
    ) -> None:
        self.cfg = cfg
        self.billing = billing
        self.clock = clock
        self.key_defaults = defaults(cfg.key_limits)
        self.customer_defaults = defaults(cfg.customer_limits)
        self.cache_hit_price = parse_price(cfg.cache_hit_price)
        redis: Any = None
        self.windows: Windows
        if cfg.redis_url:
            rw = RedisWindows(cfg.redis_url, cfg.redis_timeout_ms)
            self.windows, redis = rw, rw.redis
        else:
            self.windows = LocalWindows()
        self.cache = ResponseCache(cfg.cache_max_entries, redis)
        self.budgets = Budgets(ledger, clock)
        self.log = request_log
        # Settles handed over with acknowledge = "fast": they commit after their
        # responses went out, and are drained on close.
        self._settling: set[asyncio.Future[Any]] = set()

    async def aclose(self) -> None:
        await self.drain()
        await self.log.close()

    async def drain(self) -> None:
        """Wait for the settles handed over (``acknowledge = "fast"``) to commit."""
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self.windows.aclose()

    # ------------------------------------------------------------------ admit

    async def admit(
        self, key: ApiKey, endpoint: str, headers: Any, model: str, stream: bool, feature: str = AI_CHAT
    ) -> Pass:
        """Open a request's pass: read its cache headers, apply rate limits, then
        the plan's entitlements (``feature``, and its request quotas). Raises 400
        (bad header), 429 or 402; each is logged."""
        e = self.log.start(endpoint)
        e.key_id, e.customer_id, e.model, e.stream = key.id, key.customer_id, model, stream
        try:
            cc = control(headers, self.cfg.cache_ttl_seconds)
            p = Pass(
                key,
                e,
                cc,
                effective(self.key_defaults, key.limits),
                effective(self.customer_defaults, key.customer_limits),
            )
            await self._rate_limit(p)
            if not key.prepaid and key.payer is None:  # an agent token's wallet has no plan
                b = self.billing
                p.standing = s = b.standing(key.customer_id, key.billing)
                p.quota_caps = (*await b.require(s, feature), *await b.require(s, REQUESTS))
        except TollwayError as err:
            self.fail(e, err)
            raise
        return p

    async def _rate_limit(self, p: Pass) -> None:
        kl, cl, k = p.key_limits, p.customer_limits, p.key
        tallies: list[tuple[str, Tally]] = []
        for scope, owner, lim in (("key", k.id, kl), ("customer", k.customer_id, cl)):
            if lim.rpm:
                tallies.append(("requests", Tally(f"{scope[0]}:{owner}:rpm", lim.rpm, 1)))
            if lim.tpm:
                tallies.append(("tokens", Tally(f"{scope[0]}:{owner}:tpm", lim.tpm, 0)))
        if not tallies:
            return
        v = await self.windows.hit([t for _, t in tallies], self.clock.now_us() // 1_000_000)
        p.token_windows = [t.key for kind, t in tallies if kind == "tokens"]
        p.headers.update(_ratelimit_headers(tallies, v))
        if not v.allowed:
            kind, t = tallies[v.refused]
            scope = "API key" if t.key.startswith("k:") else "customer"
            unit = "requests" if kind == "requests" else "tokens"
            raise TollwayError(
                ErrorType.RATE_LIMIT,
                "rate_limit_exceeded",
                f"this {scope}'s limit of {t.limit} {unit} per minute is reached; "
                f"retry after {v.retry_after_s}s",
                status=429,
                headers={**p.headers, "retry-after": str(v.retry_after_s)},
            )

    async def book_tokens(self, p: Pass, tokens: int) -> None:
        """Count a finished call's tokens now (when they are known), not at admission."""
        now_s = self.clock.now_us() // 1_000_000
        for key in p.token_windows:
            if tokens:
                await self.windows.add(key, now_s, tokens)

    # ---------------------------------------------------------------- who pays

    async def caller(self, p: Pass) -> Caller:
        """Who pays for the request, with every cap its charges must also fit
        (the plan's quotas, the key's and customer's budgets): built once, when
        the request first needs it (a cache hit at no price never does)."""
        c = p.caller
        if c is None:
            k = p.key
            caps = (
                *p.quota_caps,
                *await self.budgets.caps("key", k.id, k.customer_id, p.key_limits),
                *await self.budgets.caps("customer", k.customer_id, k.customer_id, p.customer_limits),
            )
            c = p.caller = Caller(
                k.customer_id, k.account_id, k.id, caps, k.prepaid, p.standing, k.tags, k.payer
            )  # k.payer: an agent token's wallet pays, within its limits and these
        return c

    # ------------------------------------------------------------------- call

    async def chat(
        self,
        face: Face,
        p: Pass,
        model: str,
        params: ChatParams,
        requested_max: int | None,
        norm: dict[str, Any],
        receive: Callable[[], Awaitable[Any]],
    ) -> Served:
        """One chat call: the cache (a hit is replayed), the call with its caps
        (or a downgrade when a budget refuses it), then its end. ``norm`` is the
        request as the cache keys it; ``receive`` tells a client that went away."""
        ck: str | None = None
        lead: Lead | None = None
        try:
            cfg = face.model(model, "chat")
            if p.cache.active:
                ck = cache_key(p.key.customer_id, "chat", cfg.name, norm, p.cache.key)
                hit, lead = await self.cache.lookup(ck)
                if hit is not None:
                    return await self._replay(face, p, hit, params.stream)
            p.entry.cache = "MISS"
            who = await self.caller(p)
            try:
                call = await face.start_chat(who, cfg, params, requested_max)
            except TollwayError as e:
                down = p.downgrade_model
                if e.code != "budget_exceeded" or down is None or down == cfg.name:
                    raise
                p.entry.downgraded_from = cfg.name
                cfg = face.model(down, "chat")
                call = await face.start_chat(who, cfg, params, requested_max)
        except BaseException as e:
            if ck is not None and lead is not None:
                await self.cache.unlead(ck, lead)
            if isinstance(e, TollwayError):
                self.fail(p.entry, e)
            raise
        headers = p.headers
        headers["x-tollway-model"] = cfg.name
        headers["x-tollway-provider"] = call.provider
        headers["x-tollway-attempts"] = str(call.attempts)
        headers["x-tollway-cache"] = "MISS"
        if p.entry.downgraded_from:
            headers["x-tollway-downgraded-from"] = p.entry.downgraded_from
        end = Ending(self, face, p, call, ck, lead)
        if params.stream:
            return Served(cfg.name, headers, events=end.track(call.events(stream=True)), end=end)
        try:
            text, m = await end.collect_unless_gone(receive)
            await self.acknowledged(face, call)
        except BaseException as e:
            await end.done(e)
            raise
        await end.done(None)
        return Served(cfg.name, headers, text=text, metered=m, tool_calls=end.tool_calls)

    async def _replay(self, face: Face, p: Pass, hit: CacheEntry, stream: bool) -> Served:
        """Answer from the cache: charged the cache price (free by default), logged as a HIT."""
        charged = 0
        e = p.entry
        if self.cache_hit_price:
            who = await self.caller(p)
            charged = await face.charge_flat(who, self.cache_hit_price, "cache_hit", e.model or "")
        e.cache, e.deployment, e.attempts, e.cost = "HIT", hit.deployment, 0, charged
        e.input_tokens, e.output_tokens = hit.prompt_tokens, hit.completion_tokens
        e.ttft_ms = 0
        self.log.record(e)
        m = Metered(
            hit.prompt_tokens, hit.completion_tokens, 0, charged, 0.0, 0.0, hit.finish_reason, hit.deployment
        )
        headers = {
            **p.headers,
            "x-tollway-model": e.model or "",
            "x-tollway-provider": hit.deployment,
            "x-tollway-attempts": "0",
            "x-tollway-cache": "HIT",
            **m.headers(),
        }
        if stream:
            return Served(e.model or "", headers, metered=m, events=replayed(hit))
        return Served(e.model or "", headers, text="".join(hit.pieces), metered=m)

    async def embed(self, face: Face, p: Pass, cfg: ModelConfig, texts: list[str]) -> Embedding:
        """One embeddings call, its tokens booked and its row logged, its charge
        joined as the acknowledgement asks."""
        done = await face.start_embed(await self.caller(p), cfg, texts)
        m, e = done.metered, p.entry
        e.deployment, e.attempts = m.deployment, m.attempts
        e.input_tokens, e.mneurons, e.cost = m.input_tokens, m.mneurons, m.charged
        headers = p.headers
        headers["x-tollway-model"] = cfg.name
        headers["x-tollway-provider"] = m.deployment
        headers["x-tollway-attempts"] = str(m.attempts)
        await self.book_tokens(p, m.input_tokens)
        self.log.record(e)
        await self.acknowledged(face, done)
        return done

    # ------------------------------------------------------------ the settle

    async def acknowledged(self, face: Face, call: Call) -> None:
        """Before anything reports a call's charge: with ``[ledger] acknowledge =
        "durable"`` (the default) wait until its settle has committed (one that
        did not is a 503: the reservation expires, the call goes uncharged, the
        ledger stays exact); with ``"fast"`` hand it to the set of settles that
        commit after their responses."""
        fut = call.settling
        if fut is None:
            return
        if face.linger:
            self._hand_off(fut)
            return
        try:
            await asyncio.shield(fut)
        except TollwayError:
            raise
        except Exception as e:
            log.exception("a settle failed before its response")
            raise TollwayError(
                ErrorType.API, "database_unavailable", "the charge could not be recorded; retry", status=503
            ) from e

    async def joined(self, face: Face, call: Call) -> None:
        """A stream ended (however it ended): its settle, if one started, is
        joined (durable) or handed over (fast); a failure is logged."""
        fut = call.settling
        if fut is None:
            return
        if face.linger and not fut.done():
            self._hand_off(fut)
            return
        try:
            await asyncio.shield(fut)
        except Exception:  # the hold stays pending and expires: the call goes uncharged
            log.exception("a settle failed after its response was sent")

    def _hand_off(self, fut: asyncio.Future[Any]) -> None:
        if fut in self._settling:
            return
        if fut.done():
            self._settled(fut)
            return
        self._settling.add(fut)
        fut.add_done_callback(self._settled)

    def _settled(self, fut: asyncio.Future[Any]) -> None:
        self._settling.discard(fut)
        if not fut.cancelled() and (err := fut.exception()) is not None:
            log.error("a settle failed after its response was sent", exc_info=err)

    # -------------------------------------------------------------------- log

    def fail(self, e: Entry, err: TollwayError) -> None:
        e.status, e.error_code = err.status, err.code
        provider, attempts = getattr(err, "provider", None), getattr(err, "attempts", None)
        if isinstance(provider, str) and isinstance(attempts, int):  # every attempt failed: what was tried
            e.deployment, e.attempts = provider, attempts
        self.log.record(e)


def _ratelimit_headers(tallies: list[tuple[str, Tally]], v: Verdict) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers, from the tightest counter of each kind."""
    h: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        idx = [i for i, (k, _) in enumerate(tallies) if k == kind]
        if not idx:
            continue
        i = min(idx, key=lambda j: v.remaining[j])
        h[f"x-ratelimit-limit-{kind}"] = str(tallies[i][1].limit)
        h[f"x-ratelimit-remaining-{kind}"] = str(v.remaining[i])
        h[f"x-ratelimit-reset-{kind}"] = _reset(v.reset_s[i])
    return h
