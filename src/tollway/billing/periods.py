"""Monthly billing periods from an anchor, as Stripe counts them: the anchor's
day of the month, clamped to the month's last day (an anchor on the 31st
renews on 28/29 February, then on 31 March)."""

from __future__ import annotations

import calendar
import datetime as dt

_US = 1_000_000


def to_dt(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / _US, dt.UTC)


def to_us(d: dt.datetime) -> int:
    return (calendar.timegm(d.utctimetuple())) * _US + d.microsecond


def add_months(anchor_us: int, n: int) -> int:
    a = to_dt(anchor_us)
    y, m = divmod(a.year * 12 + (a.month - 1) + n, 12)
    day = min(a.day, calendar.monthrange(y, m + 1)[1])
    return to_us(a.replace(year=y, month=m + 1, day=day))


def period_at(anchor_us: int, now_us: int) -> tuple[int, int]:
    """The monthly period holding ``now_us``: (start, end), end exclusive."""
    a, n = to_dt(anchor_us), to_dt(now_us)
    k = (n.year - a.year) * 12 + (n.month - a.month)
    start = add_months(anchor_us, k)
    if start > now_us:
        k -= 1
    elif add_months(anchor_us, k + 1) <= now_us:
        k += 1
    return add_months(anchor_us, k), add_months(anchor_us, k + 1)


# With no subscription: calendar months (anchored at the epoch, 1 January 1970).
CALENDAR = 0


def day_name(us: int) -> str:
    return to_dt(us).strftime("%Y%m%d")
