"""Build real x402 payments for tests: a funded payer signs EIP-3009
authorizations with eth-account, in the shapes the official SDK sends."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from tollway.x402 import exact_evm, upto_evm
from tollway.x402.config import DEVNET_ASSET
from tollway.x402.devnet import FACILITATOR_ADDRESS

NETWORK = "eip155:31337"
PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
EXTRA = {"name": "USD Coin", "version": "2"}


def requirements(amount: int = 1000, **over: Any) -> dict[str, Any]:
    """v2 PaymentRequirements, as a resource server asks for them."""
    return {
        "scheme": "exact",
        "network": NETWORK,
        "asset": DEVNET_ASSET,
        "amount": str(amount),
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 300,
        "extra": dict(EXTRA),
        **over,
    }


@dataclass
class Payer:
    account: LocalAccount = field(default_factory=Account.create)

    @property
    def address(self) -> str:
        return str(self.account.address)

    def authorize(
        self,
        value: int = 1000,
        *,
        to: str = PAY_TO,
        valid_after: int = 0,
        valid_before: int | None = None,
        nonce: str | None = None,
        chain: int = 31337,
        asset: str = DEVNET_ASSET,
        key: Any = None,
    ) -> dict[str, Any]:
        """The exact scheme's ``payload``: an authorization and its signature."""
        auth = {
            "from": self.address,
            "to": to,
            "value": str(value),
            "validAfter": str(valid_after),
            "validBefore": str(valid_before if valid_before is not None else int(time.time()) + 300),
            "nonce": nonce or "0x" + os.urandom(32).hex(),
        }
        dom = exact_evm.domain(EXTRA["name"], EXTRA["version"], chain, asset)
        message = {**auth, **{k: int(auth[k]) for k in ("value", "validAfter", "validBefore")}}
        sig = exact_evm.sign(key if key is not None else self.account.key, dom, message)
        return {"authorization": auth, "signature": sig}

    def v2(self, reqs: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """A v2 PaymentPayload (what PAYMENT-SIGNATURE carries)."""
        reqs = reqs or requirements()
        kw.setdefault("value", int(reqs["amount"]))
        kw.setdefault("to", reqs["payTo"])
        return {
            "x402Version": 2,
            "payload": self.authorize(**kw),
            "accepted": reqs,
            "resource": {"url": "http://t/x"},
        }

    def v1(self, reqs: dict[str, Any], **kw: Any) -> dict[str, Any]:
        """A v1 PaymentPayload (what X-PAYMENT carries)."""
        kw.setdefault("value", int(reqs["maxAmountRequired"]))
        kw.setdefault("to", reqs["payTo"])
        p = self.authorize(**kw)
        return {"x402Version": 1, "scheme": reqs["scheme"], "network": reqs["network"], "payload": p}


def upto_requirements(amount: int = 1000, **over: Any) -> dict[str, Any]:
    """v2 PaymentRequirements of the upto scheme, naming devnet's facilitator."""
    extra = {**EXTRA, "assetTransferMethod": "permit2", "facilitatorAddress": FACILITATOR_ADDRESS}
    return requirements(amount, scheme="upto", extra=extra, **over)


def permit(
    payer: Payer,
    value: int = 1000,
    *,
    to: str = PAY_TO,
    facilitator: str = FACILITATOR_ADDRESS,
    spender: str = upto_evm.UPTO_PROXY_ADDRESS,
    token: str = DEVNET_ASSET,
    deadline: int | None = None,
    valid_after: int = 0,
    nonce: int | None = None,
    key: Any = None,
    chain: int = 31337,
) -> dict[str, Any]:
    """The upto scheme's ``payload``: a Permit2 authorization and its signature,
    as the official SDK's upto client builds it."""
    auth = {
        "from": payer.address,
        "permitted": {"token": token, "amount": str(value)},
        "spender": spender,
        "nonce": str(nonce if nonce is not None else int.from_bytes(os.urandom(32), "big")),
        "deadline": str(deadline if deadline is not None else int(time.time()) + 300),
        "witness": {"to": to, "facilitator": facilitator, "validAfter": str(valid_after)},
    }
    message = upto_evm.Permit.parse({"permit2Authorization": auth, "signature": "0x" + "00" * 65}).message()
    sig = upto_evm.sign(key if key is not None else payer.account.key, chain, message)
    return {"permit2Authorization": auth, "signature": sig}


def upto_v2(payer: Payer, reqs: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """A v2 upto PaymentPayload (what PAYMENT-SIGNATURE carries)."""
    reqs = reqs or upto_requirements()
    kw.setdefault("value", int(reqs["amount"]))
    kw.setdefault("to", reqs["payTo"])
    return {
        "x402Version": 2,
        "payload": permit(payer, **kw),
        "accepted": reqs,
        "resource": {"url": "http://t/x"},
    }
