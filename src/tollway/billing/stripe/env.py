"""Stripe's usual environment variables.

- ``STRIPE_API_KEY``: a secret (``sk_…``) or restricted (``rk_…``) key; set, it turns Stripe on.
- ``STRIPE_WEBHOOK_SECRET``: the signing secret of the webhook endpoint (``whsec_…``).
- ``STRIPE_API_BASE``: another API base URL (a local stand-in, a proxy).
- ``STRIPE_METER_EVENTS_API_BASE``: the v2 meter event stream's base URL; by
  default ``STRIPE_API_BASE`` when that is set, else Stripe's own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from tollway.core.config import ConfigError

_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")


@dataclass(frozen=True, slots=True)
class StripeEnv:
    api_key: str
    webhook_secret: str = ""
    api_base: str | None = None
    meter_events_base: str | None = None

    @property
    def livemode(self) -> bool:
        return "_live_" in self.api_key

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> StripeEnv | None:
        key = env.get("STRIPE_API_KEY", "").strip()
        if not key:
            return None
        if not key.startswith(("sk_", "rk_")):
            raise ConfigError(
                "environment", "STRIPE_API_KEY", "must be a secret key (sk_…) or a restricted key (rk_…)"
            )
        base = _base(env, "STRIPE_API_BASE")
        return cls(
            api_key=key,
            webhook_secret=env.get("STRIPE_WEBHOOK_SECRET", "").strip(),
            api_base=base,
            meter_events_base=_base(env, "STRIPE_METER_EVENTS_API_BASE") or base,
        )


def _base(env: Mapping[str, str], name: str) -> str | None:
    v = env.get(name, "").strip()
    if not v:
        return None
    if not _URL.match(v):
        raise ConfigError("environment", name, f"must be an http(s) URL, got {v!r}")
    return v.rstrip("/")
