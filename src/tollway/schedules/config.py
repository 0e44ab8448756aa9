"""``[schedules]``: persisted timers."""

from __future__ import annotations

from pydantic import Field

from tollway.core.config import Section


class SchedulesConfig(Section):
    """Persisted timers (see tollway.schedules and docs/schedules.md)."""

    tick_seconds: float = Field(1.0, gt=0)  # how often due schedules are looked for
    lease_seconds: float = Field(60.0, gt=0)  # a run's claim, renewed while it runs; then run again
