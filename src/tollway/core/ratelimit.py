"""Sliding-window rate limits: counts per minute (the gateway's requests and tokens
per key and customer; the wallets' runaway-loop guard).

The window is the last 60 seconds, counted in 1-second buckets: a request is
admitted when, for every counter it touches, what the last 60 s used plus its
cost fits the limit.  All counters of one request are checked and bumped
together, atomically, so a refused request counts nowhere.

* One process: :class:`LocalWindows`, in memory.
* Several processes or hosts: :class:`RedisWindows`, one Lua script per
  request (atomic on the Redis server), so the limit holds across every
  process sharing that Redis, not once per replica.  If Redis fails, the
  process falls back to its local windows (metric
  ``tollway_ratelimit_redis_fallback_total``, gauge ``tollway_redis_up``)
  and retries Redis after a second.

Tokens are only known when a call finishes: a request is admitted while its
token window is not full (cost 0 at admission, requires ``used < limit``),
and :meth:`add` books the tokens afterwards.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

log = logging.getLogger("tollway.gateway")

WINDOW_S = 60

REDIS_FALLBACK = Counter(
    "tollway_ratelimit_redis_fallback_total", "Rate-limit checks served locally because Redis failed"
)
REDIS_UP = Gauge("tollway_redis_up", "1 while the gateway's Redis answers, 0 while it falls back")


@dataclass(slots=True)
class Tally:
    """One counter a request touches: ``key`` names the window (e.g. ``k:<id>:rpm``)."""

    key: str
    limit: int
    cost: int  # 0: only check that the window is not full


@dataclass(slots=True)
class Verdict:
    allowed: bool
    remaining: list[int]  # per counter, after this request
    reset_s: list[float]  # per counter: seconds until the window has room again
    refused: int  # index of the first counter that refused (-1: none)
    fits: list[bool]  # per counter: whether it had room

    @property
    def retry_after_s(self) -> int:
        """Long enough for every refusing counter to have room again."""
        if self.allowed:
            return 0
        wait = max(r for r, ok in zip(self.reset_s, self.fits, strict=True) if not ok)
        return max(1, math.ceil(wait))


class Windows(Protocol):
    async def hit(self, counters: list[Tally], now_s: int) -> Verdict: ...

    async def add(self, key: str, second: int, amount: int) -> None: ...

    async def aclose(self) -> None: ...


class _Window:
    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()  # [second, count], oldest first
        self.total = 0

    def expire(self, now_s: int) -> None:
        b = self.buckets
        while b and b[0][0] <= now_s - WINDOW_S:
            self.total -= b.popleft()[1]

    def reset_after(self, now_s: int, need: int) -> float:
        """Seconds until ``need`` fits: the oldest buckets leave the window first."""
        freed = 0
        for sec, n in self.buckets:
            freed += n
            if self.total - freed <= need:
                return float(sec + WINDOW_S - now_s)
        return float(WINDOW_S)

    def add(self, second: int, amount: int) -> None:
        b = self.buckets
        if b and b[-1][0] == second:
            b[-1][1] += amount
        else:
            # Late bookings for an older second join the newest bucket (never earlier).
            if b and b[-1][0] > second:
                b[-1][1] += amount
            else:
                b.append([second, amount])
        self.total += amount


class LocalWindows:
    def __init__(self) -> None:
        self._w: dict[str, _Window] = {}
        self._last_sweep = 0

    def hit_sync(self, counters: list[Tally], now_s: int) -> Verdict:
        windows = []
        for c in counters:
            w = self._w.get(c.key)
            if w is None:
                w = self._w[c.key] = _Window()
            w.expire(now_s)
            windows.append(w)
        remaining, reset, fitted = [], [], []
        refused = -1
        for i, (c, w) in enumerate(zip(counters, windows, strict=True)):
            need = c.limit - max(c.cost, 1)  # what the window may hold before this request
            fits = w.total <= need
            fitted.append(fits)
            if not fits and refused < 0:
                refused = i
            remaining.append(max(c.limit - w.total - (c.cost if fits else 0), 0))
            reset.append(w.reset_after(now_s, need) if not fits else self._reset(w, now_s))
        if refused >= 0:
            return Verdict(False, remaining, reset, refused, fitted)
        for c, w in zip(counters, windows, strict=True):
            if c.cost:
                w.add(now_s, c.cost)
        self._sweep(now_s)
        return Verdict(True, remaining, reset, -1, fitted)

    @staticmethod
    def _reset(w: _Window, now_s: int) -> float:
        return float(w.buckets[0][0] + WINDOW_S - now_s) if w.buckets else 0.0

    def _sweep(self, now_s: int) -> None:
        if now_s - self._last_sweep < WINDOW_S:
            return
        self._last_sweep = now_s
        for k in [k for k, w in self._w.items() if not w.buckets or w.buckets[-1][0] <= now_s - WINDOW_S]:
            del self._w[k]

    async def hit(self, counters: list[Tally], now_s: int) -> Verdict:
        return self.hit_sync(counters, now_s)

    async def add(self, key: str, second: int, amount: int) -> None:
        w = self._w.get(key)
        if w is None:
            w = self._w[key] = _Window()
        w.add(second, amount)

    async def aclose(self) -> None:
        self._w.clear()


# KEYS: one hash per counter (field = second, value = count).
# ARGV: now, window, then limit and cost per key.
# Returns {allowed, refused index, remaining..., reset...}.
_HIT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local n = #KEYS
local used, secs = {}, {}
for i = 1, n do
  local h = redis.call('HGETALL', KEYS[i])
  local total, old, live = 0, {}, {}
  for j = 1, #h, 2 do
    local s = tonumber(h[j])
    if s <= now - window then
      old[#old + 1] = h[j]
    else
      local c = tonumber(h[j + 1])
      total = total + c
      live[#live + 1] = {s, c}
    end
  end
  if #old > 0 then redis.call('HDEL', KEYS[i], unpack(old)) end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  used[i] = total
  secs[i] = live
end
local refused = 0
local out_rem, out_reset, out_fit = {}, {}, {}
for i = 1, n do
  local limit = tonumber(ARGV[1 + 2 * i])
  local cost = tonumber(ARGV[2 + 2 * i])
  local need = limit - math.max(cost, 1)
  local fits = used[i] <= need
  out_fit[i] = fits and 1 or 0
  if not fits and refused == 0 then refused = i end
  local rem = limit - used[i]
  if fits then rem = rem - cost end
  if rem < 0 then rem = 0 end
  out_rem[i] = rem
  local reset = 0
  if fits then
    if #secs[i] > 0 then reset = secs[i][1][1] + window - now end
  else
    reset = window
    local freed = 0
    for _, b in ipairs(secs[i]) do
      freed = freed + b[2]
      if used[i] - freed <= need then reset = b[1] + window - now break end
    end
  end
  out_reset[i] = reset
end
if refused == 0 then
  for i = 1, n do
    local cost = tonumber(ARGV[2 + 2 * i])
    if cost > 0 then redis.call('HINCRBY', KEYS[i], now, cost) end
    redis.call('EXPIRE', KEYS[i], window + 1)
  end
end
local res = {refused == 0 and 1 or 0, refused}
for i = 1, n do res[#res + 1] = out_rem[i] end
for i = 1, n do res[#res + 1] = out_reset[i] end
for i = 1, n do res[#res + 1] = out_fit[i] end
return res
"""


class RedisWindows:
    """Counters in Redis, shared by every process; local windows while it is down."""

    RETRY_S = 1.0

    def __init__(self, url: str, timeout_ms: int, prefix: str = "tollway:rl:") -> None:
        import redis.asyncio as aioredis

        self.prefix = prefix
        timeout = timeout_ms / 1000
        self.redis: Any = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._script = self.redis.register_script(_HIT)
        self.local = LocalWindows()
        self._down_until = 0.0
        REDIS_UP.set(1)

    def _failed(self, e: Exception) -> None:
        if self._down_until == 0.0 or time.monotonic() >= self._down_until:
            log.warning("Redis unavailable (%s): rate limits fall back to this process", e)
        self._down_until = time.monotonic() + self.RETRY_S
        REDIS_UP.set(0)
        REDIS_FALLBACK.inc()

    def _usable(self) -> bool:
        if self._down_until and time.monotonic() < self._down_until:
            REDIS_FALLBACK.inc()
            return False
        return True

    async def hit(self, counters: list[Tally], now_s: int) -> Verdict:
        if self._usable():
            args: list[int] = [now_s, WINDOW_S]
            for c in counters:
                args += [c.limit, c.cost]
            try:
                r = await self._script(keys=[self.prefix + c.key for c in counters], args=args)
            except Exception as e:  # any Redis failure: never fail the request for it
                self._failed(e)
            else:
                if self._down_until:
                    self._down_until = 0.0
                    REDIS_UP.set(1)
                n = len(counters)
                vals = [int(x) for x in r]
                return Verdict(
                    bool(vals[0]),
                    vals[2 : 2 + n],
                    [float(x) for x in vals[2 + n : 2 + 2 * n]],
                    vals[1] - 1,
                    [bool(x) for x in vals[2 + 2 * n :]],
                )
        return self.local.hit_sync(counters, now_s)

    async def add(self, key: str, second: int, amount: int) -> None:
        if self._usable():
            try:
                pipe = self.redis.pipeline(transaction=True)
                pipe.hincrby(self.prefix + key, str(second), amount)
                pipe.expire(self.prefix + key, WINDOW_S + 1)
                await pipe.execute()
                return
            except Exception as e:
                self._failed(e)
        await self.local.add(key, second, amount)

    async def aclose(self) -> None:
        await self.redis.aclose()
