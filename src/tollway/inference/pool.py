"""A fixed set of model instances, each serving one request at a time, with a
bounded queue in front: when it is full the caller gets 503 + Retry-After
at once, before any money is reserved."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

from tollway.core.errors import ErrorType, TollwayError

T = TypeVar("T")


class InstancePool(Generic[T]):
    def __init__(self, name: str, instances: list[T], queue_max: int) -> None:
        self.name = name
        self.size = len(instances)
        self.queue_max = queue_max
        self._free: asyncio.Queue[T] = asyncio.Queue()
        for i in instances:
            self._free.put_nowait(i)
        self._waiting = 0
        self._busy = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    def check_capacity(self) -> None:
        """Raise 503 now if a new request could not even join the queue."""
        if self._free.empty() and self._waiting >= self.queue_max:
            raise TollwayError(
                ErrorType.API,
                "model_overloaded",
                f"model {self.name!r} is busy: {self._busy} running, {self._waiting} queued",
                status=503,
                headers={"Retry-After": "1"},
            )

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[T]:
        self.check_capacity()
        self._waiting += 1
        try:
            inst = await self._free.get()
        finally:
            self._waiting -= 1
        self._busy += 1
        try:
            yield inst
        finally:
            self._busy -= 1
            self._free.put_nowait(inst)
