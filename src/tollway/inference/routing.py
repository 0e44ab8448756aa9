"""Which deployments a call may use, in what order, and how long to wait between tries.

A plain model is its own single deployment.  A ``router`` model picks its
first deployment at random by weight, then falls back to the others from
the heaviest down (weight 0: fallback only).  Each deployment gets
``retry.max_attempts`` tries with the configured backoff before the next.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from tollway.core.errors import TollwayError
from tollway.inference.backends.base import UpstreamError, upstream_failed
from tollway.inference.config import ModelConfig, RetryConfig

log = logging.getLogger("tollway.inference")
_rng = random.Random()
T = TypeVar("T")
R = TypeVar("R")


def order(cfg: ModelConfig, configs: dict[str, ModelConfig]) -> list[ModelConfig]:
    if cfg.backend != "router":
        return [cfg]
    deps = list(cfg.deployments)
    live = [d for d in deps if d.weight > 0]
    first = _rng.choices(live, weights=[d.weight for d in live])[0]
    rest = sorted((d for d in deps if d is not first), key=lambda d: -d.weight)
    return [configs[d.model] for d in (first, *rest)]


def backoff_s(retry: RetryConfig, attempt: int) -> float:
    """Wait before try ``attempt + 1`` (attempt counts from 1)."""
    base = retry.backoff_ms
    if retry.backoff == "linear":
        ms = base * attempt
    elif retry.backoff == "exponential":
        ms = base * 2 ** (attempt - 1)
    else:
        ms = base
    return min(ms, retry.max_backoff_ms) / 1000


def retryable(e: BaseException) -> bool:
    if isinstance(e, UpstreamError):
        return e.retryable
    if isinstance(e, TollwayError):
        return e.status in (502, 503, 504)
    return isinstance(e, TimeoutError | OSError)


async def first_success(
    model: str,
    targets: Sequence[T],
    name: Callable[[T], str],
    retry: RetryConfig,
    run: Callable[[T], Awaitable[R]],
) -> tuple[T, R, int]:
    """Try each target up to ``retry.max_attempts`` times (each try within the
    attempt timeout, with backoff between tries) until ``run`` succeeds; returns
    the target, its result and the attempts made.  An error that is not worth
    retrying propagates at once; when every try fails, 502 names the last
    provider and the number of attempts."""
    attempts = 0
    last: BaseException | None = None
    for t in targets:
        for n in range(1, retry.max_attempts + 1):
            attempts += 1
            try:
                async with asyncio.timeout(retry.attempt_timeout_seconds):
                    return t, await run(t), attempts
            except Exception as e:
                err: BaseException = e
                if isinstance(e, TimeoutError):
                    err = upstream_failed(name(t), f"no answer within {retry.attempt_timeout_seconds}s")
                if not retryable(err):
                    raise err from None
                last = err
                log.warning("%s: attempt %d on %s failed: %s", model, attempts, name(t), err)
                if n < retry.max_attempts:
                    await asyncio.sleep(backoff_s(retry, n))
    why = last.message if isinstance(last, TollwayError) else repr(last)
    provider = name(targets[-1])
    err = upstream_failed(provider, f"{attempts} attempts failed; last: {why}")
    err.attempts = attempts
    err.message = (
        f"model {model!r}: every deployment failed after {attempts} attempts "
        f"(last provider {provider!r}): {why}"
    )
    raise err
