"""The paywall in front of deployments: the ASGI app the edge serves a
connection with when its host has agents' rules (``provision/edge.py``).

Per request: the host's deployment (its worker's URL and its wallet), the
agent's rule that matches (only one of the wallet that owns the host now: a
host that changed hands or went away prices nothing), then the gateway's own
:class:`~tollway.x402.paywall.Paywall` (402, verify, claim, forward to the
worker, settle once) with a :class:`~tollway.x402.earnings.Credit`: the
payment is the wallet's earnings. A route no rule prices is relayed as it came.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.types import Receive, Scope, Send

from tollway.core.errors import ErrorType, TollwayError, not_found
from tollway.core.responses import error_response
from tollway.x402.earnings import Credit
from tollway.x402.owned import OwnedRule
from tollway.x402.paywall import Paywall

log = logging.getLogger("tollway.x402")
# host -> (the URL of the worker serving it, the wallet owning its deployment), or None
Resolve = Callable[[str], Awaitable[tuple[str, str] | None]]


def normal_host(value: str) -> str:
    """A Host header's name: lowercase, without port or trailing dot."""
    host = value.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


class Front:
    def __init__(self, paywall: Paywall, resolve: Resolve, take_rate_bps: int) -> None:
        self.paywall = paywall
        self.resolve = resolve
        self.take_rate_bps = take_rate_bps

    def paid(self, host: str) -> bool:
        """Whether any agent's rule names this host (the edge then serves it here)."""
        return normal_host(host) in self.paywall.hosted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        host = normal_host(next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), ""))
        try:
            target = await self._target(host)
            if target is None:
                raise not_found("deployment_not_found", f"no deployment answers for {host}", None)
            origin, wallet_id = target
            owned = self.paywall.match_hosted(scope, host, wallet_id)
        except TollwayError as e:
            await error_response(e)(scope, receive, send)
            return
        scope["x402_edge"] = True
        if owned is None:
            await self.paywall.proxy(scope, receive, send, origin)
            return
        rule = owned.rule.model_copy(update={"origin": origin})
        await self.paywall(scope, receive, send, rule, self.credit(owned, host, scope["x402_path"]))

    async def _target(self, host: str) -> tuple[str, str] | None:
        try:
            return await self.resolve(host)
        except TollwayError:
            raise
        except Exception as e:  # the worker would not start: the edge's own answer, never a 500
            log.warning("edge paywall: %s: %s", host, e)
            raise TollwayError(
                ErrorType.API, "deployment_unavailable", "the deployment did not answer", status=502
            ) from None

    def credit(self, owned: OwnedRule, host: str, path: str) -> Credit:
        return Credit(owned.wallet_id, owned.account_id, owned.id, host, self.take_rate_bps, path)
