"""Frozen tokens raise an alert (``token_frozen``) on the one alerts mechanism
(tollway.observe.alerts): delivered, signed and retried like every alert.
``[wallets] alert_webhook_url`` still works: it is one more webhook, for this
kind only (see docs/observability.md#alerts)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from tollway.observe.alerts import TOKEN_FROZEN, Alerts

log = logging.getLogger("tollway.wallets")


def alerts(store: Alerts) -> Callable[[dict[str, Any]], None]:
    """The velocity guard's ``on_freeze`` hook: the alert is raised in the background."""
    tasks: set[asyncio.Task[None]] = set()

    async def raise_(event: dict[str, Any]) -> None:
        try:
            token = str(event.get("token_id", ""))
            dedupe = f"{TOKEN_FROZEN}:{token}:{store.clock.now_us()}"
            await store.raise_alert(TOKEN_FROZEN, token, event, dedupe)
        except Exception as e:  # an alert must never break an authorization
            log.warning("the frozen-token alert was not raised: %s", e)

    def send(event: dict[str, Any]) -> None:
        t = asyncio.get_running_loop().create_task(raise_(event))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    return send
