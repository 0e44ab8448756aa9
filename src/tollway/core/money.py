"""Money is an ``int`` of micro-USD (6 decimals, USDC's atomic unit). Never a float."""

from __future__ import annotations

import re

from tollway.core.errors import invalid

MICRO = 1_000_000
_DOLLARS = re.compile(r"^\$?(?P<int>\d{1,13})(?:\.(?P<frac>\d{1,6}))?$")
MAX_AMOUNT = 2**63 - 1


def parse_amount(value: object, param: str = "amount") -> int:
    """Parse an amount into micro-USD.

    Accepts a positive ``int`` (micro-USD), a digit string (micro-USD), or a
    dollar string ``"$0.001"`` / ``"$5"``.  Floats, booleans, zero and negative
    values are refused with ``invalid_amount``: money never passes through a float.
    """
    return check_amount(_parse(value, param), param)


def parse_price(value: object, param: str = "price") -> int:
    """Like :func:`parse_amount`, but zero (``"$0"``, ``0``) is allowed: a price may be free."""
    amount = _parse(value, param)
    return 0 if amount == 0 else check_amount(amount, param)


def _parse(value: object, param: str) -> int:
    if isinstance(value, bool) or isinstance(value, float):
        raise invalid("invalid_amount", f"{param} must be an integer of micro-USD, not {value!r}", param)
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            amount = int(text)
        else:
            m = _DOLLARS.match(text)
            if m is None or not text.startswith("$"):
                raise invalid(
                    "invalid_amount",
                    f"{param} must be micro-USD digits or dollars like '$0.001', not {value!r}",
                    param,
                )
            frac = (m.group("frac") or "").ljust(6, "0")
            amount = int(m.group("int")) * MICRO + int(frac)
    else:
        raise invalid("invalid_amount", f"{param} must be an integer of micro-USD", param)
    return amount


def check_amount(amount: int, param: str = "amount") -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise invalid("invalid_amount", f"{param} must be an integer of micro-USD", param)
    if amount <= 0:
        raise invalid("invalid_amount", f"{param} must be positive, got {amount}", param)
    if amount > MAX_AMOUNT:
        raise invalid("invalid_amount", f"{param} is too large", param)
    return amount


def price_micros(mneurons: int, micros_per_1000_neurons: int) -> int:
    """Cost of ``mneurons`` milli-neurons, rounded up to the micro-USD."""
    return -(-mneurons * micros_per_1000_neurons // 1_000_000)


def format_usd(micros: int) -> str:
    """``1234567`` → ``"$1.234567"``; exact, no float."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICRO)
    return f"{sign}${whole}.{frac:06d}"
