"""The gateway's policies around one AI request, in the order they apply:

1. rate limits (requests and tokens per minute, per key and per customer) → 429;
2. the response cache (``x-tollway-cache-*`` headers, single-flight);
3. spend limits, as ledger budget caps on the call's reservation → 402
   ``budget_exceeded``, or a downgrade to a cheaper model;
4. the call itself (routing, retries and fallbacks live in the inference service);
5. the request log, written in batches off the hot path.

A :class:`Pass` carries one request through them and produces its headers.
"""

from __future__ import annotations

import logging
import math
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
from tollway.gateway.cache import CacheControl, ResponseCache, control
from tollway.gateway.config import GatewayConfig
from tollway.gateway.limits import Limits, defaults, effective
from tollway.gateway.requestlog import Entry, RequestLog
from tollway.identity.keys import ApiKey
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

    async def aclose(self) -> None:
        await self.log.close()
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
            if not key.prepaid:
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

    # ---------------------------------------------------------------- budgets

    async def caps(self, p: Pass) -> tuple[Cap, ...]:
        k = p.key
        return (
            *p.quota_caps,
            *await self.budgets.caps("key", k.id, k.customer_id, p.key_limits),
            *await self.budgets.caps("customer", k.customer_id, k.customer_id, p.customer_limits),
        )

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
