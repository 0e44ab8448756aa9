"""``[console]``: the web console at ``/console`` (docs/console.md)."""

from __future__ import annotations

from pydantic import Field

from tollway.core.config import Section


class ConsoleConfig(Section):
    """The console's sessions, cookie and live updates."""

    enabled: bool = True  # serve /console (the /docs and /redoc assets are served either way)
    session_hours: float = Field(12.0, gt=0)  # a sign-in lasts this long
    cookie_secure: bool | None = None  # the cookie's Secure flag; unset: when served over https
    # a view refreshes the overview's hourly rollups when they are older than this
    refresh_seconds: float = Field(10.0, gt=0)
    # and they are refreshed this often whether anyone looks or not
    background_seconds: float = Field(300.0, gt=0)
    live_seconds: float = Field(5.0, gt=0)  # how often open pages poll for new figures
    signin_per_minute: int = Field(10, ge=1)  # sign-in attempts per client address per minute
