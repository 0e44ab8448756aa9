"""``[x402]`` and its paid routes ``[[x402.rules]]``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tollway.core.config import Section
from tollway.x402.rules import Rule, atomic

# The devnet token: a fixed address on chain 31337 (the first contract a local
# EVM node deploys), USD Coin's EIP-712 name and version, 6 decimals (1 unit = 1 micro-USD).
DEVNET_ASSET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
_HEX_ADDRESS = r"^0x[0-9a-fA-F]{40}$"


class X402Config(Section):
    """x402 payments: the built-in facilitator and the asset it settles."""

    # devnet: a ledger-backed EIP-3009 token (chain 31337), the embedded default.
    # evm: a real chain through web3.py (rpc_url; the facilitator's key from the
    # environment variable facilitator_key_env, never from this file).
    backend: Literal["devnet", "evm"] = "devnet"
    rpc_url: str = Field("", pattern=r"^(https?://\S+)?$")
    facilitator_key_env: str = Field("TOLLWAY_X402_FACILITATOR_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    receipt_timeout_seconds: int = Field(60, ge=1, le=3600)
    network: str = Field("eip155:31337", pattern=r"^eip155:[1-9][0-9]{0,18}$")
    asset: str = Field(DEVNET_ASSET, pattern=_HEX_ADDRESS)
    asset_name: str = Field("USD Coin", min_length=1)  # EIP-712 domain name
    asset_version: str = Field("2", min_length=1)  # EIP-712 domain version
    asset_decimals: int = Field(6, ge=0, le=36)
    pay_to: str = Field("", pattern=r"^(0x[0-9a-fA-F]{40})?$")  # default payTo of paid routes
    max_timeout_seconds: int = Field(300, ge=10, le=86_400)
    # The built-in facilitator refuses an authorization whose validBefore is further
    # out than this: a signature valid for years is a standing claim on the payer.
    max_validity_seconds: int = Field(3600, ge=60, le=7 * 86_400)
    # An external facilitator (the official API: {url}/verify, {url}/settle) for the
    # paid routes, instead of the built-in one; empty: built in.
    facilitator_url: str = Field("", pattern=r"^(https?://\S+)?$")
    # The operator's take on a payment for an agent-owned route, in basis points
    # (500 = 5%), booked to sys_fees; the rest is the agent's wallet's earnings.
    take_rate_bps: int = Field(500, ge=0, le=10_000)
    # Paid routes (see tollway.x402.rules); routes no rule matches are free.
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _rules(self) -> X402Config:
        names = [r.name for r in self.rules]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate rule name {sorted(dup)[0]!r}")
        if self.backend == "evm" and not self.rpc_url:
            raise ValueError('backend = "evm" needs rpc_url')
        for r in self.rules:
            if r.price_by != "ai_max_cost":
                atomic(r.price, self.asset_decimals)
            other = (r.network and r.network != self.network) or (
                r.asset and r.asset.lower() != self.asset.lower()
            )
            if other and not self.facilitator_url:
                raise ValueError(
                    f"rule {r.name!r}: the built-in facilitator settles only {self.network} {self.asset};"
                    " set [x402] facilitator_url to take other networks or assets"
                )
            if not (r.pay_to or self.pay_to):
                raise ValueError(f"rule {r.name!r}: set pay_to on the rule or in [x402]")
            if r.max_timeout_seconds > self.max_validity_seconds:
                raise ValueError(f"rule {r.name!r}: max_timeout_seconds is above max_validity_seconds")
        if self.max_timeout_seconds > self.max_validity_seconds:
            raise ValueError("max_timeout_seconds is above max_validity_seconds")
        return self
