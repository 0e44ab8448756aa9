"""Settled x402 payments, as the ledger recorded them: each settlement is a
transfer from the payer to revenue with a usage event (meter ``x402``) that
names the payer, ``payTo``, network, asset, resource and transaction."""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.errors import TollwayError
from tollway.core.schema import usage_events as U
from tollway.ledger import Ledger
from tollway.ledger.ops import Usage
from tollway.x402 import wire
from tollway.x402.devnet import METER, REVENUE_ACCOUNT, authorization_key
from tollway.x402.earnings import Credit, book_chain, settlement_chain
from tollway.x402.exact_evm import Authorization
from tollway.x402.upto_evm import Permit
from tollway.x402.wire import PaymentInvalid

log = logging.getLogger("tollway.x402")


def _row(r: Any) -> dict[str, Any]:
    meta = json.loads(r.metadata or "{}")
    return {
        "id": r.id,
        "object": "x402.payment",
        "created_at_us": r.created_at_us,
        "amount": r.amount,
        "transfer_id": r.transfer_id,
        "payer": meta.get("payer"),
        "pay_to": meta.get("pay_to"),
        "network": meta.get("network"),
        "asset": meta.get("asset"),
        "resource": meta.get("resource"),
        "transaction": meta.get("transaction"),
        "x402_version": meta.get("x402_version"),
        "scheme": meta.get("scheme", "exact"),
        "max_amount": meta.get("max_amount"),
    }


async def payments(
    engine: AsyncEngine, *, limit: int = 50, before: str | None = None
) -> list[dict[str, Any]]:
    """Newest first; ``before`` is the last id of the previous page."""
    cond = U.c.meter == METER
    if before is not None:
        cond = and_(cond, U.c.id < before)
    q = select(U).where(cond).order_by(U.c.id.desc()).limit(limit)
    async with engine.connect() as conn:
        return [_row(r) for r in await conn.execute(q)]


async def revenue(engine: AsyncEngine, since_us: int | None = None) -> dict[str, Any]:
    """Totals of settled payments (micro-USD for a 6-decimal USD asset)."""
    cond = U.c.meter == METER
    if since_us is not None:
        cond = and_(cond, U.c.created_at_us >= since_us)
    q = select(func.count(), func.coalesce(func.sum(U.c.amount), 0)).where(cond)
    async with engine.connect() as conn:
        n, total = (await conn.execute(q)).one()
    return {"object": "x402.revenue", "payments": int(n), "amount": int(total), "since_us": since_us}


async def record_received(
    ledger: Ledger,
    inbound: str,
    network: str,
    asset: str,
    auth: Authorization | Permit,
    pay_to: str,
    tx: str,
    meta: dict[str, Any],
    credit: Credit | None = None,
    *,
    amount: int | None = None,
) -> None:
    """A payment settled outside the ledger (on chain, or by an external
    facilitator) into the ledger: ``inbound`` → revenue, keyed by the
    authorization, with its usage event. A second recording of the same
    authorization is ``nonce already used``. With ``credit`` (an agent-owned
    rule) it is booked as the wallet's earnings less the fee (``earnings.py``).
    ``amount``: what an upto permit settled (otherwise the authorization's value)."""
    value = auth.value if amount is None else amount
    try:
        await ledger.create_account("funding", id=inbound, name="x402 payments received outside the ledger")
    except TollwayError as e:
        if e.code != "account_exists":
            raise
    meta = {**meta, "transaction": tx, "payer": auth.payer, "pay_to": pay_to}
    key = authorization_key(network, asset, auth.payer, auth.nonce)
    try:
        if credit is not None:
            await book_chain(ledger, settlement_chain(inbound, value, key, f"{network} {tx}", meta, credit))
        else:
            await ledger.transfer(
                inbound,
                REVENUE_ACCOUNT,
                value,
                idempotency_key=key,
                description=f"x402 {network} {tx}",
                usage=Usage(METER, 1, None, meta, amount=value),
            )
    except TollwayError as e:
        if e.code == "idempotency_key_reused":
            raise PaymentInvalid(wire.NONCE_USED, "this authorization was already used", auth.payer) from None
        log.error("x402 settlement %s happened but was not recorded in the ledger: %s", tx, e)
        raise
