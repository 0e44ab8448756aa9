"""The one path a paid request is matched by and forwarded with.

A rule must price exactly the path the origin receives. Origins disagree on
how they read a path (``..`` and ``%2e%2e`` resolved or not, ``%2F`` decoded
to ``/`` or not, ``\\`` taken for ``/``, ``;params`` stripped, case folded,
``%25`` decoded twice), so the paywall reads the raw path once, into its
canonical form, matches the rules against that, and forwards that same
string, byte for byte:

- percent-escapes of unreserved characters (``A-Z a-z 0-9 - . _ ~``) are
  decoded, other escapes kept with upper-case hex, and bytes that may not
  appear in a path (spaces, non-ASCII, ``"``, …) are percent-encoded;
- dot segments are resolved (RFC 3986 §5.2.4), ``%2e`` included, and never
  climb above ``/``;
- empty segments (``//``) collapse into one ``/``;
- case is kept, but rules match it case-insensitively, so ``/SHOP/premium``
  pays what ``/shop/premium`` pays, whatever the origin does with case.

A path with a character origins read in different ways (``%2F``, ``%5C``,
``\\``, ``;``, ``%25``, or a ``%`` that starts no escape) is refused with
``400 invalid_path`` when a rule matches it under either reading: as written,
or with those read as ``/`` (and ``;params`` dropped, ``%25`` as ``%``). A
path no rule matches either way is not the paywall's: it goes to tollway's
own routes unchanged.
"""

from __future__ import annotations

import re

from tollway.core.errors import invalid

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Kept as written: unreserved, sub-delims, ":" and "@" (RFC 3986 pchar), and "/".
_KEEP = _UNRESERVED | frozenset(b"!$&'()*+,=:@/")
_HEX = frozenset(b"0123456789ABCDEFabcdef")
_SLASHES = (0x2F, 0x5C)  # "/" and "\" written as escapes
_PLAIN = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,=:@/]*")  # needs no pass when also free of // and /.


def refused() -> Exception:
    return invalid(
        "invalid_path",
        "the path of a paid route may not contain an encoded slash (%2F, %5C), a backslash, "
        "a ';' parameter, an encoded '%' or a bad escape: origins read these in different ways",
        "path",
    )


def canonical(raw: bytes) -> tuple[str, str | None]:
    """``raw`` (a request target's path, as sent) → (its canonical form, and
    when the path has an ambiguous character, its lenient reading; else None)."""
    if raw[:1] == b"/" and _PLAIN.fullmatch(raw) and b"//" not in raw and b"/." not in raw:
        return raw.decode("ascii"), None  # already canonical (most requests): no pass needed
    strict, ambiguous = _read(raw, lenient=False)
    if not ambiguous:
        return resolve(strict.decode("ascii")), None
    lenient = raw
    for _ in range(8):  # decode again while a reading changes (%252e → %2e → .)
        again, _ = _read(lenient, lenient=True)
        if again == lenient:
            break
        lenient = again
    return resolve(strict.decode("ascii")), resolve(lenient.decode("ascii"))


def _read(raw: bytes, *, lenient: bool) -> tuple[bytes, bool]:
    """One pass over ``raw``: (the path with escapes normalized, whether it
    has an ambiguous character). ``lenient`` reads those the loosest way an
    origin might: escaped and back slashes as ``/``, ``;params`` dropped,
    ``%25`` as ``%``."""
    out = bytearray()
    ambiguous = False
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        i += 1
        if b == 0x25:  # "%"
            if i + 1 < n and raw[i] in _HEX and raw[i + 1] in _HEX:
                v = int(raw[i : i + 2], 16)
                i += 2
                if v in _UNRESERVED:
                    out.append(v)
                elif v in _SLASHES or v == 0x25:
                    ambiguous = True
                    out += (b"/" if v in _SLASHES else b"%") if lenient else b"%%%02X" % v
                else:
                    out += b"%%%02X" % v
            else:  # a "%" that starts no escape
                ambiguous = True
                out += b"%" if lenient else b"%25"
        elif b == 0x5C:  # "\"
            ambiguous = True
            out += b"/" if lenient else b"%5C"
        elif b == 0x3B:  # ";"
            ambiguous = True
            if lenient:
                while i < n and raw[i] != 0x2F:  # a ;param runs to the segment's end
                    i += 1
            else:
                out.append(b)
        elif b in _KEEP:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out), ambiguous


def resolve(path: str) -> str:
    """Remove dot segments (RFC 3986 §5.2.4) and empty segments; the result
    starts with ``/``, and ends with one when the input's last segment was a
    directory (``/a/b/``, ``/a/b/.``, ``/a/b/..``)."""
    out: list[str] = []
    parts = path.split("/")
    for seg in parts:
        if seg == "..":
            if out:
                out.pop()
        elif seg and seg != ".":
            out.append(seg)
    last = parts[-1] if parts else ""
    trailing = bool(out) and (last in ("", ".", "..") and len(parts) > 1)
    return "/" + "/".join(out) + ("/" if trailing else "")
