"""``[wallets]``: agent wallets and the broker."""

from __future__ import annotations

from typing import Protocol

from pydantic import Field

from tollway.core.config import Section
from tollway.x402.config import X402Config


class BrokerAsset(Section):
    """An asset the broker pays x402 resources with (a USD stablecoin)."""

    network: str = Field(pattern=r"^eip155:[1-9][0-9]{0,18}$")
    asset: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$")
    decimals: int = Field(6, ge=0, le=36)


class WalletsConfig(Section):
    """Agent wallets and the broker (see tollway.wallets)."""

    # The environment variable holding the 32-byte key (base64 or hex) that
    # encrypts wallets' EVM signing keys at rest. Never put the key in this file.
    key_env: str = Field("TOLLWAY_WALLET_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    hold_seconds: int = Field(600, ge=1, le=7 * 86_400)  # an approved authorization's hold
    sweep_seconds: float = Field(5.0, gt=0)  # how often timed-out approvals are declined
    # Where a frozen token is reported (POST JSON); empty: the log and the metric only.
    alert_webhook_url: str = Field("", pattern=r"^(https?://\S+)?$")
    # Hosts or CIDRs on private networks the broker may reach (e.g. "127.0.0.1/32").
    broker_allow: list[str] = Field(default_factory=list)
    # What the broker pays with; empty: this tollway's own [x402] network and asset.
    broker_assets: list[BrokerAsset] = Field(default_factory=list)
    broker_timeout_seconds: float = Field(30, gt=0, le=600)
    # How long a payment the broker signs stays valid, at most, whatever the server
    # asks (its maxTimeoutSeconds): the wallet's hold lasts that long plus a minute.
    broker_signature_seconds: int = Field(180, ge=10, le=3600)
    broker_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    # Budget requests (docs/wallets.md): how long one waits for its owner, and how
    # long a bootstrap credential lives unless the owner says otherwise.
    budget_request_seconds: int = Field(86_400, ge=60, le=90 * 86_400)
    bootstrap_seconds: int = Field(7 * 86_400, ge=60, le=90 * 86_400)
    autopilot_seconds: float = Field(300.0, gt=0)  # how often the autopilot checks its wallets


class BrokerSettings(Protocol):
    """What the broker reads of the whole configuration (``tollway.settings.Settings`` is one)."""

    @property
    def wallets(self) -> WalletsConfig: ...

    @property
    def x402(self) -> X402Config: ...
