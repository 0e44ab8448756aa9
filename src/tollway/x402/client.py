"""The paying side of x402, for servers that pay on someone's behalf (the
wallet broker): read a 402, pick an offer, sign an EIP-3009 authorization with
a server-held key, and read the receipt. No network I/O here; the caller
fetches::

    required = client.required(status, headers, body)   # None: not an x402 402
    offer = client.pick(required.offers, allowed=...)  # or choose(): None when nothing fits
    payment = client.sign(offer, account, now_s)       # authorize offer.amount to offer.pay_to first
    ... refetch with {payment.header: payment.value} ...
    client.receipt(response_headers)                   # the settlement, or None

What is read, as the official SDK reads it: the v2 ``PAYMENT-REQUIRED`` header
(base64 JSON, ``x402Version`` 2, ``accepts``, ``resource``, ``extensions``)
first; otherwise a v1 JSON body (``x402Version`` 1, ``accepts``). A 402 that
is neither is not an x402 402 (``None``); one that claims to be x402 but is
not well formed is ``502 x402_malformed_402``.

What is paid: scheme ``exact`` with an EIP-3009 asset (no ``permit2``
``assetTransferMethod``), on an EVM chain (v2: CAIP-2 ``eip155:<id>``; v1: a
legacy chain name the facilitator knows, or ``eip155:<id>``), whose
``extra`` names the EIP-712 domain (``name`` and ``version``), and that the
caller's ``allowed`` accepts. The first such offer, in the server's order.

What is sent, byte for byte as the official SDKs build it: ``from`` the
account, ``to`` the ``payTo`` (EIP-55), ``value`` the amount, ``validAfter``
ten minutes before now (clock skew), ``validBefore`` now plus
``maxTimeoutSeconds``, a random 32-byte nonce, signed as EIP-712 typed data
over the asset's domain. v2 goes in ``PAYMENT-SIGNATURE`` as ``{x402Version:
2, payload, accepted, resource, extensions}``, where ``accepted`` is the
requirement exactly as the server sent it (a server may compare it for deep
equality) and ``resource``/``extensions`` are the 402's; v1 goes in
``X-PAYMENT`` as ``{x402Version: 1, scheme, network, payload}``. Both are
standard base64 of compact UTF-8 JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tollway.core.errors import ErrorType, TollwayError
from tollway.x402 import exact_evm, wire
from tollway.x402.exact_evm import to_checksum_address
from tollway.x402.facilitator import V1_NAMES

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

# The legacy v1 chain names this client pays on (the facilitator's list).
V1_CHAINS: dict[str, int] = {name: int(net.split(":")[1]) for net, name in V1_NAMES.items()}
# The official clients' validity window: validAfter this long before now ...
VALID_AFTER_SKEW_S = 600
# ... and validBefore maxTimeoutSeconds after now (these when a server gives none).
DEFAULT_TIMEOUT_V2_S = 3600
DEFAULT_TIMEOUT_V1_S = 600

MALFORMED = "x402_malformed_402"
MALFORMED_RECEIPT = "x402_malformed_receipt"
NO_PAYABLE_OFFER = "x402_no_payable_offer"


def malformed(message: str, code: str = MALFORMED) -> TollwayError:
    """The paid server's answer is not valid x402: a bad gateway."""
    return TollwayError(ErrorType.API, code, message, status=502)


@dataclass(frozen=True, slots=True, eq=False)
class Offer:
    """One of a 402's payment requirements (an entry of ``accepts``)."""

    version: int  # 1 or 2: the protocol the 402 spoke, and the one to pay with
    scheme: str
    network: str  # as the server wrote it: "eip155:84532" (v2) or "base-sepolia" (v1)
    asset: str
    amount: int  # atomic units (v2 ``amount``, v1 ``maxAmountRequired``)
    pay_to: str
    resource: str  # the URL being paid for
    max_timeout_seconds: int
    extra: dict[str, Any]
    raw: dict[str, Any]  # the requirement exactly as sent
    description: str = ""
    mime_type: str = ""
    # v2: the 402's ``resource`` object and ``extensions``, echoed in the payment.
    resource_info: dict[str, Any] | None = field(default=None, repr=False)
    extensions: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def chain_id(self) -> int | None:
        """The EVM chain id, or None for a network that is not EVM (or unknown)."""
        cid = exact_evm.chain_id(self.network)
        if cid is None and self.version == 1:
            cid = V1_CHAINS.get(self.network)
        return cid

    def unpayable(self) -> str | None:
        """Why this client cannot pay the offer at all (None: it can)."""
        if self.scheme != "exact":
            return f"scheme {self.scheme!r} is not supported (only exact)"
        if self.chain_id is None:
            return f"network {self.network!r} is not an EVM chain this client knows"
        if self.extra.get("assetTransferMethod", "eip3009") != "eip3009":
            return f"asset transfer method {self.extra['assetTransferMethod']!r} is not supported"
        if not exact_evm.is_address(self.asset) or not exact_evm.is_address(self.pay_to):
            return "asset and payTo must be 0x addresses"
        name, version = self.extra.get("name"), self.extra.get("version")
        if not isinstance(name, str) or not name or not isinstance(version, str) or not version:
            return "extra does not name the asset's EIP-712 domain (name and version)"
        if self.amount <= 0:
            return "the amount is zero"
        return None

    def describe(self) -> str:
        return f"{self.scheme} {self.amount} of {self.asset} on {self.network} to {self.pay_to}"


@dataclass(frozen=True, slots=True, eq=False)
class Required:
    """A 402's payment requirements."""

    version: int
    error: str  # the server's reason ("" when none): e.g. insufficient_funds after a payment
    resource: str
    offers: list[Offer]


@dataclass(frozen=True, slots=True)
class Payment:
    """A signed payment: send ``{header: value}`` with the retried request."""

    header: str  # "PAYMENT-SIGNATURE" (v2) or "X-PAYMENT" (v1)
    value: str
    payload: dict[str, Any]  # what ``value`` encodes
    payer: str
    pay_to: str
    amount: int
    nonce: str  # 0x + 64 hex: with the payer, what makes the authorization unique
    valid_after: int
    valid_before: int


# ------------------------------------------------------------------ reading


def _lower(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for k, v in items:
        out.setdefault(k.lower(), v)
    return out


def _b64json(value: str, what: str, code: str = MALFORMED) -> dict[str, Any]:
    try:
        obj = json.loads(base64.b64decode(value.strip(), validate=True))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise malformed(f"the {what} header is not base64 JSON", code) from None
    if not isinstance(obj, dict):
        raise malformed(f"the {what} header is not a JSON object", code)
    return obj


def _text(obj: dict[str, Any], name: str, where: str, *, required: bool = True) -> str:
    v = obj.get(name)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or (required and not v):
        raise malformed(f"{where}: {name} is missing or not a string")
    return v


def _uint(obj: dict[str, Any], name: str, where: str) -> int:
    try:
        return wire.uint(obj, name)
    except wire.PaymentInvalid:
        raise malformed(f"{where}: {name} must be a non-negative integer") from None


def _offer(
    version: int, raw: Any, i: int, resource: str, info: dict[str, Any] | None, ext: dict[str, Any] | None
) -> Offer:
    where = f"accepts[{i}]"
    if not isinstance(raw, dict):
        raise malformed(f"{where} is not an object")
    extra = raw.get("extra")
    if isinstance(extra, str):  # some v1 servers send extra as a JSON string
        try:
            extra = json.loads(extra)
        except ValueError:
            extra = None
        if not isinstance(extra, dict):
            raise malformed(f"{where}: extra is not an object")
    elif extra is None:
        extra = {}
    elif not isinstance(extra, dict):
        raise malformed(f"{where}: extra is not an object")
    timeout = _uint(raw, "maxTimeoutSeconds", where)
    if version == 2:
        amount = _uint(raw, "amount", where)
        desc, mime = (info or {}).get("description"), (info or {}).get("mimeType")
    else:
        amount = _uint(raw, "maxAmountRequired", where)
        resource = _text(raw, "resource", where)
        desc, mime = raw.get("description"), raw.get("mimeType")
    return Offer(
        version=version,
        scheme=_text(raw, "scheme", where),
        network=_text(raw, "network", where),
        asset=_text(raw, "asset", where),
        amount=amount,
        pay_to=_text(raw, "payTo", where),
        resource=resource,
        max_timeout_seconds=timeout,
        extra=dict(extra),
        raw=raw,
        description=desc if isinstance(desc, str) else "",
        mime_type=mime if isinstance(mime, str) else "",
        resource_info=info,
        extensions=ext,
    )


def _parse(obj: dict[str, Any]) -> Required:
    version = obj.get("x402Version")
    if version not in (1, 2) or isinstance(version, bool):
        raise malformed(f"x402Version {version!r} is not supported (1 or 2)")
    accepts = obj.get("accepts")
    if not isinstance(accepts, list) or not accepts:
        raise malformed("accepts is missing or empty")
    error = obj.get("error")
    resource, info, ext = "", None, None
    if version == 2:
        r = obj.get("resource")
        if r is not None:
            if not isinstance(r, dict) or not isinstance(r.get("url"), str):
                raise malformed("resource must be an object with a url")
            resource, info = r["url"], r
        e = obj.get("extensions")
        if e is not None and not isinstance(e, dict):
            raise malformed("extensions must be an object")
        ext = e or None
    offers = [_offer(version, a, i, resource, info, ext) for i, a in enumerate(accepts)]
    if version == 1:
        resource = offers[0].resource
    return Required(version, error if isinstance(error, str) else "", resource, offers)


def required(
    status: int, headers: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes
) -> Required | None:
    """A 402's payment requirements; None when the response is not an x402 402
    (another status, or a 402 with neither the header nor an x402 JSON body).
    Raises ``x402_malformed_402`` (502) when it claims x402 but is not valid."""
    if status != 402:
        return None
    value = _lower(headers).get(wire.PAYMENT_REQUIRED)
    if value:
        return _parse(_b64json(value, "PAYMENT-REQUIRED"))
    try:
        obj = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None  # a 402 page of some other kind
    if not isinstance(obj, dict) or "x402Version" not in obj:
        return None
    return _parse(obj)


def offers(status: int, headers: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes) -> list[Offer]:
    """The offers of an x402 402 ([] when it is not one); see :func:`required`."""
    r = required(status, headers, body)
    return r.offers if r is not None else []


def choose(offers: Iterable[Offer], *, allowed: Callable[[Offer], bool]) -> Offer | None:
    """The first offer (in the server's order) this client can pay and ``allowed`` accepts."""
    return next((o for o in offers if o.unpayable() is None and allowed(o)), None)


def pick(offers: Iterable[Offer], *, allowed: Callable[[Offer], bool]) -> Offer:
    """:func:`choose`, or ``402 x402_no_payable_offer`` saying why each offer was passed over."""
    offers = list(offers)
    chosen = choose(offers, allowed=allowed)
    if chosen is not None:
        return chosen
    reasons = [f"{o.describe()}: {o.unpayable() or 'not allowed'}" for o in offers]
    msg = "no offer of the 402 can be paid" + (": " + "; ".join(reasons) if reasons else "")
    raise TollwayError(ErrorType.PAYMENT, NO_PAYABLE_OFFER, msg)


# ------------------------------------------------------------------ paying


def _encode(obj: Any) -> str:
    """Standard base64 of compact UTF-8 JSON (what the SDK's model_dump_json gives)."""
    return base64.b64encode(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()).decode()


def sign(
    offer: Offer,
    account: LocalAccount,
    now_s: int,
    *,
    nonce: str | None = None,
    valid_before: int | None = None,
) -> Payment:
    """Sign an EIP-3009 ``transferWithAuthorization`` for ``offer`` and build the
    header the retried request carries. ``nonce`` (0x + 64 hex) is random unless
    given; ``valid_before`` (seconds) bounds the validity below the offer's."""
    why = offer.unpayable()
    if why is not None:
        raise TollwayError(ErrorType.PAYMENT, NO_PAYABLE_OFFER, f"cannot pay {offer.describe()}: {why}")
    chain = offer.chain_id
    assert chain is not None
    nonce = nonce or "0x" + os.urandom(32).hex()
    timeout = offer.max_timeout_seconds or (
        DEFAULT_TIMEOUT_V2_S if offer.version == 2 else DEFAULT_TIMEOUT_V1_S
    )
    valid_after = max(0, now_s - VALID_AFTER_SKEW_S)
    valid_before = min(now_s + timeout, valid_before) if valid_before is not None else now_s + timeout
    payer, pay_to = str(account.address), to_checksum_address(offer.pay_to)
    dom = exact_evm.domain(offer.extra["name"], offer.extra["version"], chain, offer.asset)
    message = {
        "from": payer,
        "to": pay_to,
        "value": offer.amount,
        "validAfter": valid_after,
        "validBefore": valid_before,
        "nonce": nonce,
    }
    authorization = {k: v if isinstance(v, str) else str(v) for k, v in message.items()}
    inner = {"authorization": authorization, "signature": exact_evm.sign(account.key, dom, message)}
    payload: dict[str, Any]
    if offer.version == 2:
        payload = {"x402Version": 2, "payload": inner, "accepted": offer.raw}
        if offer.resource_info is not None:
            payload["resource"] = offer.resource_info
        if offer.extensions:
            payload["extensions"] = offer.extensions
        header = "PAYMENT-SIGNATURE"
    else:
        payload = {"x402Version": 1, "scheme": offer.scheme, "network": offer.network, "payload": inner}
        header = "X-PAYMENT"
    return Payment(
        header, _encode(payload), payload, payer, pay_to, offer.amount, nonce, valid_after, valid_before
    )


def payment_header(offer: Offer, account: LocalAccount, now_s: int) -> tuple[str, str]:
    """(header name, value) paying ``offer``; see :func:`sign`."""
    p = sign(offer, account, now_s)
    return p.header, p.value


def receipt(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, Any] | None:
    """The settlement receipt (``PAYMENT-RESPONSE``, else ``X-PAYMENT-RESPONSE``):
    ``{success, payer?, transaction, network, errorReason?, ...}``; None when there
    is none. Raises ``x402_malformed_receipt`` (502) for one that is not base64 JSON."""
    h = _lower(headers)
    value = h.get(wire.PAYMENT_RESPONSE) or h.get(wire.X_PAYMENT_RESPONSE)
    if not value:
        return None
    return _b64json(value, "payment response", MALFORMED_RECEIPT)
