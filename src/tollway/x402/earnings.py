"""Earnings: a payment for an agent-owned route credits the agent's wallet.

A rule an agent made (``tollway.x402.owned``) carries a :class:`Credit`: the
wallet, its ledger account, the rule and the operator's take rate. Its
settlement is **one linked chain** (see ``ledger.md``):

1. the gross amount, payer → the wallet's account, with a usage event of
   meter ``x402_earnings`` (``rule_id``, ``host``, ``path``, ``wallet_id``,
   and the settlement's own metadata), keyed by the authorization as every
   settlement is, so it happens once across processes;
2. the operator's fee, ``gross * take_rate_bps // 10_000``, the wallet's
   account → ``sys_fees``, described ``"x402 fee …"``.

Both stand or neither does; the wallet's own transfers show gross in and fee
out, so its profit and loss is read from its account alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.errors import TollwayError
from tollway.core.schema import ledger_transfers as T
from tollway.ledger import Ledger
from tollway.ledger.ops import CreateTransfer, Usage

METER = "x402_earnings"
FEE_ACCOUNT = "sys_fees"
GROSS_PREFIX = "x402 earnings"
FEE_PREFIX = "x402 fee"
BPS = 10_000


@dataclass(frozen=True, slots=True)
class Credit:
    """Where an agent-owned route's payments go."""

    wallet_id: str
    account_id: str  # the wallet's ledger account
    rule_id: str
    host: str
    take_rate_bps: int
    path: str = ""  # the request's canonical path, set per request


def fee_of(gross: int, take_rate_bps: int) -> int:
    """The operator's fee: a whole number of units, rounded down."""
    return gross * take_rate_bps // BPS


def settlement_chain(
    source: str,
    gross: int,
    key: str,
    description: str,
    usage_meta: dict[str, Any],
    credit: Credit,
) -> list[CreateTransfer]:
    """The settlement of a payment on an agent-owned rule: gross in, fee out."""
    meta = {
        **usage_meta,
        "rule_id": credit.rule_id,
        "host": credit.host,
        "path": credit.path,
        "wallet_id": credit.wallet_id,
    }
    ops = [
        CreateTransfer(
            source,
            credit.account_id,
            gross,
            description=f"{GROSS_PREFIX} {description}"[:500],
            idempotency_key=key,
            usage=Usage(METER, 1, None, meta, amount=gross),
        )
    ]
    fee = fee_of(gross, credit.take_rate_bps)
    if fee:
        ops.append(
            CreateTransfer(
                credit.account_id,
                FEE_ACCOUNT,
                fee,
                description=f"{FEE_PREFIX} {credit.take_rate_bps} bps on {credit.rule_id} ({description})"[
                    :500
                ],
                idempotency_key=f"{key}:fee"[:255],
            )
        )
    return ops


def month_start_us(now_us: int) -> int:
    """The start of ``now_us``'s calendar month, UTC."""
    now = datetime.fromtimestamp(now_us / 1_000_000, UTC)
    return int(datetime(now.year, now.month, 1, tzinfo=UTC).timestamp()) * 1_000_000


async def earnings(engine: AsyncEngine, account_id: str, since_us: int | None = None) -> dict[str, int]:
    """A wallet account's x402 earnings: gross credited, fees paid, net."""
    gross_q = select(func.coalesce(func.sum(T.c.amount), 0)).where(
        T.c.credit_account_id == account_id, T.c.description.startswith(GROSS_PREFIX)
    )
    fee_q = select(func.coalesce(func.sum(T.c.amount), 0)).where(
        and_(
            T.c.debit_account_id == account_id,
            T.c.credit_account_id == FEE_ACCOUNT,
            T.c.description.startswith(FEE_PREFIX),
        )
    )
    if since_us is not None:
        gross_q = gross_q.where(T.c.created_at_us >= since_us)
        fee_q = fee_q.where(T.c.created_at_us >= since_us)
    async with engine.connect() as conn:
        gross = int((await conn.execute(gross_q)).scalar_one())
        fees = int((await conn.execute(fee_q)).scalar_one())
    return {"gross": gross, "fees": fees, "net": gross - fees}


async def book_chain(ledger: Ledger, ops: list[CreateTransfer]) -> None:
    """Commit a settlement chain; raise the first refusal (the cause, not
    ``linked_event_failed``), as a single transfer would."""
    results = await ledger.chain(ops)
    refused = [r for r in results if isinstance(r, TollwayError)]
    if refused:
        raise next((r for r in refused if r.code != "linked_event_failed"), refused[0])
