"""Every purchase is one wallet authorization: category ``domains``, ``dns``
or ``hosting``, payee the provider's name (so the wallet's per-provider cap
applies), captured when the provider did the work and voided when it did
not. A refusal, a bad request or a failed deploy therefore costs nothing.

A purchase with a client's idempotency key runs under a claim of that key
(``claims.py``): concurrent calls with the key do the purchase once and all
get its answer; the key with another request is a 409."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tollway.core.errors import TollwayError, invalid
from tollway.core.ids import new_id
from tollway.provision.claims import Claims, Outcome
from tollway.wallets.authorize import Authorizer, Decision

T = TypeVar("T")


class DoneElsewhere(Exception):
    """Raised by a recurring charge's ``work`` that finds the work done by a
    concurrent call with the same key (another process: one key is one
    authorization everywhere). That call captures the authorization, so this
    one neither voids nor captures it: a void here would release the doer's
    hold under it, and the work would go unpaid."""


class Pending(Exception):
    """The purchase waits for a human's approval (the same call, with the
    same idempotency key, goes on once approved)."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.id)
        self.decision = decision

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "provision_pending",
            "status": "pending_approval",
            "authorization": self.decision.to_dict(),
        }


def idempotency(key: object) -> str | None:
    """The client's idempotency key (None: none given, every call is a new purchase)."""
    if key is None:
        return None
    if not isinstance(key, str) or not 1 <= len(key) <= 200:
        raise invalid(
            "invalid_idempotency_key", "idempotency_key is a string of 1-200 characters", "idempotency_key"
        )
    return key


class Purchases:
    def __init__(self, authorizer: Authorizer, payee: str, claims: Claims) -> None:
        self.authorizer = authorizer
        self.payee = payee
        self.claims = claims

    async def buy(
        self,
        presented: str,
        *,
        wallet_id: str,
        request: dict[str, Any],
        amount: int,
        category: str,
        key: str | None,
        memo: str,
        work: Callable[[Decision], Awaitable[dict[str, Any]]],
        replay: Callable[[Decision], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """Hold ``amount``, run ``work``, capture; void if ``work`` raises. With a
        ``key``, once per key and ``request`` (the canonical request: every field
        that shapes the purchase); a retry gets the first call's answer."""
        if key is None:
            return await self._buy(presented, amount, category, new_id("prov"), memo, work, replay)

        async def once() -> dict[str, Any]:
            try:
                return await self._buy(presented, amount, category, key, memo, work, replay)
            except Pending as p:
                raise Outcome("pending", p.to_dict(), p) from None

        return await self.claims.run(wallet_id, key, {**request, "category": category}, once)

    async def recurring(
        self,
        wallet_id: str,
        *,
        amount: int,
        category: str,
        key: str,
        memo: str,
        work: Callable[[Decision], Awaitable[None]],
    ) -> Decision:
        """A recurring charge the platform makes for the wallet (hosting, renewals):
        the same hold, ``work``, capture (void if ``work`` raises), under the wallet
        authorization's idempotency ``key`` (one decision per key, across
        processes). A refusal raises the decision's 402 (its reason code).
        Returns the decision as recorded (captured)."""
        d = await self.authorizer.recurring(
            wallet_id,
            amount=amount,
            payee=self.payee,
            category=category,
            idempotency_key=key,
            memo=memo[:500],
        )

        async def replay(_: Decision) -> None:
            return None

        await self._run(d, work, replay, "billing")
        return await self.authorizer.get(d.id)

    async def _buy(
        self,
        presented: str,
        amount: int,
        category: str,
        key: str,
        memo: str,
        work: Callable[[Decision], Awaitable[T]],
        replay: Callable[[Decision], Awaitable[T]],
    ) -> T:
        d = await self.authorizer.authorize(
            presented,
            amount=amount,
            payee=self.payee,
            category=category,
            idempotency_key=key,
            memo=memo[:500],
        )
        return await self._run(d, work, replay, "provision")

    async def _run(
        self,
        d: Decision,
        work: Callable[[Decision], Awaitable[T]],
        replay: Callable[[Decision], Awaitable[T]],
        actor: str,
    ) -> T:
        """The decision's outcome: a refusal (402), a wait for approval, the
        replay of a captured one, or ``work`` between the hold and its capture."""
        if d.status == "declined":
            raise d.refusal()
        if d.status == "pending_approval":
            raise Pending(d)
        if d.status == "captured":
            return await replay(d)
        if d.status != "approved":
            raise d.not_open()
        try:
            out = await work(d)
        except DoneElsewhere:
            raise
        except BaseException:
            try:
                await self.authorizer.void(d.id, actor=actor)
            except TollwayError as e:  # resolved by a concurrent call with the key
                if e.code != "authorization_not_open":
                    raise
            raise
        try:
            await self.authorizer.capture(d.id, actor=actor)
        except TollwayError as e:
            if e.code != "authorization_not_open" or not await self.authorizer.captured(d.id):
                raise  # else a concurrent call with the key captured it
        await self.authorizer.ledger.riders_committed()  # the record says captured before we answer
        return out
