"""The ``exact`` scheme on EVM chains: an EIP-3009 ``transferWithAuthorization``
signed as EIP-712 typed data.

The domain is the asset's ``{name, version, chainId, verifyingContract}``:
name and version from the payment requirements' ``extra``, the chain id from
the CAIP-2 network (``eip155:<id>``), the asset as verifying contract.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tollway.x402 import wire
from tollway.x402.wire import PaymentInvalid

if TYPE_CHECKING:
    from eth_keys.main import KeyAPI


# The eth libraries take a noticeable share of start-up: imported on first use.
def keccak(primitive: bytes | None = None, *, text: str | None = None) -> bytes:
    return bytes(_eth().keccak(primitive, text=text))


@functools.lru_cache(maxsize=4096)
def to_checksum_address(address: str) -> str:
    """EIP-55 (a keccak each time): cached, as a paid request checksums its payer,
    payee and asset, and payers pay again."""
    return str(_eth().to_checksum_address(address))


@functools.cache
def _eth() -> Any:
    import types

    from eth_utils.address import to_checksum_address
    from eth_utils.crypto import keccak

    return types.SimpleNamespace(keccak=keccak, to_checksum_address=to_checksum_address)


@functools.cache
def _keys() -> KeyAPI:
    from eth_keys.main import KeyAPI

    return KeyAPI()


TRANSFER_WITH_AUTHORIZATION = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]
# A payment must stay valid at least this long after verification (the spec's margin).
VALID_BEFORE_MARGIN_S = 6

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_NONCE = re.compile(r"^0x[0-9a-fA-F]{64}$")
_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$")
_CAIP2 = re.compile(r"^eip155:([1-9][0-9]{0,18})$")


def is_address(v: object) -> bool:
    return isinstance(v, str) and bool(_ADDRESS.match(v))


def chain_id(network: str) -> int | None:
    m = _CAIP2.match(network)
    return int(m.group(1)) if m else None


@dataclass(frozen=True, slots=True)
class Authorization:
    """A decoded EIP-3009 authorization with its signature."""

    payer: str  # checksummed
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: str  # 0x + 64 hex, lower case
    signature: str

    @classmethod
    def parse(cls, payload: Any) -> Authorization:
        auth = wire.field(payload, "authorization", dict)
        sig = wire.field(payload, "signature", str)
        frm, to, nonce = (wire.field(auth, k, str) for k in ("from", "to", "nonce"))
        if not is_address(frm) or not is_address(to):
            raise PaymentInvalid(wire.INVALID_PAYLOAD, "authorization from/to must be 0x addresses")
        if not _NONCE.match(nonce):
            raise PaymentInvalid(wire.INVALID_PAYLOAD, "authorization nonce must be 32 bytes of hex")
        if not _SIGNATURE.match(sig):
            raise PaymentInvalid(wire.BAD_SIGNATURE, "the signature must be 65 bytes of hex", frm)
        return cls(
            to_checksum_address(frm),
            to,
            wire.uint(auth, "value"),
            wire.uint(auth, "validAfter"),
            wire.uint(auth, "validBefore"),
            nonce.lower(),
            sig,
        )

    def message(self) -> dict[str, Any]:
        return {
            "from": self.payer,
            "to": to_checksum_address(self.to),
            "value": self.value,
            "validAfter": self.valid_after,
            "validBefore": self.valid_before,
            "nonce": bytes.fromhex(self.nonce[2:]),
        }


def domain(name: str, version: str, chain: int, asset: str) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "chainId": chain,
        "verifyingContract": to_checksum_address(asset),
    }


_DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
_TWA_TYPE = (
    "TransferWithAuthorization(address from,address to,uint256 value,"
    "uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)
_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0  # secp256k1 n / 2


@functools.cache
def _typehash(text: str) -> bytes:
    return keccak(text=text)


@functools.lru_cache(maxsize=64)
def _separator(name: str, version: str, chain: int, asset: str) -> bytes:
    return keccak(
        _typehash(_DOMAIN_TYPE)
        + keccak(text=name)
        + keccak(text=version)
        + chain.to_bytes(32, "big")
        + bytes(12)
        + bytes.fromhex(asset[2:])
    )


def digest(auth: Authorization, dom: dict[str, Any]) -> bytes:
    """The EIP-712 hash an authorization is signed over (computed directly: the
    domain separator is cached, and this is on every paid request)."""
    sep = _separator(dom["name"], dom["version"], dom["chainId"], dom["verifyingContract"].lower())
    struct = keccak(
        _typehash(_TWA_TYPE)
        + bytes(12)
        + bytes.fromhex(auth.payer[2:])
        + bytes(12)
        + bytes.fromhex(auth.to[2:])
        + auth.value.to_bytes(32, "big")
        + auth.valid_after.to_bytes(32, "big")
        + auth.valid_before.to_bytes(32, "big")
        + bytes.fromhex(auth.nonce[2:])
    )
    return keccak(b"\x19\x01" + sep + struct)


def signer(auth: Authorization, dom: dict[str, Any]) -> str:
    """The address that signed ``auth`` under ``dom`` (checksummed)."""
    return recover(auth.signature, digest(auth, dom), auth.payer, wire.BAD_SIGNATURE)


def recover(signature: str, msg_hash: bytes, payer: str, reason: str) -> str:
    """The address whose 65-byte ``r || s || v`` ``signature`` signed ``msg_hash``
    (checksummed). As EIP-3009 tokens do, ``v`` must be 27 or 28 and ``s`` in
    the lower half; anything else is ``PaymentInvalid(reason)``."""
    raw = bytes.fromhex(signature[2:])
    r, s_, v = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64]
    if v not in (27, 28) or not 0 < s_ <= _HALF_N or r == 0:
        raise PaymentInvalid(reason, "the signature's v or s is not canonical", payer)
    try:
        sig = _keys().Signature(vrs=(v - 27, r, s_))
        return to_checksum_address(sig.recover_public_key_from_msg_hash(msg_hash).to_address())
    except Exception:  # r or s off the curve
        raise PaymentInvalid(reason, "the signature does not recover", payer) from None


def sign(key: Any, dom: dict[str, Any], auth: dict[str, Any]) -> str:
    """Sign an authorization (tests, the demo and agent wallets pay with this)."""
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    msg = encode_typed_data(
        domain_data=dom,
        message_types={"TransferWithAuthorization": TRANSFER_WITH_AUTHORIZATION},
        message_data={**auth, "nonce": bytes.fromhex(auth["nonce"][2:])},
    )
    sig: str = "0x" + Account.sign_message(msg, private_key=key).signature.hex().removeprefix("0x")
    return sig


def check(auth: Authorization, pay_to: str, amount: int, now_s: int) -> None:
    """The checks that need no signature or state, in the facilitator's order."""
    if auth.to.lower() != pay_to.lower():
        raise PaymentInvalid(wire.RECIPIENT_MISMATCH, "authorization.to is not the payTo address", auth.payer)
    if auth.value != amount:
        raise PaymentInvalid(
            wire.VALUE_MISMATCH, f"authorization.value {auth.value} is not the price {amount}", auth.payer
        )
    if auth.valid_after > now_s:
        raise PaymentInvalid(wire.VALID_AFTER, "the authorization is not valid yet", auth.payer)
    if auth.valid_before - VALID_BEFORE_MARGIN_S <= now_s:  # valid while now < validBefore - 6 s
        raise PaymentInvalid(
            wire.VALID_BEFORE, "the authorization has expired (or expires within 6 s)", auth.payer
        )
