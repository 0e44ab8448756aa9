"""Which deployments a call may use, in what order, and how long to wait between tries.

A plain model is its own single deployment.  A ``router`` model picks its
first deployment at random by weight, then falls back to the others from
the heaviest down (weight 0: fallback only).  Each deployment gets
``retry.max_attempts`` tries with the configured backoff before the next.
"""

from __future__ import annotations

import random

from tollway.core.config import ModelConfig, RetryConfig
from tollway.core.errors import TollwayError
from tollway.inference.backends.base import UpstreamError

_rng = random.Random()


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
