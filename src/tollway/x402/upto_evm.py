"""The ``upto`` scheme on EVM chains: a Permit2 ``permitWitnessTransferFrom``
authorization for a maximum, of which the facilitator settles what was used.

What the official SDK's upto client (``x402.mechanisms.evm.upto``) signs, as
EIP-712 typed data under Permit2's domain ``{name: "Permit2", chainId,
verifyingContract: PERMIT2}`` (no version)::

    PermitWitnessTransferFrom(TokenPermissions permitted, address spender,
        uint256 nonce, uint256 deadline, Witness witness)
    TokenPermissions(address token, uint256 amount)      # the maximum
    Witness(address to, address facilitator, uint256 validAfter)

``spender`` is the x402 upto proxy (the contract that calls Permit2 with the
actual amount), ``witness.to`` the ``payTo`` address and ``witness.facilitator``
the one facilitator allowed to settle it. The nonce is Permit2's (a uint256,
written in decimal), a different space from EIP-3009's 32-byte nonces. Pure
functions, like :mod:`tollway.x402.exact_evm`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from tollway.x402 import wire
from tollway.x402.exact_evm import is_address, keccak, recover, to_checksum_address
from tollway.x402.wire import PaymentInvalid

SCHEME = "upto"
PERMIT2_ADDRESS = "0x000000000022D473030F116dDEE9F6B43aC78BA3"  # the same on every chain (CREATE2)
UPTO_PROXY_ADDRESS = "0x4020A4f3b7b90ccA423B9fabCc0CE57C6C240002"  # x402UptoPermit2Proxy

# Reason codes: the official SDK's.
INVALID_SPENDER = "invalid_permit2_spender"
RECIPIENT_MISMATCH = "invalid_permit2_recipient_mismatch"
FACILITATOR_MISMATCH = "upto_facilitator_mismatch"
DEADLINE_EXPIRED = "permit2_deadline_expired"
NOT_YET_VALID = "permit2_not_yet_valid"
AMOUNT_MISMATCH = "permit2_amount_mismatch"
TOKEN_MISMATCH = "permit2_token_mismatch"
BAD_SIGNATURE = "invalid_permit2_signature"
SETTLEMENT_EXCEEDS_AMOUNT = "invalid_upto_evm_payload_settlement_exceeds_amount"
BAD_PAYLOAD = "invalid_permit2_payload_format"

TYPES: dict[str, list[dict[str, str]]] = {
    "PermitWitnessTransferFrom": [
        {"name": "permitted", "type": "TokenPermissions"},
        {"name": "spender", "type": "address"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
        {"name": "witness", "type": "Witness"},
    ],
    "TokenPermissions": [{"name": "token", "type": "address"}, {"name": "amount", "type": "uint256"}],
    "Witness": [
        {"name": "to", "type": "address"},
        {"name": "facilitator", "type": "address"},
        {"name": "validAfter", "type": "uint256"},
    ],
}
DEADLINE_MARGIN_S = 6  # as the SDK: the permit must stay valid a little after verification

_DOMAIN_TYPE = "EIP712Domain(string name,uint256 chainId,address verifyingContract)"
_TOKEN_PERMISSIONS = "TokenPermissions(address token,uint256 amount)"
_WITNESS = "Witness(address to,address facilitator,uint256 validAfter)"
_PERMIT_TYPE = (
    "PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,"
    "uint256 deadline,Witness witness)" + _TOKEN_PERMISSIONS + _WITNESS
)
_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$")


@dataclass(frozen=True, slots=True)
class Permit:
    """A decoded upto Permit2 authorization with its signature."""

    payer: str  # the owner, checksummed
    token: str
    value: int  # permitted.amount: the most that may be settled
    spender: str
    permit_nonce: int  # Permit2's uint256 nonce
    deadline: int
    to: str
    facilitator: str
    valid_after: int
    signature: str

    @property
    def nonce(self) -> str:
        """The nonce as the settlement's idempotency key names it: Permit2's
        nonces are their own space, apart from EIP-3009's hex nonces."""
        return f"permit2:{self.permit_nonce}"

    @classmethod
    def parse(cls, payload: Any) -> Permit:
        auth = wire.field(payload, "permit2Authorization", dict)
        permitted = wire.field(auth, "permitted", dict)
        witness = wire.field(auth, "witness", dict)
        frm = wire.field(auth, "from", str)
        addresses = (
            frm,
            wire.field(permitted, "token", str),
            wire.field(auth, "spender", str),
            wire.field(witness, "to", str),
            wire.field(witness, "facilitator", str),
        )
        if not all(is_address(a) for a in addresses):
            raise PaymentInvalid(wire.INVALID_PAYLOAD, "the permit's addresses must be 0x addresses")
        sig = payload.get("signature") if isinstance(payload, dict) else None
        if not isinstance(sig, str) or not _SIGNATURE.match(sig):
            raise PaymentInvalid(BAD_SIGNATURE, "the signature must be 65 bytes of hex", frm)
        return cls(
            to_checksum_address(frm),
            addresses[1],
            wire.uint(permitted, "amount", BAD_PAYLOAD),
            addresses[2],
            wire.uint(auth, "nonce", BAD_PAYLOAD),
            wire.uint(auth, "deadline", BAD_PAYLOAD),
            addresses[3],
            addresses[4],
            wire.uint(witness, "validAfter", BAD_PAYLOAD),
            sig,
        )

    def message(self) -> dict[str, Any]:
        """The typed-data message (eth-account's ``encode_typed_data`` form)."""
        return {
            "permitted": {"token": to_checksum_address(self.token), "amount": self.value},
            "spender": to_checksum_address(self.spender),
            "nonce": self.permit_nonce,
            "deadline": self.deadline,
            "witness": {
                "to": to_checksum_address(self.to),
                "facilitator": to_checksum_address(self.facilitator),
                "validAfter": self.valid_after,
            },
        }


def domain(chain: int) -> dict[str, Any]:
    return {"name": "Permit2", "chainId": chain, "verifyingContract": PERMIT2_ADDRESS}


@functools.cache
def _typehash(text: str) -> bytes:
    return keccak(text=text)


@functools.lru_cache(maxsize=16)
def _separator(chain: int) -> bytes:
    return keccak(
        _typehash(_DOMAIN_TYPE) + keccak(text="Permit2") + chain.to_bytes(32, "big") + _word(PERMIT2_ADDRESS)
    )


def _word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def digest(p: Permit, chain: int) -> bytes:
    """The EIP-712 hash the permit is signed over."""
    permitted = keccak(_typehash(_TOKEN_PERMISSIONS) + _word(p.token) + p.value.to_bytes(32, "big"))
    witness = keccak(
        _typehash(_WITNESS) + _word(p.to) + _word(p.facilitator) + p.valid_after.to_bytes(32, "big")
    )
    struct = keccak(
        _typehash(_PERMIT_TYPE)
        + permitted
        + _word(p.spender)
        + p.permit_nonce.to_bytes(32, "big")
        + p.deadline.to_bytes(32, "big")
        + witness
    )
    return keccak(b"\x19\x01" + _separator(chain) + struct)


def signer(p: Permit, chain: int) -> str:
    """The address that signed ``p`` (checksummed); ``v`` 27 or 28, ``s`` in the lower half."""
    return recover(p.signature, digest(p, chain), p.payer, BAD_SIGNATURE)


def sign(key: Any, chain: int, message: dict[str, Any]) -> str:
    """Sign a permit (tests and the docs' examples pay with this)."""
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    msg = encode_typed_data(
        domain_data=domain(chain),
        message_types=TYPES,
        message_data=message,
    )
    sig: str = Account.sign_message(msg, private_key=key).signature.hex()
    return "0x" + sig.removeprefix("0x")


def check(
    p: Permit, *, pay_to: str, asset: str, facilitators: tuple[str, ...], amount: int, now_s: int
) -> None:
    """The checks that need no signature or state, in the SDK's order: the
    spender is the upto proxy, ``witness.to`` is ``payTo``, ``witness.facilitator``
    is this facilitator, the deadline and ``validAfter`` hold, the permitted
    amount is the requirements' ``amount`` (the maximum), the token is the asset."""
    if p.spender.lower() != UPTO_PROXY_ADDRESS.lower():
        raise PaymentInvalid(INVALID_SPENDER, "the spender is not the x402 upto proxy", p.payer)
    if p.to.lower() != pay_to.lower():
        raise PaymentInvalid(RECIPIENT_MISMATCH, "witness.to is not the payTo address", p.payer)
    if p.facilitator.lower() not in {f.lower() for f in facilitators}:
        raise PaymentInvalid(FACILITATOR_MISMATCH, "witness.facilitator is not this facilitator", p.payer)
    if p.deadline < now_s + DEADLINE_MARGIN_S:
        raise PaymentInvalid(DEADLINE_EXPIRED, "the permit has expired (or expires within 6 s)", p.payer)
    if p.valid_after > now_s:
        raise PaymentInvalid(NOT_YET_VALID, "the permit is not valid yet", p.payer)
    if p.value != amount:
        raise PaymentInvalid(
            AMOUNT_MISMATCH, f"permitted.amount {p.value} is not the maximum {amount}", p.payer
        )
    if p.token.lower() != asset.lower():
        raise PaymentInvalid(TOKEN_MISMATCH, "permitted.token is not the asset", p.payer)


def settle_amount(p: Permit, amount: int) -> int:
    """What a settlement may move: ``amount``, at most the permitted maximum."""
    if amount > p.value:
        raise PaymentInvalid(
            SETTLEMENT_EXCEEDS_AMOUNT, f"settling {amount} exceeds the permitted {p.value}", p.payer
        )
    return amount
