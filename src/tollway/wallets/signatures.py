"""Payments the broker signs, bound to the wallet authorization that holds
their money.

The EIP-3009 nonce of a broker-signed payment is derived from its wallet
authorization's id (:func:`nonce_for`), so the authorization is found from the
payment alone (:func:`authorization_of`), in any process, with no table of
its own; and signing again for the same authorization gives the same nonce,
of which at most one settlement exists.

On tollway's own ledger-backed token (``devnet``), a broker-signed payment
settles by capturing that authorization's hold (:class:`Signatures`): the
wallet's ledger account is the one balance, debited once, and the wallet's
limits (reserved with the hold) count it. A payment whose hold was voided
(the broker voided it when the resource failed, the token was revoked) or
expired can no longer settle: voiding is cancelling the signature.
"""

from __future__ import annotations

import hashlib

from tollway.core.errors import TollwayError
from tollway.wallets.authorize import Authorizer, Decision
from tollway.x402 import wire
from tollway.x402.exact_evm import Authorization
from tollway.x402.wire import PaymentInvalid

MARK = "7477b0c5"  # the first 4 bytes of every broker nonce
HOLD_MARGIN_S = 60  # a broker hold outlives its signature's validBefore by this much


def nonce_for(auth_id: str) -> str:
    """The EIP-3009 nonce (0x + 64 hex) of the payment signed for ``auth_id``."""
    prefix, _, digits = auth_id.partition("_")
    if prefix != "wauth" or len(digits) != 31:
        raise ValueError(f"{auth_id!r} is not a wallet authorization id")
    tail = hashlib.sha256(auth_id.encode()).hexdigest()[:24]
    return f"0x{MARK}{digits}0{tail}"


def authorization_of(nonce: str) -> str | None:
    """The wallet authorization a broker nonce was made for; None for any other nonce."""
    h = nonce.lower().removeprefix("0x")
    if len(h) != 64 or not h.startswith(MARK):
        return None
    auth_id = f"wauth_{h[8:39]}"
    return auth_id if nonce_for(auth_id) == "0x" + h else None


def micros(atomic: int, decimals: int) -> int:
    """An asset amount in micro-USD (a USD stablecoin), rounded up: a wallet
    is never charged less than it pays out."""
    if decimals >= 6:
        scale: int = 10 ** (decimals - 6)
        return -(-atomic // scale)
    up: int = 10 ** (6 - decimals)
    return atomic * up


class Signatures:
    """The devnet token's view of broker-signed payments (``Devnet.signatures``)."""

    def __init__(self, authorizer: Authorizer, decimals: int) -> None:
        self.authorizer = authorizer
        self.decimals = decimals

    async def find(self, auth: Authorization) -> Decision | None:
        """The authorization behind a payment the broker signed; None when it is not one."""
        auth_id = authorization_of(auth.nonce)
        if auth_id is None:
            return None
        try:
            d = await self.authorizer.get(auth_id)
            w = await self.authorizer.wallets.get(d.wallet_id)
        except TollwayError:
            return None
        return d if (w.evm_address or "").lower() == auth.payer.lower() else None

    async def covers(self, auth: Authorization) -> bool | None:
        """Whether the wallet's hold covers the payment; None when the broker did not sign it."""
        d = await self.find(auth)
        if d is None:
            return None
        return d.status in ("approved", "captured") and d.amount == micros(auth.value, self.decimals)

    async def capture(self, auth: Authorization) -> int | None:
        """Capture the hold behind a broker-signed payment and return the
        micro-USD taken (None: the broker did not sign it). A hold already
        captured is returned as is (the caller's settlement transfer, keyed by
        the nonce, then happens once). Raises ``PaymentInvalid`` when the hold
        is gone: voided, expired or declined."""
        d = await self.find(auth)
        if d is None:
            return None
        if d.amount != micros(auth.value, self.decimals):
            why = "the value is not what the wallet authorized"
            raise PaymentInvalid(wire.VALUE_MISMATCH, why, auth.payer)
        if d.status == "approved":
            try:
                d = await self.authorizer.capture(d.id, actor="x402_settle")
            except TollwayError as e:
                if e.code not in ("authorization_not_open", "authorization_expired"):
                    raise
                d = await self.authorizer.get(d.id)
        if d.status != "captured" or d.captured != d.amount:
            raise PaymentInvalid(
                wire.INSUFFICIENT_FUNDS,
                f"the wallet's hold for this payment is {d.status}: it can no longer be settled",
                auth.payer,
            )
        return d.captured
