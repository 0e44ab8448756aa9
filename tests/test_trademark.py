# ruff: noqa: RUF001, RUF002, RUF003  (lookalike letters are what is tested)
"""The trademark guard: normalization (case, IDNA, homoglyphs, leetspeak,
hyphens), edit distance scaled to the mark's length, brand + generic words;
and properties that must hold for any mark and any disguise of it."""

from __future__ import annotations

import idna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.provision.trademark import GENERIC, Guard, _tr39, distance, normalize, starter_marks, threshold

guard = Guard(["acmecorp"])


@pytest.mark.parametrize(
    ("domain", "mark", "reason"),
    [
        ("apple-support-ai.com", "apple", "brand_plus_generic"),
        ("paypal-login.com", "paypal", "brand_plus_generic"),
        ("paypallogin.com", "paypal", "brand_plus_generic"),
        ("xn--pple-43d.com", "apple", "exact"),  # Cyrillic а
        (idna.encode("gооgle.com", uts46=True).decode(), "google", "exact"),  # Cyrillic о
        (idna.encode("αmazon.com", uts46=True).decode(), "amazon", "exact"),  # Greek α
        ("g00gle.com", "google", "exact"),
        ("netfl1x.com", "netflix", "exact"),
        ("rnicrosoft.com", "microsoft", "exact"),
        ("goggle.com", "google", "similar"),
        ("micr0s0ft-help.com", "microsoft", "brand_plus_generic"),
        ("acme-corp.com", "acmecorp", "exact"),  # the operator's own mark
        ("acmec0rp-login.com", "acmecorp", "brand_plus_generic"),
        # issue 18: TR39 confusables, and brand + generic words (numbers count as generic)
        (idna.encode("gօօgle.com", uts46=True).decode(), "google", "exact"),  # Armenian օ
        (idna.encode("кindle.com", uts46=True).decode(), "kindle", "exact"),  # Cyrillic к (of К)
        (idna.encode("nеtflіx.com", uts46=True).decode(), "netflix", "exact"),  # Cyrillic е, і
        (idna.encode("ɡіthub.com", uts46=True).decode(), "github", "exact"),  # Latin script ɡ
        (idna.encode("spøtify.com", uts46=True).decode(), "spotify", "exact"),  # ø reads o
        ("chatgpt-pro.app", "chatgpt", "brand_plus_generic"),
        ("microsoft365-billing.com", "microsoft", "brand_plus_generic"),
        ("microsoft365.com", "microsoft", "brand_plus_generic"),
        ("amazon-prime-refund.com", "amazon", "brand_plus_generic"),
        ("openaichat.com", "openai", "brand_plus_generic"),
        ("paypal-invoice.com", "paypal", "brand_plus_generic"),
        ("dhl-tracking.com", "dhl", "brand_plus_generic"),
        ("netflix-renewal.com", "netflix", "brand_plus_generic"),
    ],
)
def test_disguised_marks_are_caught(domain: str, mark: str, reason: str) -> None:
    m = guard.check(domain)
    assert m is not None and (m.mark, m.reason) == (mark, reason), m
    assert mark in m.message()


@pytest.mark.parametrize(
    "domain",
    [
        "my-shop.com", "bakery.com", "weather-bot.dev", "pineapple.com", "amazing.com", "hello-world.org",
        # a mark inside an ordinary word is not the mark (only generic words or numbers around it are)
        "grapefruit.com", "metaphysics.dev", "amazonian-plants.org", "snapple-fan.org",
        "pineapple-recipes.com", "applebee-farm.com", "bingo-night.com", "intelligent-design.org",
        "affordable-pro.com", "catering-pro.com", "attic-shop.com", "upstairs.com", "visionary.dev",
        "fordham-news.com", "appleseed-pro.com", "the-chatbot.dev", "mintchat.app", "solar-pro.com",
        "365-days.com", "web3-dev.com", "b2b-billing.com", "kraken-tales.org", "chatroom-pro.app",
        idna.encode("bücher-laden.com", uts46=True).decode(), idna.encode("café-olé.fr", uts46=True).decode(),
    ],
)  # fmt: skip
def test_ordinary_names_pass(domain: str) -> None:
    assert guard.check(domain) is None


def test_short_marks_need_an_exact_match() -> None:
    assert threshold("hbo") == 0 and threshold("tesla") == 1 and threshold("facebook") == 2
    assert Guard().check("hbo.com") is not None
    assert Guard().check("hbx.com") is None


def test_the_starter_list_is_a_real_list() -> None:
    marks = starter_marks()
    assert 150 <= len(marks) <= 250 and len(set(marks)) == len(marks)


_LEET = {"o": "0", "l": "1", "e": "3", "a": "4", "s": "5", "t": "7", "b": "8"}
_HOMO = {"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "i": "і"}
marks = st.sampled_from([m for m in starter_marks() if len(m) >= 3 and m.isalpha()])


@st.composite
def disguised(draw: st.DrawFn) -> tuple[str, str]:
    mark = draw(marks)
    out = []
    for ch in mark:
        how = draw(st.sampled_from(["same", "upper", "leet", "homoglyph"]))
        if how == "upper":
            out.append(ch.upper())
        elif how == "leet" and ch in _LEET:
            out.append(_LEET[ch])
        elif how == "homoglyph" and ch in _HOMO:
            out.append(_HOMO[ch])
        else:
            out.append(ch)
    label = "".join(out)
    if draw(st.booleans()) and len(label) > 2:
        cut = draw(st.integers(1, len(label) - 1))
        label = label[:cut] + "-" + label[cut:]
    if draw(st.booleans()):
        label = label + "-" + draw(st.sampled_from(sorted(GENERIC)))
    return mark, label


@settings(max_examples=300, deadline=None)
@given(disguised())
def test_any_disguise_of_a_mark_is_blocked(case: tuple[str, str]) -> None:
    mark, label = case
    domain = idna.encode(f"{label}.com", uts46=True).decode() if not label.isascii() else f"{label}.com"
    m = Guard().check(domain.lower())
    assert m is not None, (mark, label)


@settings(max_examples=300, deadline=None)
@given(st.text("abcdefghij", min_size=0, max_size=12), st.text("abcdefghij", min_size=0, max_size=12))
def test_distance_is_a_metric_within_its_limit(a: str, b: str) -> None:
    d = distance(a, b, 20)
    assert d == distance(b, a, 20)
    assert (d == 0) == (a == b)
    assert d <= max(len(a), len(b))
    assert distance(a, b, 1) <= 2  # past the limit it stops at limit + 1


@given(st.text(min_size=1, max_size=30))
def test_normalize_always_gives_letters_and_digits_only(label: str) -> None:
    for n in normalize(label):
        assert all(c.isalnum() for c in n)


def _idna_ok(ch: str) -> bool:
    """``ch`` stays itself in a domain name (UTS 46 maps some, e.g. ``ſ`` to ``s``)."""
    try:
        return bool(idna.decode(idna.encode(f"a{ch}a", uts46=True)) == f"a{ch}a")
    except idna.IDNAError:
        return False


# Every character TR39 reads as an ASCII letter that a domain may hold (IDNA 2008 + UTS 46).
_TR39 = sorted((ch, r) for ch, r in _tr39().items() if len(r) == 1 and ch.islower() and _idna_ok(ch))
_LOOKALIKES = {c: [ch for ch, r in _TR39 if r == c] for c in "abcdefghijklmnopqrstuvwxyz"}


def test_the_tr39_data_is_loaded_from_the_package() -> None:
    assert len(_TR39) >= 100  # far beyond the 53 letters of the old hand list
    assert {"օ", "о", "а", "ɑ", "ꮃ"} <= {ch for ch, _ in _tr39().items()}


@settings(max_examples=300, deadline=None)
@given(marks, st.data())
def test_any_tr39_lookalike_of_a_mark_is_blocked(mark: str, data: st.DataObject) -> None:
    label = "".join(
        data.draw(st.sampled_from(_LOOKALIKES[c])) if _LOOKALIKES.get(c) and data.draw(st.booleans()) else c
        for c in mark
    )
    domain = idna.encode(f"{label}.com", uts46=True).decode()
    assert Guard().check(domain) is not None, (mark, label)
