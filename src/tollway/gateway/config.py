"""``[gateway]``: rate limits, budgets, the response cache and the request log."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tollway.core.config import Section, valid_amount


class LimitsConfig(Section):
    """Default rate limits and budgets (0 = none); keys and customers can override them."""

    rpm: int = Field(0, ge=0)  # requests per minute
    tpm: int = Field(0, ge=0)  # tokens (prompt + completion) per minute
    daily_budget: str = ""  # USD, e.g. "$5"; empty = no budget
    monthly_budget: str = ""
    on_budget: Literal["block", "downgrade"] = "block"
    downgrade_model: str = ""  # the cheaper model served when a budget is reached

    @field_validator("daily_budget", "monthly_budget")
    @classmethod
    def _budget(cls, v: str) -> str:
        return valid_amount(v) if v else v


class GatewayConfig(Section):
    # Empty: counters and cache live in this process. Set to share them across
    # processes and hosts, e.g. "redis://127.0.0.1:6379/0".
    redis_url: str = ""
    redis_timeout_ms: int = Field(250, ge=1, le=60_000)
    key_limits: LimitsConfig = LimitsConfig()
    customer_limits: LimitsConfig = LimitsConfig()
    # Response cache: off unless a TTL is set here or per request (x-tollway-cache-ttl).
    cache_ttl_seconds: int = Field(0, ge=0, le=31_536_000)
    cache_max_entries: int = Field(10_000, ge=0)
    cache_hit_price: str = "$0"  # charged per cache hit
    # Request log: batched writes, pruned after this many days (0 = keep forever).
    log_retention_days: int = Field(30, ge=0)
    log_flush_ms: int = Field(200, ge=1, le=60_000)

    @field_validator("cache_hit_price")
    @classmethod
    def _price(cls, v: str) -> str:
        return valid_amount(v, free_ok=True)
