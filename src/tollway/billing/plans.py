"""Plans, as ``[[billing.plans]]`` in ``tollway.toml``.

A plan is named by its ``lookup_key`` (the same key Stripe's prices and
entitlement features use). Neurons are priced per plan: what is included
(a daily free allocation, a monthly allowance) is worth neurons at the plan's
rate, and what goes beyond it is paid from credit grants, then the prepaid
balance, then, on plans that bill overage, invoiced at the end of the period.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

_KEY = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
FEATURE_KEY = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,99}$")

# The features tollway itself checks (any other lookup key is the operator's own).
AI_CHAT = "ai.chat"
AI_EMBEDDINGS = "ai.embeddings"
X402_AI = "x402.ai"  # AI routes reached over x402 by a customer's API key (unauthenticated_only)
BUILTIN_FEATURES = (AI_CHAT, AI_EMBEDDINGS, X402_AI)
# Quotas: metered features whose amount comes from the plan.
NEURONS = "neurons"
REQUESTS = "requests"


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lookup_key: str = Field(pattern=_KEY)
    name: str = ""  # shown to people; defaults to the lookup key
    price: str = "$0"  # per month
    trial_days: int = Field(0, ge=0, le=730)
    # Included every UTC day (the free tier) and every billing period.
    daily_neurons: int = Field(0, ge=0)
    daily_requests: int = Field(0, ge=0)  # 0 = no daily request quota
    included_neurons: int = Field(0, ge=0)
    included_requests: int = Field(0, ge=0)  # 0 = no period request quota
    # The rate of a neuron on this plan; empty = [inference] usd_per_1000_neurons.
    usd_per_1000_neurons: str = ""
    # Bill usage beyond what is included and prepaid at the end of the period
    # (a metered price in Stripe). Off: such usage is refused with 402.
    overage: bool = False
    features: list[str] = Field(default_factory=lambda: ["*"])
    # Quotas per billing period of the operator's own features (lookup key → units).
    quotas: dict[str, int] = Field(default_factory=dict)

    @field_validator("price")
    @classmethod
    def _price(cls, v: str) -> str:
        from tollway.core.config import valid_amount

        return valid_amount(v, free_ok=True)

    @field_validator("usd_per_1000_neurons")
    @classmethod
    def _rate(cls, v: str) -> str:
        from tollway.core.config import valid_amount

        return valid_amount(v) if v else v

    @field_validator("features")
    @classmethod
    def _features(cls, v: list[str]) -> list[str]:
        for f in v:
            if f != "*" and not FEATURE_KEY.match(f):
                raise ValueError(f"feature {f!r} is not a lookup key (lowercase letters, digits, . _ : -)")
        return v

    @field_validator("quotas")
    @classmethod
    def _quotas(cls, v: dict[str, int]) -> dict[str, int]:
        for f, n in v.items():
            if not FEATURE_KEY.match(f) or f in (NEURONS, REQUESTS):
                raise ValueError(
                    f"quota {f!r}: not a lookup key of its own (neurons and requests have their fields)"
                )
            if n < 1:
                raise ValueError(f"quota {f!r} must be at least 1")
        return v

    @property
    def title(self) -> str:
        return self.name or self.lookup_key

    def has(self, feature: str) -> bool:
        return "*" in self.features or feature in self.features
