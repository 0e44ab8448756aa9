"""One payment, one execution: an authorization is claimed before its request
is forwarded.

The paywall verifies a payment, then forwards the request, then settles. Without
a claim, the same payment header sent N times at once passes N verifications
(nothing is settled yet) and runs the origin N times for one settlement. So
between verifying and forwarding, the paywall claims the authorization: a row
in ``x402_claims`` keyed by the authorization (network, asset, payer, nonce),
inserted only if no live claim holds it. The database's primary key makes the
claim atomic across every process sharing it (SQLite or PostgreSQL).

- A claim carries a lease (``lease_s``): a process that dies while the origin
  works leaves a claim that expires, after which the payment can be used again.
- If the request is not settled (the origin failed, answered >= 400, or the
  client went away first), the claim is released, fenced by its token, so the
  client can retry with the same payment.
- Once settled (or once the origin ran and the settlement failed), the claim
  is spent: it never expires, so the authorization never runs the origin again.
"""

from __future__ import annotations

import asyncio
import functools
import re
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.ids import new_id
from tollway.core.storage import writer
from tollway.ledger import Ledger
from tollway.ledger.riders import Statement
from tollway.x402 import wire
from tollway.x402.wire import PaymentInvalid

_INT64 = 2**63 - 1
PAYMENT_IN_USE = "payment_in_use"  # reason code: another request is using this authorization now
LEASE_S = 900  # how long a claim holds without its process (origin answer + settlement fit well within)

_UPSERT = (
    " ON CONFLICT (key) DO UPDATE SET token = excluded.token, lease_until_us = excluded.lease_until_us,"
    " created_us = excluded.created_us, payer = excluded.payer, amount = excluded.amount"
    " WHERE x402_claims.lease_until_us IS NOT NULL AND x402_claims.lease_until_us < :now"
)
_CLAIM = (
    "INSERT INTO x402_claims (key, token, lease_until_us, created_us, payer, amount)"
    " VALUES (:key, :token, :lease, :now, :payer, :amount)" + _UPSERT
)
# The same, only while the payer's live claims and this one fit in what it can spend.
_CLAIM_WITHIN = (
    "INSERT INTO x402_claims (key, token, lease_until_us, created_us, payer, amount)"
    " SELECT CAST(:key AS VARCHAR(250)), CAST(:token AS VARCHAR(64)), CAST(:lease AS BIGINT),"
    " CAST(:now AS BIGINT), CAST(:payer AS VARCHAR(64)), CAST(:amount AS BIGINT)"
    " WHERE CAST(:amount AS BIGINT) <= CAST(:spendable AS BIGINT) - (SELECT COALESCE(SUM(amount), 0)"
    " FROM x402_claims"
    " WHERE payer = CAST(:payer AS VARCHAR(64)) AND lease_until_us >= CAST(:now AS BIGINT)"
    " AND key <> CAST(:key AS VARCHAR(250)))" + _UPSERT
)
_RELEASE = "DELETE FROM x402_claims WHERE key = :key AND token = :token AND lease_until_us IS NOT NULL"
_SPEND = "UPDATE x402_claims SET lease_until_us = NULL WHERE key = :key AND token = :token"


class Claims:
    def __init__(self, engine: AsyncEngine, ledger: Ledger, clock: Clock, lease_s: int = LEASE_S) -> None:
        self.engine = engine
        self.ledger = ledger
        self.clock = clock
        self.lease_s = lease_s
        self._aside: bool | None = None  # whether the ledger writes for us (SQLite); None: not known yet
        self._queue: list[
            tuple[Statement[tuple[Any, ...]], list[tuple[Any, ...]], asyncio.Future[int | None]]
        ] = []
        self._writing: asyncio.Future[None] | None = None

    async def claim(self, key: str, payer: str, amount: int = 0, spendable: int | None = None) -> str:
        """Claim the authorization ``key`` for ``amount`` of ``payer``'s balance;
        returns the claim's token. With ``spendable`` (the payer's balance, where
        nothing else holds it), the claim is taken only while the payer's live
        claims and this one fit in it: N payments signed against one balance,
        sent at once, run the origin only as often as the balance can pay.
        Raises ``PaymentInvalid``: ``payment_in_use`` while another request holds
        it, ``invalid_exact_evm_nonce_already_used`` once it was spent,
        ``insufficient_funds`` when the payer's other payments in flight leave
        too little."""
        token = new_id("claim")
        now = self.clock.now_us()
        lease = now + self.lease_s * 1_000_000
        payer = payer.lower()
        if spendable is None:
            taken = await self._write(
                _CLAIM, key=key, token=token, lease=lease, now=now, payer=payer, amount=0
            )
        elif not 0 <= amount <= _INT64 or spendable < amount:
            raise PaymentInvalid(wire.INSUFFICIENT_FUNDS, "the payer's balance is too low", payer)
        else:
            params = {"payer": payer, "amount": amount, "spendable": min(spendable, _INT64)}
            taken = await self._write(_CLAIM_WITHIN, key=key, token=token, lease=lease, now=now, **params)
        if taken:
            return token
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT lease_until_us FROM x402_claims WHERE key = :key"), {"key": key}
                )
            ).first()
        if row is not None and row[0] is None:
            raise PaymentInvalid(wire.NONCE_USED, "this authorization was already used", payer)
        if row is None or row[0] < now:  # nothing holds this payment: the payer's others do
            raise PaymentInvalid(
                wire.INSUFFICIENT_FUNDS, "the payer's payments in flight leave too little for this one", payer
            )
        raise PaymentInvalid(PAYMENT_IN_USE, "another request is using this payment right now", payer)

    async def release(self, key: str, token: str) -> None:
        """Give the authorization back (nothing was settled): it may be used again."""
        await self._write(_RELEASE, key=key, token=token)

    async def spend(self, key: str, token: str) -> None:
        """The origin ran for this authorization: it is never claimed again. The
        row rides with the next ledger batch (no commit of its own): if it were
        lost, the claim would only expire, and the settled authorization is
        refused by the facilitator's own nonce check from then on."""
        if not self.ledger.ride(*_qmark(_SPEND, key=key, token=token)):
            await self._write(_SPEND, key=key, token=token)

    async def _write(self, sql: str, **params: Any) -> int:
        """Rows changed. On SQLite through the ledger's writer (the database
        keeps one writer), grouped: the claims and releases of requests that
        arrive while one group is being written go together in the next, one
        transaction and one commit, each statement in the order it came (so a
        payer's second claim sees its first); elsewhere through the engine. A
        claim need not survive a power cut, only a crash of this process (the
        other processes' view): lost with the machine, it frees a payment that
        was never settled, and a settled one is refused by the facilitator's
        nonce check. So its commit does not wait for the disk."""
        if self._aside is not False:
            fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            self._queue.append((*_qmark(sql, **params), fut))
            if self._writing is None or self._writing.done():
                self._writing = asyncio.ensure_future(self._write_queued())
            n = await fut
            if n is not None:
                return n
        async with writer(self.engine).begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(text("SET LOCAL synchronous_commit = off"))
                if "payer" in params:  # one payer's claims one at a time: their sum is read, then added to
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(hashtext(:payer))"), {"payer": params["payer"]}
                    )
            return int((await conn.execute(text(sql), params)).rowcount)

    async def _write_queued(self) -> None:
        """Write what is queued, group after group, until nothing is (a task of
        its own: a caller that goes away stops waiting, not the write)."""
        while self._queue:
            group, self._queue = self._queue, []
            try:
                done: list[int] | list[None] | None = await self.ledger.write_aside_each(
                    [(stmt, rows) for stmt, rows, _ in group], lazy=True
                )
            except Exception:  # one statement failed the group: each alone, its own outcome
                for stmt, rows, fut in group:
                    try:
                        n = await self.ledger.write_aside(stmt, rows, lazy=True)
                    except Exception as e:
                        if not fut.done():
                            fut.set_exception(e)
                    else:
                        if not fut.done():
                            fut.set_result(n)
                continue
            self._aside = done is not None
            for (_, _, fut), n in zip(group, done or [None] * len(group), strict=True):
                if not fut.done():
                    fut.set_result(n)


def _qmark(sql: str, **params: Any) -> tuple[Statement[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """``:name`` placeholders → ``?`` and the one row of values, in order."""
    return _statement(sql), [tuple(params[k] for k in _names(sql))]


@functools.cache
def _statement(sql: str) -> Statement[tuple[Any, ...]]:
    """The claims' statements as the ledger's writer runs them (their rows
    carry the column types: they may ride on PostgreSQL too)."""
    return Statement(re.sub(r":(\w+)", "?", sql), postgres=True)


@functools.cache
def _names(sql: str) -> tuple[str, ...]:
    return tuple(re.findall(r":(\w+)", sql))
