"""x402 on the wire: base64 JSON headers, versions, and the reason codes.

Headers carry standard base64 (RFC 4648, ``+/`` with padding) of UTF-8 JSON;
the official SDK silently drops URL-safe characters, so never emit them.
v2: ``PAYMENT-REQUIRED`` (402), ``PAYMENT-SIGNATURE`` (request),
``PAYMENT-RESPONSE`` (receipt). v1: a JSON 402 body, ``X-PAYMENT``,
``X-PAYMENT-RESPONSE``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

PAYMENT_REQUIRED = "payment-required"
PAYMENT_SIGNATURE = "payment-signature"
PAYMENT_RESPONSE = "payment-response"
X_PAYMENT = "x-payment"
X_PAYMENT_RESPONSE = "x-payment-response"

# Reason codes: the spec's where it has one, the official SDK's otherwise.
INVALID_PAYLOAD = "invalid_payload"
INVALID_VERSION = "invalid_x402_version"
INVALID_REQUIREMENTS = "invalid_payment_requirements"
UNSUPPORTED_SCHEME = "unsupported_scheme"
INVALID_NETWORK = "invalid_network"
RECIPIENT_MISMATCH = "invalid_exact_evm_payload_recipient_mismatch"
VALUE_MISMATCH = "invalid_exact_evm_payload_authorization_value"
VALID_AFTER = "invalid_exact_evm_payload_authorization_valid_after"
VALID_BEFORE = "invalid_exact_evm_payload_authorization_valid_before"
BAD_SIGNATURE = "invalid_exact_evm_payload_signature"
NONCE_USED = "invalid_exact_evm_nonce_already_used"
INSUFFICIENT_FUNDS = "insufficient_funds"
TRANSACTION_FAILED = "transaction_failed"
SETTLEMENT_PENDING = "settlement_pending"
UNEXPECTED_VERIFY = "unexpected_verify_error"
UNEXPECTED_SETTLE = "unexpected_settle_error"


class PaymentInvalid(Exception):
    """A payment that fails a check: ``reason`` is the code the spec names."""

    def __init__(self, reason: str, message: str = "", payer: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason
        self.payer = payer


MAX_DEPTH = 64  # JSON nesting x402 reads (payloads are 4 levels deep)


class BadJSON(ValueError):
    """JSON x402 will not read: ``code`` is ``invalid_json`` or ``duplicate_parameter``."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def loads(raw: str | bytes) -> Any:
    """Strict JSON (RFC 8259): no ``NaN``/``Infinity``, no number that overflows
    to infinity, no key given twice in an object (parsers differ on which copy
    wins), at most ``MAX_DEPTH`` levels. The depth is measured before parsing:
    ``json`` recurses on the C stack, and where the interpreter's recursion
    limit has been raised, 100,000 ``[`` overflow it (a segfault, not a
    RecursionError)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if not _shallow(data):
        raise BadJSON("invalid_json", f"JSON nested more than {MAX_DEPTH} levels")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for k, _ in items:
            if k in seen:
                raise BadJSON("duplicate_parameter", f"{k!r} is given more than once", k)
            seen.add(k)
        return dict(items)

    def number(text: str) -> float:
        f = float(text)
        if math.isinf(f):
            raise BadJSON("invalid_json", f"the number {text[:20]}... is too large")
        return f

    def constant(name: str) -> Any:
        raise BadJSON("invalid_json", f"{name} is not JSON")

    try:
        return json.loads(data, object_pairs_hook=pairs, parse_float=number, parse_constant=constant)
    except BadJSON:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadJSON("invalid_json", "not valid JSON") from None


_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


def _shallow(data: bytes) -> bool:
    """Whether no array or object in ``data`` opens more than ``MAX_DEPTH``
    deep (brackets inside strings do not count). Cheap when there are few
    brackets; otherwise one regex pass over the structural characters."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return True
    depth, in_string, skip = 0, False, -1
    for m in _STRUCTURE.finditer(data):
        i = m.start()
        if i == skip:  # the character a backslash escapes
            continue
        c = data[i]
        if in_string:
            if c == 0x5C:
                skip = i + 1
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in b"[{":
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif c in b"]}":
            depth -= 1
    return True


def encode(obj: Any) -> str:
    """A header value: standard base64 of compact JSON."""
    return base64.b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode()


def decode(value: str) -> dict[str, Any]:
    """A header value back to its JSON object; garbage is ``invalid_payload``."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
        obj = loads(raw)
    except (binascii.Error, ValueError):  # BadJSON included: deep, NaN, duplicate keys
        raise PaymentInvalid(INVALID_PAYLOAD, "the payment header is not base64 JSON") from None
    if not isinstance(obj, dict):
        raise PaymentInvalid(INVALID_PAYLOAD, "the payment header is not a JSON object")
    return obj


def field(obj: Any, name: str, kind: type | tuple[type, ...], reason: str = INVALID_PAYLOAD) -> Any:
    """``obj[name]`` of the given type, or ``PaymentInvalid(reason)``."""
    v = obj.get(name) if isinstance(obj, dict) else None
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
        raise PaymentInvalid(reason, f"{name} is missing or malformed")
    return v


def uint(obj: Any, name: str, reason: str = INVALID_PAYLOAD) -> int:
    """A non-negative integer written as a decimal string (or a JSON integer)."""
    v = obj.get(name) if isinstance(obj, dict) else None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise PaymentInvalid(reason, f"{name} is missing or malformed")
    if isinstance(v, str) and not (v.isdigit() and v.isascii()):
        raise PaymentInvalid(reason, f"{name} must be a non-negative decimal integer")
    n = int(v)
    if n < 0 or n >= 1 << 256:
        raise PaymentInvalid(reason, f"{name} is out of range")
    return n


def settled(payer: str, transaction: str, network: str, amount: int) -> dict[str, Any]:
    """A successful ``SettleResponse``."""
    return {
        "success": True,
        "payer": payer,
        "transaction": transaction,
        "network": network,
        "amount": str(amount),
    }


def settle_failed(e: PaymentInvalid, network: str) -> dict[str, Any]:
    """A failed ``SettleResponse``: ``transaction`` and ``network`` are required even then."""
    out: dict[str, Any] = {"success": False, "errorReason": e.reason, "errorMessage": e.message}
    if e.payer is not None:
        out["payer"] = e.payer
    return {**out, "transaction": "", "network": network}
