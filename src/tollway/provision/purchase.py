"""Every purchase is one wallet authorization: category ``domains``, ``dns``
or ``hosting``, payee the provider's name (so the wallet's per-provider cap
applies), captured when the provider did the work and voided when it did
not. A refusal, a bad request or a failed deploy therefore costs nothing."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tollway.core.errors import invalid
from tollway.wallets.authorize import Authorizer, Decision

T = TypeVar("T")


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


def idempotency(key: object, *parts: object) -> str:
    if key is None:
        return ":".join(["prov", *(str(p) for p in parts), str(time.time_ns())])
    if not isinstance(key, str) or not 1 <= len(key) <= 200:
        raise invalid(
            "invalid_idempotency_key", "idempotency_key is a string of 1-200 characters", "idempotency_key"
        )
    return key


class Purchases:
    def __init__(self, authorizer: Authorizer, payee: str) -> None:
        self.authorizer = authorizer
        self.payee = payee

    async def buy(
        self,
        presented: str,
        *,
        amount: int,
        category: str,
        key: str,
        memo: str,
        work: Callable[[Decision], Awaitable[T]],
        replay: Callable[[Decision], Awaitable[T]],
    ) -> T:
        """Hold ``amount``, run ``work``, capture; void if ``work`` raises.
        A retry of a purchase already made (same key) returns ``replay``'s answer."""
        d = await self.authorizer.authorize(
            presented,
            amount=amount,
            payee=self.payee,
            category=category,
            idempotency_key=key,
            memo=memo[:500],
        )
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
        except BaseException:
            await self.authorizer.void(d.id, actor="provision")
            raise
        await self.authorizer.capture(d.id, actor="provision")
        await self.authorizer.ledger.riders_committed()  # the record says captured before we answer
        return out
