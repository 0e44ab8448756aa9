"""The broker: an agent names a request; tollway makes it, and if the answer
is an x402 ``402``, pays it from the agent's wallet within policy, signing
with the wallet's key server-side. The agent never holds a key or a secret.

1. The URL is checked before anything else (``invalid_url``; private and
   loopback networks are refused unless ``[wallets] broker_allow`` permits
   them), and fetched through :class:`~tollway.wallets.ssrf.Guard` (pinned
   to the checked addresses, no redirects followed, size-capped).
2. A 402 with x402 requirements: the broker picks an offer it can pay (an
   ``exact`` EIP-3009 offer in an asset of ``[wallets] broker_assets``),
   converts its amount to micro-USD, and asks the wallet for an
   authorization (payee: the offer's ``payTo``; the agent's category and
   idempotency key). Declined: the agent gets the decline (402, with its
   reason); waiting for a human: 202, and the same call with the same
   idempotency key goes on once approved.
3. Approved: it signs the payment, retries the request with it, and
   captures the authorization if the resource answered below 400 with a
   successful receipt; otherwise it voids it (nothing is spent).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

from eth_account import Account

from tollway.core.config import Settings
from tollway.core.errors import invalid
from tollway.wallets.authorize import Authorizer, Decision
from tollway.wallets.ssrf import Fetched, Guard
from tollway.wallets.store import Wallets
from tollway.x402 import client
from tollway.x402.client import Offer

_TEXT = ("text/", "application/json", "application/xml", "application/javascript", "+json", "+xml")


@dataclass(frozen=True, slots=True)
class Asset:
    network: str  # eip155:N
    asset: str
    decimals: int


def assets(settings: Settings) -> list[Asset]:
    """What the broker pays with: ``[wallets] broker_assets``, else this tollway's own x402 asset."""
    configured = settings.wallets.broker_assets
    if configured:
        return [Asset(a.network, a.asset.lower(), a.decimals) for a in configured]
    x = settings.x402
    return [Asset(x.network, x.asset.lower(), x.asset_decimals)]


def micros(atomic: int, decimals: int) -> int:
    """An asset amount in micro-USD (a USD stablecoin), rounded up: a wallet
    is never charged less than it pays out."""
    if decimals >= 6:
        scale: int = 10 ** (decimals - 6)
        return -(-atomic // scale)
    up: int = 10 ** (6 - decimals)
    return atomic * up


class Broker:
    def __init__(self, settings: Settings, wallets: Wallets, authorizer: Authorizer) -> None:
        cfg = settings.wallets
        self.wallets = wallets
        self.authorizer = authorizer
        self.assets = assets(settings)
        self.guard = Guard(cfg.broker_allow)
        self.timeout_s = cfg.broker_timeout_seconds
        self.max_bytes = cfg.broker_max_bytes

    async def aclose(self) -> None:
        await self.guard.aclose()

    def _asset(self, o: Offer) -> Asset | None:
        for a in self.assets:
            if a.asset == o.asset.lower() and (o.network == a.network or f"eip155:{o.chain_id}" == a.network):
                return a
        return None

    async def fetch(
        self,
        presented: str,
        *,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        category: str = "api_access",
        idempotency_key: str | None = None,
        max_amount: int | None = None,
    ) -> dict[str, Any]:
        _, wallet = await self.wallets.verify(presented)
        self.guard.check_url(url)  # a bad URL is refused before anything is fetched or held
        if max_amount is not None and (
            isinstance(max_amount, bool) or not isinstance(max_amount, int) or max_amount <= 0
        ):
            raise invalid(
                "invalid_amount", "max_amount must be a positive integer of micro-USD", "max_amount"
            )
        kw: dict[str, Any] = {
            "headers": headers,
            "body": body,
            "timeout_s": self.timeout_s,
            "max_bytes": self.max_bytes,
            "secrets": [presented],
        }
        first = await self.guard.fetch(method, url, **kw)
        req = client.required(first.status, first.headers, first.body)
        if req is None:
            return _answer(first, None)

        def payable(o: Offer) -> bool:
            a = self._asset(o)
            return a is not None and (max_amount is None or micros(o.amount, a.decimals) <= max_amount)

        offer = client.pick(req.offers, allowed=payable)
        asset = self._asset(offer)
        assert asset is not None
        amount = micros(offer.amount, asset.decimals)
        key = (
            idempotency_key or f"broker:{method.upper()}:{url}:{offer.pay_to}:{offer.amount}:{time.time_ns()}"
        )
        d = await self.authorizer.authorize(
            presented,
            amount=amount,
            payee=offer.pay_to,
            category=category,
            idempotency_key=key,
            memo=f"x402 {method.upper()} {url}"[:500],
        )
        if d.status == "declined":
            raise d.refusal()
        if d.status == "pending_approval":
            return {"object": "broker_response", "status": 202, "authorization": d.to_dict(), "payment": None}
        if d.status != "approved":
            raise d.not_open()
        try:
            key_bytes = await self.wallets.signing_key(wallet.id)
            payment = client.sign(offer, Account.from_key(key_bytes), int(time.time()))
            paid = await self.guard.fetch(
                method,
                url,
                **{
                    **kw,
                    "headers": {**(headers or {}), payment.header: payment.value},
                    "secrets": [presented, payment.value],
                },
            )
            receipt = client.receipt(paid.headers)
        except BaseException:
            await self.authorizer.void(d.id, actor="broker")
            raise
        ok = paid.status < 400 and receipt is not None and bool(receipt.get("success"))
        if ok:
            done: Decision = await self.authorizer.capture(d.id, actor="broker")
        else:
            done = await self.authorizer.void(d.id, actor="broker")
        return _answer(
            paid,
            {
                "authorization_id": done.id,
                "status": "paid" if ok else "not_paid",
                "amount": done.captured,
                "asset_amount": str(offer.amount),
                "network": offer.network,
                "asset": offer.asset,
                "pay_to": offer.pay_to,
                "payer": wallet.evm_address,
                "receipt": receipt,
            },
        )


def _answer(r: Fetched, payment: dict[str, Any] | None) -> dict[str, Any]:
    ctype = r.headers.get("content-type", "")
    out: dict[str, Any] = {
        "object": "broker_response",
        "status": r.status,
        "headers": {k.lower(): v for k, v in r.headers.items()},
        "payment": payment,
    }
    if any(t in ctype for t in _TEXT) or not r.body:
        try:
            out["body"] = r.body.decode()
            return out
        except UnicodeDecodeError:
            pass
    out["body_base64"] = base64.b64encode(r.body).decode()
    return out
