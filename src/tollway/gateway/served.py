"""What the gateway hands an API shape, and what happens when a call ends.

:class:`Served` is one answer, from the model or the cache: the whole text, or
the events of a stream (rendered inside :meth:`Served.guard`, with
:meth:`Served.charged` awaited before anything reports the charge).
:class:`Ending` does the same four things however a call ends: it logs the
row, books the tokens against the rate limits, stores (or gives up) the cache
entry, and hands the result to any followers waiting on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tollway.core.errors import TollwayError
from tollway.gateway.cache import Entry as CacheEntry
from tollway.inference.backends.base import Delta, Finish
from tollway.inference.call import ChatCall, Metered

if TYPE_CHECKING:
    from tollway.gateway.face import Face
    from tollway.gateway.gate import Gateway, Pass

Lead = asyncio.Future[CacheEntry | None]  # a cache leader's promise to its followers
Events = AsyncIterator[Delta | Finish]


class Served:
    """One chat answer for a shape to render. ``headers`` lack the charge for a
    stream that has not run yet; a whole answer's are completed by ``metered``."""

    __slots__ = ("_end", "charged", "events", "headers", "metered", "model", "text", "tool_calls")

    def __init__(
        self,
        model: str,
        headers: dict[str, str],
        *,
        text: str = "",
        metered: Metered | None = None,
        events: Events | None = None,
        end: Ending | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None:
        self.model, self.headers, self.text, self.metered = model, headers, text, metered
        self.tool_calls = tool_calls  # a whole answer's calls (OpenAI's message.tool_calls)
        self.events, self._end = events, end
        # The stream's metering, once its charge is durable (acknowledge = "durable").
        self.charged: Callable[[], Awaitable[Metered | None]] = self._known if end is None else end.charged

    async def _known(self) -> Metered | None:
        return self.metered

    def guard(self, gen: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The rendered stream, with the call's end run when it ends, however it ends."""
        return gen if self._end is None else self._end.guard(gen)


def replayed(hit: CacheEntry) -> Events:
    async def events() -> Events:
        for piece in hit.pieces:
            yield Delta(piece)
        yield Finish(hit.finish_reason, hit.prompt_tokens, hit.completion_tokens)

    return events()


class Ending:
    """What happens when a call ends, however it ends: log it, book its tokens
    against the rate limits, and (as the cache leader) store or give up its entry."""

    __slots__ = ("call", "ck", "ended", "face", "gw", "lead", "p", "pieces", "tool_calls")

    def __init__(
        self, gw: Gateway, face: Face, p: Pass, call: ChatCall, ck: str | None, lead: Lead | None
    ) -> None:
        self.gw, self.face, self.p, self.call, self.ck, self.lead = gw, face, p, call, ck, lead
        self.pieces: list[str] = []
        self.tool_calls: list[dict[str, Any]] | None = None
        self.ended = False

    async def track(self, events: Events) -> Events:
        async for ev in events:
            if isinstance(ev, Delta):
                self.pieces.append(ev.text)
            elif ev.tool_calls:
                self.tool_calls = ev.tool_calls
            yield ev

    async def charged(self) -> Metered | None:
        await self.gw.acknowledged(self.face, self.call)
        return self.call.metered

    async def guard(self, gen: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        err: BaseException | None = None
        try:
            async for chunk in gen:
                yield chunk
        except BaseException as e:
            err = e
            raise
        finally:
            await self.done(err)
            await self.gw.joined(self.face, self.call)

    async def done(self, err: BaseException | None) -> None:
        if self.ended:
            return
        self.ended = True
        gw, e, m, call = self.gw, self.p.entry, self.call.metered, self.call
        e.attempts, e.deployment = call.attempts, call.provider
        if m is not None:
            e.input_tokens, e.output_tokens, e.mneurons, e.cost = (
                m.input_tokens,
                m.output_tokens,
                m.mneurons,
                m.charged,
            )
            e.ttft_ms = None if m.ttft_ms is None else round(m.ttft_ms)
            await gw.book_tokens(self.p, m.input_tokens + m.output_tokens)
        if isinstance(err, TollwayError):
            e.status, e.error_code = err.status, err.code
        elif err is not None or (m is not None and m.finish_reason == "cancelled"):
            e.status, e.error_code = 499, "client_closed_request"
        gw.log.record(e)
        if self.ck is None or self.lead is None:
            return
        if e.status == 200 and m is not None and not self.tool_calls:  # the cache replays text only
            entry = CacheEntry(self.pieces, m.input_tokens, m.output_tokens, m.finish_reason, m.deployment)
            await gw.cache.put(self.ck, entry, self.p.cache.ttl_s)
            gw.cache.finish(self.ck, self.lead, entry)
            await gw.cache.release_remote(self.ck)
        else:
            await gw.cache.unlead(self.ck, self.lead)

    async def collect_unless_gone(self, receive: Callable[[], Awaitable[Any]]) -> tuple[str, Metered]:
        """Collect a whole generation, but stop (charging only what was produced)
        if the client disconnects first: Starlette does not cancel handlers
        itself, so a watcher cancels this task. The generation runs here, in
        the request's own task; the watcher is the one task a call adds. It
        cannot cancel anything after the generation: it is cancelled as soon
        as the generation ends, before this task awaits anything else."""
        task = asyncio.current_task()
        assert task is not None

        async def watch() -> None:
            while True:
                if (await receive())["type"] == "http.disconnect":
                    task.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            return await self._collect()
        finally:
            watcher.cancel()

    async def _collect(self) -> tuple[str, Metered]:
        call = self.call
        async for _ in self.track(call.events(stream=False)):
            pass
        assert call.metered is not None
        return "".join(self.pieces), call.metered
