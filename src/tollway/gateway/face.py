"""The face the gateway calls: what a model face (inference) offers one call.

The gateway owns the policies around a call (limits, cache, budgets, the
downgrade, the request log); the face owns the call: its models, their
pricing, and the charge for what was used. A call's settle is started by the
face and joined by the gateway (:meth:`Call.committed` or its ``settling``
future), before anything reports the charge.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tollway.inference.backends.base import ChatParams
    from tollway.inference.call import Caller, ChatCall, Embedding
    from tollway.inference.config import ModelConfig


class Call(Protocol):
    """A call whose charge may still be committing."""

    settling: asyncio.Future[Any] | None  # the settle's commit, while it runs (None: uncharged)


class Face(Protocol):
    linger: bool  # [ledger] acknowledge = "fast": a settle may commit after its response

    def model(self, name: str, task: str | None = None) -> ModelConfig: ...

    async def start_chat(
        self, caller: Caller, cfg: ModelConfig, params: ChatParams, requested_max: int | None
    ) -> ChatCall: ...

    async def start_embed(self, caller: Caller, cfg: ModelConfig, texts: list[str]) -> Embedding: ...

    async def charge_flat(self, caller: Caller, amount: int, meter: str, description: str) -> int: ...
