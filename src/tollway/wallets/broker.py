"""The broker: an agent names a request; tollway makes it, and if the answer
is an x402 ``402``, pays it from the agent's wallet within policy, signing
with the wallet's key server-side. The agent never holds a key or a secret.

1. The token is checked first: a revoked, expired or frozen token gets 403
   and nothing is fetched. Then the URL (``invalid_url``; private and
   loopback networks are refused unless ``[wallets] broker_allow`` permits
   them), fetched through :class:`~tollway.wallets.ssrf.Guard` (pinned to the
   checked addresses, no redirects followed, size-capped).
2. A 402 with x402 requirements: the broker picks an offer it can pay (an
   ``exact`` EIP-3009 offer in an asset of ``[wallets] broker_assets``),
   converts its amount to micro-USD, and asks the wallet for an
   authorization. The payee is the URL's host (normalized), and the offer's
   ``payTo`` is a second payee: blocked and allowed payees, provider caps and
   the per-payee velocity limit apply to both. The hold lasts as long as the
   signature can be spent (below) plus a minute. Declined: the agent gets the
   decline (402, with its reason); waiting for a human: 202, and the same call
   with the same idempotency key goes on once approved.
3. Approved: it signs the payment, valid for at most ``[wallets]
   broker_signature_seconds`` whatever the server asks, with a nonce derived
   from the authorization (:mod:`~tollway.wallets.signatures`: one
   authorization, one payment), and retries the request with it.
4. The outcome follows the money. Settled through tollway's own devnet
   token, the settlement itself captured the hold; otherwise the broker
   voids it, which cancels the signature (a devnet payment settles only by
   capturing its hold). Paid in another asset, the hold is captured when the
   server's receipt says it settled; when it does not, the hold stays until
   the signature expires (a hostile server may still settle it), and the
   sweep then voids it.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

from tollway.core.errors import TollwayError, conflict, invalid
from tollway.wallets.authorize import Authorizer, Decision, pay_to_memo
from tollway.wallets.config import BrokerSettings
from tollway.wallets.policy import normalize_payee
from tollway.wallets.signatures import HOLD_MARGIN_S, micros, nonce_for
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


def assets(settings: BrokerSettings) -> list[Asset]:
    """What the broker pays with: ``[wallets] broker_assets``, else this tollway's own x402 asset."""
    configured = settings.wallets.broker_assets
    if configured:
        return [Asset(a.network, a.asset.lower(), a.decimals) for a in configured]
    x = settings.x402
    return [Asset(x.network, x.asset.lower(), x.asset_decimals)]


class Broker:
    def __init__(self, settings: BrokerSettings, wallets: Wallets, authorizer: Authorizer) -> None:
        cfg = settings.wallets
        self.wallets = wallets
        self.authorizer = authorizer
        self.assets = assets(settings)
        self.guard = Guard(cfg.broker_allow)
        self.timeout_s = cfg.broker_timeout_seconds
        self.max_bytes = cfg.broker_max_bytes
        self.signature_s = cfg.broker_signature_seconds
        x = settings.x402
        # The asset whose every settlement is a capture of the wallet's hold here.
        self.ledger_asset = (
            Asset(x.network, x.asset.lower(), x.asset_decimals) if x.backend == "devnet" else None
        )

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
        _, wallet = await self.authorizer.live(presented)  # a dead token: 403, nothing fetched
        u = self.guard.check_url(url)  # a bad URL is refused before anything is fetched or held
        try:
            host = normalize_payee(u.raw_host or "")
        except ValueError as e:
            raise invalid("invalid_url", str(e), "url") from None
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
        timeout = offer.max_timeout_seconds or client.DEFAULT_TIMEOUT_V1_S
        validity = min(timeout, self.signature_s)
        key = (
            idempotency_key or f"broker:{method.upper()}:{url}:{offer.pay_to}:{offer.amount}:{time.time_ns()}"
        )
        d = await self.authorizer.authorize(
            presented,
            amount=amount,
            payee=host,
            category=category,
            idempotency_key=key,
            memo=pay_to_memo(f"x402 {method.upper()} {url}", offer.pay_to),
            hold_seconds=validity + HOLD_MARGIN_S,
        )
        if d.status == "declined":
            raise d.refusal()
        if d.status == "pending_approval":
            return {"object": "broker_response", "status": 202, "authorization": d.to_dict(), "payment": None}
        if d.status != "approved":
            raise d.not_open()
        now = int(time.time())
        valid_before = min(now + validity, d.expires_at_us // 1_000_000 - HOLD_MARGIN_S)
        if valid_before - 10 <= now:
            raise conflict("authorization_expired", f"authorization {d.id}'s hold is about to expire", None)
        try:
            await self.authorizer.live(presented)  # revoked or frozen while it was decided: sign nothing
            key_bytes = await self.wallets.signing_key(wallet.id)
            from eth_account import Account  # imported on first use: start-up stays fast

            account = Account.from_key(key_bytes)
            payment = client.sign(offer, account, now, nonce=nonce_for(d.id), valid_before=valid_before)
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
            await self._conclude(d, asset, False)
            raise
        ok = paid.status < 400 and receipt is not None and bool(receipt.get("success"))
        done = await self._conclude(d, asset, ok)
        status = {"captured": "paid", "approved": "held"}.get(done.status, "not_paid")
        return _answer(
            paid,
            {
                "authorization_id": done.id,
                "status": status,
                "amount": done.captured,
                "held": done.amount if done.status == "approved" else 0,
                "asset_amount": str(offer.amount),
                "network": offer.network,
                "asset": offer.asset,
                "pay_to": offer.pay_to,
                "payer": wallet.evm_address,
                "valid_before": payment.valid_before,
                "receipt": receipt,
            },
        )

    async def _conclude(self, d: Decision, asset: Asset, ok: bool) -> Decision:
        """What the paid retry leaves: captured if the payment settled; otherwise
        void if that cancels the signature (tollway's devnet), else held until
        the signature expires. Never void while the signature can still be spent."""
        d = await self.authorizer.get(d.id)
        if d.status != "approved":
            return d  # settled (captured by the settlement) or resolved meanwhile
        try:
            if asset == self.ledger_asset:
                return await self.authorizer.void(d.id, actor="broker")
            if ok:
                return await self.authorizer.capture(d.id, actor="broker")
        except TollwayError as e:
            if e.code not in ("authorization_not_open", "authorization_expired"):
                raise
            return await self.authorizer.get(d.id)
        return d


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
