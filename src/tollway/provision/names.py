"""Domain names: RFC 1035 labels (letters, digits, hyphens; at most 63
octets a label, 253 a name) after IDNA (UTS #46) mapping, so ``Bücher.example``
is stored and compared as ``xn--bcher-kva.example``."""

from __future__ import annotations

import re

import idna

from tollway.core.errors import invalid

_LDH = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_UNDERSCORE = re.compile(r"^_[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$")  # _dmarc, _acme-challenge


def to_ascii(name: object, param: str = "name", *, service_labels: bool = False) -> str:
    """``name`` as a lowercase A-label name without the trailing dot, or ``invalid_name``.

    ``service_labels`` allows leading-underscore labels (``_dmarc``) as DNS
    record names may have, never in a domain to register."""
    if not isinstance(name, str) or not name.strip():
        raise invalid("invalid_name", "a name is a non-empty string", param)
    text = name.strip().rstrip(".")
    if text == "@":
        raise invalid("invalid_name", "'@' stands for the zone itself: use the zone's name", param)
    labels: list[str] = []
    for raw in text.split("."):
        if service_labels and raw.startswith("_"):
            label = raw.lower()
            if not _UNDERSCORE.match(label):
                raise invalid("invalid_name", f"label {raw!r} is not a valid service label", param)
            labels.append(label)
            continue
        labels.append(_label(raw, param))
    out = ".".join(labels)
    if len(out) > 253:
        raise invalid("invalid_name", f"a name is at most 253 octets, not {len(out)}", param)
    return out


def _label(raw: str, param: str) -> str:
    if not raw:
        raise invalid("invalid_name", "empty label (two dots in a row?)", param)
    try:
        if raw.isascii():
            label = raw.lower()
            if label.startswith("xn--"):
                idna.decode(label)  # a Punycode label must decode to a valid U-label
        else:
            label = idna.encode(raw, uts46=True).decode()
    except idna.IDNAError as e:
        raise invalid("invalid_name", f"label {raw!r} is not valid IDNA: {e}", param) from None
    if len(label) > 63:
        raise invalid("invalid_name", f"label {raw!r} is longer than 63 octets", param)
    if not _LDH.match(label):
        raise invalid(
            "invalid_name",
            f"label {raw!r} must be letters, digits and hyphens, not starting or ending with a hyphen",
            param,
        )
    if label[2:4] == "--" and not label.startswith("xn--"):
        raise invalid("invalid_name", f"label {raw!r} has '--' in positions 3-4 (reserved)", param)
    return label


def to_unicode(name: str) -> str:
    """The name for display (U-labels); a name that does not decode is shown as is."""
    try:
        return ".".join(idna.decode(p) if p.startswith("xn--") else p for p in name.split("."))
    except idna.IDNAError:
        return name


def registrable(name: object, tlds: set[str], param: str = "domain") -> tuple[str, str]:
    """A domain to register: exactly one label under a TLD of the price list.
    Returns (A-label name, tld)."""
    n = to_ascii(name, param)
    parts = n.split(".")
    if len(parts) != 2:
        raise invalid(
            "invalid_name", f"{n!r}: register a second-level name (label.tld), e.g. example.com", param
        )
    if parts[1] not in tlds:
        raise invalid(
            "unsupported_tld", f".{parts[1]} is not sold here; TLDs: {', '.join(sorted(tlds))}", param
        )
    return n, parts[1]


def within(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)
