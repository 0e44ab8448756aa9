"""Stop sequences in generated text: held back only while they could still match."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from tollway.inference.backends.llama_cpp import TextAssembler


def feed_all(stops: list[str], pieces: list[bytes]) -> tuple[str, bool]:
    t = TextAssembler(stops)
    out = ""
    for p in pieces:
        text, stopped = t.feed(p)
        out += text
        if stopped:
            return out, True
    return out + t.flush(), False


def test_text_that_cannot_start_a_stop_goes_out_at_once() -> None:
    t = TextAssembler(["<|im_end|>"])
    assert t.feed(b"Hello") == ("Hello", False)  # nothing held back: first token out at once
    assert t.feed(b" <|im") == (" ", False)  # this tail could become the stop
    assert t.feed(b"_end|>tail") == ("", True)


def test_a_partial_stop_that_does_not_complete_is_released() -> None:
    t = TextAssembler(["STOP"])
    assert t.feed(b"ST") == ("", False)
    assert t.feed(b"ay") == ("STay", False)


def test_utf8_split_across_tokens() -> None:
    snow = "☃".encode()
    t = TextAssembler([])
    assert t.feed(snow[:1]) == ("", False)
    assert t.feed(snow[1:]) == ("☃", False)


@given(
    text=st.text(alphabet="ab<|>", max_size=30),
    stop=st.text(alphabet="ab<|>", min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 30), max_size=8),
)
def test_output_is_the_text_up_to_the_first_stop_however_it_is_split(
    text: str, stop: str, cuts: list[int]
) -> None:
    data = text.encode()
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    out, stopped = feed_all([stop], pieces)
    i = text.find(stop)
    assert (out, stopped) == ((text[:i], True) if i >= 0 else (text, False))
