"""Response cache with single-flight.

Entries are keyed by customer, endpoint, model and the normalized request
(everything but ``stream``, ``stream_options`` and ``user``), or by the
caller's ``x-tollway-cache-key``: one customer never sees another's entries.
A chat entry keeps the generated pieces, so a streamed response replays as
SSE and a plain one as JSON, whichever way the first was asked for.

Single-flight: while a leader computes an entry, identical requests in this
process wait for it instead of calling the model again.  With Redis the
entries are shared across processes, and a short lock makes followers in
other processes poll for the leader's entry instead of calling the model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

from tollway.core.errors import invalid

log = logging.getLogger("tollway.gateway")

_IGNORED = {"stream", "stream_options", "user"}
_MAX_TTL = 31_536_000
_LOCK_S = 30  # longest a remote leader is waited for


@dataclass(slots=True)
class Entry:
    pieces: list[str]  # chat: the generated text, as it was streamed
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    deployment: str


@dataclass(frozen=True, slots=True)
class CacheControl:
    ttl_s: int  # 0: do not store
    skip: bool  # do not read
    key: str | None

    @property
    def active(self) -> bool:
        return self.ttl_s > 0 and not self.skip


def control(headers: Any, default_ttl: int) -> CacheControl:
    """Read ``x-tollway-cache-ttl``, ``x-tollway-skip-cache``, ``x-tollway-cache-key``;
    a malformed one is a 400 naming the header."""
    ttl = default_ttl
    raw = headers.get("x-tollway-cache-ttl")
    if raw is not None:
        if not raw.strip().isdigit() or int(raw) > _MAX_TTL:
            raise invalid(
                "invalid_header",
                f"x-tollway-cache-ttl must be whole seconds from 0 to {_MAX_TTL}",
                "x-tollway-cache-ttl",
            )
        ttl = int(raw)
    skip = False
    raw = headers.get("x-tollway-skip-cache")
    if raw is not None:
        v = raw.strip().lower()
        if v not in ("true", "false", "1", "0"):
            raise invalid(
                "invalid_header", "x-tollway-skip-cache must be true or false", "x-tollway-skip-cache"
            )
        skip = v in ("true", "1")
    key = headers.get("x-tollway-cache-key")
    if key is not None and not (0 < len(key) <= 256 and key.isprintable()):
        raise invalid(
            "invalid_header", "x-tollway-cache-key must be 1-256 printable characters", "x-tollway-cache-key"
        )
    return CacheControl(ttl, skip, key)


def cache_key(customer_id: str, endpoint: str, model: str, body: dict[str, Any], custom: str | None) -> str:
    if custom is not None:
        basis: Any = ["custom", custom]
    else:
        basis = {k: v for k, v in body.items() if k not in _IGNORED}
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{customer_id}:{endpoint}:{model}:{digest}"


class ResponseCache:
    def __init__(self, max_entries: int, redis: Any = None, prefix: str = "tollway:cache:") -> None:
        self.max_entries = max_entries
        self.redis = redis
        self.prefix = prefix
        self._local: OrderedDict[str, tuple[float, Entry]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Entry | None]] = {}

    async def get(self, key: str) -> Entry | None:
        hit = self._local.get(key)
        if hit is not None:
            if hit[0] > time.monotonic():
                self._local.move_to_end(key)
                return hit[1]
            del self._local[key]
        if self.redis is not None:
            try:
                raw = await self.redis.get(self.prefix + key)
            except Exception as e:
                log.warning("cache read from Redis failed: %s", e)
                return None
            if raw is not None:
                return Entry(**json.loads(raw))
        return None

    async def put(self, key: str, entry: Entry, ttl_s: int) -> None:
        if self.max_entries:
            self._local[key] = (time.monotonic() + ttl_s, entry)
            self._local.move_to_end(key)
            while len(self._local) > self.max_entries:
                self._local.popitem(last=False)
        if self.redis is not None:
            try:
                await self.redis.set(self.prefix + key, json.dumps(asdict(entry)), ex=ttl_s)
            except Exception as e:
                log.warning("cache write to Redis failed: %s", e)

    async def lookup(self, key: str) -> tuple[Entry | None, asyncio.Future[Entry | None] | None]:
        """``(entry, None)`` on a hit; ``(None, future)`` when this caller leads
        (it must :meth:`finish` the future); ``(None, None)`` if the leader failed."""
        entry = await self.get(key)
        if entry is not None:
            return entry, None
        waiting = self._inflight.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting), None
        fut: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        if self.redis is not None and not await self._remote_lead(key):
            entry = await self._await_remote(key)
            self.finish(key, fut, entry)
            if entry is not None:
                return entry, None
            fut = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
        return None, fut

    def finish(self, key: str, fut: asyncio.Future[Entry | None], entry: Entry | None) -> None:
        if self._inflight.get(key) is fut:
            del self._inflight[key]
        if not fut.done():
            fut.set_result(entry)

    async def unlead(self, key: str, fut: asyncio.Future[Entry | None]) -> None:
        """Give up leading ``key``: its followers call the model themselves."""
        self.finish(key, fut, None)
        await self.release_remote(key)

    async def release_remote(self, key: str) -> None:
        if self.redis is not None:
            try:
                await self.redis.delete(self.prefix + "lock:" + key)
            except Exception as e:
                log.warning("cache lock release in Redis failed: %s", e)

    async def _remote_lead(self, key: str) -> bool:
        try:
            return bool(await self.redis.set(self.prefix + "lock:" + key, "1", nx=True, ex=_LOCK_S))
        except Exception as e:
            log.warning("cache lock in Redis failed: %s", e)
            return True

    async def _await_remote(self, key: str) -> Entry | None:
        deadline = time.monotonic() + _LOCK_S
        delay = 0.005
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
            entry = await self.get(key)
            if entry is not None:
                return entry
            try:
                if not await self.redis.exists(self.prefix + "lock:" + key):
                    return None
            except Exception:
                return None
        return None
