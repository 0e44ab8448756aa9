"""``[billing]`` and its plans ``[[billing.plans]]``."""

from __future__ import annotations

from typing import Protocol

from pydantic import Field, model_validator

from tollway.billing.plans import Plan
from tollway.core.config import Section
from tollway.inference.config import InferenceConfig


class BillingConfig(Section):
    """Plans and subscriptions (see tollway.billing). With no plans configured,
    every customer is on a free plan of ``[inference] free_neurons_per_day``."""

    # The plan of customers with no subscription (and of canceled ones).
    default_plan: str = Field("free", pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    plans: list[Plan] = Field(default_factory=list)
    # Usage anomalies: a day above k x the median of the trailing days.
    anomaly_factor: float = Field(3.0, gt=1)
    anomaly_days: int = Field(14, ge=3, le=365)
    # Stripe Checkout and the customer portal send people back here.
    success_url: str = Field("http://127.0.0.1:8787/billing/done", pattern=r"^https?://\S+$")
    cancel_url: str = Field("http://127.0.0.1:8787/billing/canceled", pattern=r"^https?://\S+$")
    # Usage older than this is pushed to Stripe's meter (later events may still be committing).
    meter_lag_seconds: int = Field(5, ge=0, le=3600)
    meter_push_interval_seconds: float = Field(2.0, gt=0)
    # Stripe's v2 meter event stream (higher throughput) instead of v1 meter events.
    meter_event_stream: bool = False
    # How often each process renews ended subscriptions, expires credit grants
    # and rolls up today's usage.
    tick_seconds: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _plans(self) -> BillingConfig:
        keys = [p.lookup_key for p in self.plans]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError(f"duplicate plan lookup_key {sorted(dup)[0]!r}")
        if self.plans and self.default_plan not in keys:
            raise ValueError(f"default_plan {self.default_plan!r} is not one of the plans")
        return self


class BillingSettings(Protocol):
    """What billing reads of the whole configuration (``tollway.settings.Settings`` is one)."""

    @property
    def billing(self) -> BillingConfig: ...

    @property
    def inference(self) -> InferenceConfig: ...


def configured_plans(settings: BillingSettings) -> dict[str, Plan]:
    """The plans by lookup key; with none configured, the free tier of ``[inference]``."""
    if settings.billing.plans:
        return {p.lookup_key: p for p in settings.billing.plans}
    free = Plan(
        lookup_key=settings.billing.default_plan,
        name="Free",
        daily_neurons=settings.inference.free_neurons_per_day,
    )
    return {free.lookup_key: free}
