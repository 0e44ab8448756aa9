"""Schedules: persisted timers (Durable Object alarms) that run registered
handlers at least once, with retries.

An owner string scopes them (``agent:support:sess_123``); a task names the
handler a process registered; the payload is JSON. See docs/schedules.md.
"""

from tollway.schedules.model import Schedule
from tollway.schedules.scheduler import Handler, Scheduler

__all__ = ["Handler", "Schedule", "Scheduler"]
