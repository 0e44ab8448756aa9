"""Money parsing and formatting: exact, no floats."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.core.errors import TollwayError
from tollway.core.money import MAX_AMOUNT, format_usd, parse_amount


@pytest.mark.parametrize(
    ("text", "micros"),
    [("$0.001", 1_000), ("$5", 5_000_000), ("$1.5", 1_500_000), ("$0.000001", 1), ("42", 42), (7, 7)],
)
def test_parse(text: object, micros: int) -> None:
    assert parse_amount(text) == micros


@pytest.mark.parametrize(
    "bad", [0, -1, 1.5, True, None, "", "$", "$0", "$0.0000001", "1.5", "$-1", "abc", MAX_AMOUNT + 1, []]
)
def test_refused(bad: object) -> None:
    with pytest.raises(TollwayError) as e:
        parse_amount(bad)
    assert e.value.code == "invalid_amount"


@given(st.integers(min_value=1, max_value=10**18))
def test_format_then_parse_round_trips(micros: int) -> None:
    assert parse_amount(format_usd(micros)) == micros


def test_format_negative() -> None:
    assert format_usd(-1_500_000) == "-$1.500000"


def test_parse_price_allows_free_but_refuses_garbage() -> None:
    from tollway.core.money import parse_price

    assert parse_price("$0") == parse_price(0) == parse_price("$0.00") == 0
    assert parse_price("$0.001") == 1000
    for bad in ("$", ".", "free", -1, 1.5):
        with pytest.raises(TollwayError):
            parse_price(bad)
