"""Units shared with Stripe, exact (no floats).

Meter events carry **milli-neurons**: Stripe takes only whole-number values,
and milli-neurons are the unit tollway meters in (``usage_events.quantity`` of
meter ``neurons``), so nothing is rounded on the way.

A plan's rate is micro-USD per 1,000 neurons (``M``). Stripe prices are in
cents, with up to 12 decimal places in ``unit_amount_decimal``; one
milli-neuron costs ``M / 10**10`` cents, which needs at most 10 decimals, so
the metered price is the plan's rate exactly. (Example: $0.011 per 1,000
neurons is ``M = 11000``: ``0.0000011`` cents per milli-neuron.) Tollway's
ledger rounds each request's charge up to the micro-USD; Stripe prices the
period's sum and rounds the invoice line to the cent.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

MICROS_PER_CENT = 10_000


def decimal_str(d: Decimal) -> str:
    """A plain decimal string, without exponent or trailing zeros."""
    s = format(d, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s or "0"


def cents(micros: int) -> str:
    """A price in micro-USD as Stripe's ``unit_amount_decimal`` (cents)."""
    return decimal_str(Decimal(micros) / MICROS_PER_CENT)


def cents_per_mneuron(micros_per_1000_neurons: int) -> str:
    """The metered price of one milli-neuron, in cents (``unit_amount_decimal``)."""
    return decimal_str(Decimal(micros_per_1000_neurons) / 10**10)


def billable_mneurons(quantity: int, amount: int, metadata: dict[str, Any]) -> int:
    """The milli-neurons of one usage event that Stripe's metered price bills.

    A usage event whose metadata names ``overage`` (the micro-USD of it drawn
    from the plan's invoiced overage) bills that share of its neurons: all of
    them when the overage paid all of it, none when included neurons, credit
    or the prepaid balance did. Without it, all of the event's neurons."""
    overage = metadata.get("overage")
    if overage is None:
        return quantity
    if not isinstance(overage, int) or overage <= 0 or amount <= 0 or quantity <= 0:
        return 0
    if overage >= amount:
        return quantity
    return (2 * quantity * overage + amount) // (2 * amount)  # rounded half up
