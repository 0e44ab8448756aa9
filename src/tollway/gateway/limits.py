"""Rate limits and budgets for a key or a customer: the config's defaults,
overridden per key or customer (``limits`` JSON, set through the admin API)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any

from tollway.core.errors import invalid
from tollway.core.money import format_usd, parse_amount
from tollway.gateway.config import LimitsConfig

_INT_FIELDS = ("rpm", "tpm")
_MONEY_FIELDS = ("daily_budget", "monthly_budget")


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int = 0  # 0 = unlimited
    tpm: int = 0
    daily_budget: int = 0  # micro-USD; 0 = none
    monthly_budget: int = 0
    on_budget: str = "block"  # block | downgrade
    downgrade_model: str = ""

    @property
    def any_budget(self) -> bool:
        return bool(self.daily_budget or self.monthly_budget)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for f in _MONEY_FIELDS:
            d[f] = format_usd(d[f]) if d[f] else None
        return d


def defaults(cfg: LimitsConfig) -> Limits:
    return Limits(
        cfg.rpm,
        cfg.tpm,
        parse_amount(cfg.daily_budget) if cfg.daily_budget else 0,
        parse_amount(cfg.monthly_budget) if cfg.monthly_budget else 0,
        cfg.on_budget,
        cfg.downgrade_model,
    )


def validate(raw: Any, models: set[str]) -> dict[str, Any]:
    """Check an override body; returns it normalized (money as micro-USD ints,
    ``null`` meaning "use the default")."""
    if not isinstance(raw, dict):
        raise invalid("invalid_limits", "limits must be an object", "limits")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k in _INT_FIELDS:
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise invalid("invalid_limits", f"{k} must be a non-negative integer or null", k)
        elif k in _MONEY_FIELDS:
            if v is not None:
                v = parse_amount(v, param=k)
        elif k == "on_budget":
            if v not in (None, "block", "downgrade"):
                raise invalid("invalid_limits", "on_budget must be 'block' or 'downgrade'", k)
        elif k == "downgrade_model":
            if v is not None and v not in models:
                raise invalid("invalid_limits", f"downgrade_model {v!r} is not in the model registry", k)
        else:
            raise invalid("invalid_limits", f"unknown limit {k!r}", k)
        out[k] = v
    return out


@lru_cache(maxsize=4096)
def effective(base: Limits, override_json: str | None) -> Limits:
    """``base`` with a stored override applied (cached: called on every request)."""
    if not override_json:
        return base
    over = {k: v for k, v in json.loads(override_json).items() if v is not None}
    return replace(base, **over)
