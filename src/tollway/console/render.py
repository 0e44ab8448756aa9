"""Server-rendered pages: Jinja2 templates (autoescaped), a few filters."""

from __future__ import annotations

import datetime as dt
import functools
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import HTMLResponse

from tollway.console.sessions import Viewer
from tollway.core.money import format_usd

if TYPE_CHECKING:
    from jinja2 import Environment


@functools.cache
def templates() -> Environment:
    """The templates, loaded on the first page (Jinja2 is imported then, not at start-up)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("tollway.console", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["usd"] = lambda v: format_usd(int(v or 0))
    env.filters["when"] = _when
    env.filters["pct"] = lambda v: f"{100 * float(v):.1f}%"
    env.filters["num"] = lambda v: f"{int(v or 0):,}"
    env.filters["score"] = lambda v: "—" if v is None else f"{float(v):.2f}"  # an eval average, 1..5
    env.filters["delta"] = lambda v: "—" if v is None else f"{float(v):+.2f}"  # B - A
    return env


def _when(us: int | None) -> str:
    if not us:
        return ""
    return dt.datetime.fromtimestamp(us / 1_000_000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


NAV_OPERATOR = [
    ("overview", "Overview"),
    ("customers", "Customers"),
    ("requests", "Requests"),
    ("gateway", "Gateway & models"),
    ("x402", "x402"),
    ("wallets", "Wallets"),
    ("agents", "Agents"),
    ("deployments", "Deployments & domains"),
    ("ledger", "Ledger"),
]
NAV_CUSTOMER = [("me", "My account")]


def page(request: Request, template: str, v: Viewer, active: str, **ctx: Any) -> HTMLResponse:
    console = request.app.state.console
    html = (
        templates()
        .get_template(template)
        .render(
            viewer=v,
            nav=NAV_OPERATOR if v.operator else NAV_CUSTOMER,
            active=active,
            live_ms=int(console.cfg.live_seconds * 1000),
            **ctx,
        )
    )
    return HTMLResponse(html, headers=NO_STORE)


NO_STORE = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    # No inline script: the pages' data rides in <script type="application/json">.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline';"
    " script-src 'self'; frame-ancestors 'none'; form-action 'self'",
}
