"""The alert for frozen tokens: a best-effort webhook."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tollway.wallets")


def alerts(url: str) -> Callable[[dict[str, Any]], None] | None:
    """A best-effort webhook for frozen tokens (``[wallets] alert_webhook_url``)."""
    if not url:
        return None
    tasks: set[asyncio.Task[None]] = set()

    async def post(event: dict[str, Any]) -> None:
        import aiohttp

        try:
            async with (
                aiohttp.ClientSession() as s,
                s.post(url, json=event, timeout=aiohttp.ClientTimeout(10)) as r,
            ):
                if r.status >= 300:
                    log.warning("wallet alert webhook answered %s", r.status)
        except Exception as e:  # an alert must never break an authorization
            log.warning("wallet alert webhook failed: %s", e)

    def send(event: dict[str, Any]) -> None:
        t = asyncio.get_running_loop().create_task(post(event))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    return send
