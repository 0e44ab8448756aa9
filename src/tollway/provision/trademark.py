# ruff: noqa: RUF001, RUF002  (the lookalike letters are the point)
"""The trademark guard: every label of a domain to buy is checked against a
list of marks (a shipped starter list plus the operator's own) before any
money is held.

A label is normalized first: IDNA decoded (``xn--`` labels), read through the
Unicode TR39 confusables (the data shipped in the ``confusable_homoglyphs``
package, no download at run time: each lookalike of an ASCII letter becomes
that letter, as in TR39's skeleton), case folded, accents dropped, ``rn`` read
also as ``m``, digits that stand in for letters read as letters (``0`` → o,
``1`` → l or i, ``3`` → e, ``4`` → a, ``5`` → s, ``7`` → t, ``8`` → b) and
hyphens dropped. It then matches a mark:

- ``exact``: the same letters;
- ``similar``: within an edit distance that grows with the mark's length
  (marks of up to 4 letters must match exactly, 5-7 letters allow 1 edit,
  longer ones 2);
- ``brand_plus_generic``: the mark (or a near miss of it) with only generic
  words or numbers around it, such as ``apple-support-ai``, ``paypallogin``,
  ``chatgpt-pro`` or ``microsoft365-billing``. A mark inside an ordinary word
  is not matched: ``pineapple``, ``snapple-fan``, ``amazonian-plants``.
"""

from __future__ import annotations

import functools
import itertools
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

import idna

# Readings TR39 does not give as ASCII letters but a reader does (a sharp s, Greek mu and
# omega, Cyrillic pe); every other lookalike comes from the TR39 data (``_tr39``).
_EXTRA = {"ß": "ss", "μ": "u", "ω": "w", "п": "n", "ԛ": "q"}
_LEET = {"0": "o", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "2": "z", "6": "g"}
_ONE = ("l", "i")  # "1" reads as either
_MAX_VARIANTS = 16

GENERIC = frozenset(
    """support help helpdesk login signin signon logon secure security account accounts verify
    verification update billing pay payment payments wallet bank banking app apps ai online official
    service services team store shop mail email id auth portal cloud web site www my get go hq inc
    corp co group global customer care desk recovery reset unlock claim bonus gift promo deals sale
    free offer token crypto nft dao airdrop connect sync download install api dev labs net
    pro plus premium prime vip chat bot gpt assistant refund refunds invoice invoices order orders
    tracking delivery shipping rewards member members membership renew renewal subscription
    status alert alerts notice""".split()
)


@dataclass(frozen=True, slots=True)
class Match:
    mark: str
    reason: str  # exact | similar | brand_plus_generic
    label: str  # the label as given
    normalized: str

    def message(self) -> str:
        how = {
            "exact": "is the mark",
            "similar": "is confusingly similar to the mark",
            "brand_plus_generic": "combines the mark with generic words",
        }[self.reason]
        return f"label {self.label!r} (read as {self.normalized!r}) {how} {self.mark!r}"


def _plain(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", s) if not unicodedata.combining(c))


@functools.cache
def _tr39() -> dict[str, str]:
    """Each non-ASCII character that Unicode TR39's confusables (the data shipped in
    ``confusable_homoglyphs``) give an ASCII-letter reading for: its prototype, accents
    dropped (``ø`` → ``o``, Armenian ``օ`` → ``o``); a lowercase letter with none reads
    as the lowercase of its capital's reading (Cyrillic ``к``: ``К`` → ``K`` → ``k``)."""
    from confusable_homoglyphs.confusables import confusables_data as data

    def ascii_reading(ch: str) -> str | None:
        readings = [_plain(g["c"]) for g in data.get(ch, ())]
        letters = [r for r in readings if r.isascii() and r.isalpha()]
        if not letters:
            return None
        lower = [r for r in letters if r.islower()]
        return min(lower or letters, key=len).lower()

    out: dict[str, str] = {}
    for ch in data:
        if len(ch) == 1 and not ch.isascii() and (r := ascii_reading(ch)) is not None:
            out[ch] = r
    for ch in data:
        if len(ch) == 1 and ch not in out and not ch.isascii() and ch.islower():
            cap = ch.upper()
            if len(cap) == 1 and (r := ascii_reading(cap)) is not None:
                out[ch] = r
    for ch, r in _EXTRA.items():
        out.setdefault(ch, r)
    return out


def _fold(text: str) -> str:
    """The TR39 skeleton, read as ASCII: NFD, each character to its prototype
    (before case folding: TR39 maps capitals too), case folded, NFD, accents dropped."""
    table = _tr39()
    mapped = "".join(table.get(ch, ch) for ch in unicodedata.normalize("NFKD", text))
    return "".join(table.get(ch, ch) for ch in _plain(mapped.casefold()))


def normalize(label: str) -> set[str]:
    """Every reading of a label (ones as l and as i; ``rn`` as is and as ``m``), letters only."""
    text = _fold(_decoded(label))
    text = "".join(_LEET.get(c, c) for c in text if c.isalnum())
    ones = text.count("1")
    readings: set[str] = set()
    for combo in itertools.islice(itertools.product(_ONE, repeat=ones), _MAX_VARIANTS):
        t = text
        for letter in combo:
            t = t.replace("1", letter, 1)
        readings.add(t)
        readings.add(t.replace("rn", "m").replace("vv", "w"))
    return readings


def distance(a: str, b: str, limit: int) -> int:
    """Damerau-Levenshtein (optimal string alignment) distance, stopping early past ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = ca != cb
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return min(prev[-1], limit + 1)


def threshold(mark: str) -> int:
    """Edits allowed: short marks must match exactly."""
    n = len(mark)
    return 0 if n <= 4 else 1 if n <= 7 else 2


@functools.cache
def starter_marks() -> tuple[str, ...]:
    text = (resources.files("tollway.provision") / "marks.txt").read_text()
    return tuple(dict.fromkeys(m.strip() for m in text.splitlines() if m.strip() and not m.startswith("#")))


class Guard:
    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.extra = tuple(extra)

    @functools.cached_property
    def marks(self) -> dict[str, str]:
        """Normalized -> as written (built on first check: ~100 ms kept out of start-up)."""
        marks: dict[str, str] = {}
        for m in (*starter_marks(), *self.extra):
            for n in sorted(normalize(m)):
                if len(n) >= 2:
                    marks.setdefault(n, m)
                    break
        return marks

    def check(self, domain: str) -> Match | None:
        """The first mark a label of ``domain`` (A-label form) matches, or None. The TLD is not checked."""
        for label in domain.split(".")[:-1]:
            m = self.check_label(label)
            if m is not None:
                return m
        return None

    def check_label(self, label: str) -> Match | None:
        words = [w for w in label.split("-") if w]
        readings = normalize(label)
        for norm in sorted(readings):
            for mark, written in self.marks.items():
                lim = threshold(mark)
                if norm == mark:
                    return Match(written, "exact", label, norm)
                if lim and distance(norm, mark, lim) <= lim:
                    return Match(written, "similar", label, norm)
                if len(mark) >= 3 and mark in norm and _generic_rest(norm, mark):
                    return Match(written, "brand_plus_generic", label, norm)
        bare = _letters(label)  # numbers beside a mark are generic: microsoft365-billing
        if bare not in readings:
            for mark, written in self.marks.items():
                if len(mark) >= 3 and mark in bare and _generic_rest(bare, mark):
                    return Match(written, "brand_plus_generic", label, bare)
        if len(words) > 1:  # a near miss of the mark beside generic words: app1e-support
            for i, w in enumerate(words):
                rest = [x for j, x in enumerate(words) if j != i]
                if not all(any(r in GENERIC for r in normalize(x)) for x in rest):
                    continue
                for wn in sorted(normalize(w) | {_letters(w)}):
                    for mark, written in self.marks.items():
                        lim = threshold(mark)
                        if wn == mark or (lim and distance(wn, mark, lim) <= lim):
                            return Match(written, "brand_plus_generic", label, "-".join([wn, *rest]))
        return None


def _letters(label: str) -> str:
    """The label's letters only, digits dropped (read without leetspeak)."""
    return "".join(c for c in _fold(_decoded(label)) if c.isalpha())


def _decoded(label: str) -> str:
    """An ``xn--`` label as its Unicode (as given when it is not valid punycode)."""
    if label.lower().startswith("xn--"):
        try:
            return str(idna.decode(label.lower()))
        except idna.IDNAError:
            pass
    return label


def _generic_rest(norm: str, mark: str) -> bool:
    """``norm`` is ``mark`` with only generic words (or nothing) before and after it."""
    start = norm.find(mark)
    while start != -1:
        before, after = norm[:start], norm[start + len(mark) :]
        if _generic_words(before) and _generic_words(after):
            return True
        start = norm.find(mark, start + 1)
    return False


@functools.cache
def _generic_words(s: str) -> bool:
    """``s`` splits into generic words (or is empty)."""
    if not s:
        return True
    return any(s[:k] in GENERIC and _generic_words(s[k:]) for k in range(2, min(len(s), 12) + 1))
