"""The built-in x402 facilitator: verify and settle ``exact`` and ``upto`` EVM payments.

It speaks the official facilitator API (``POST /verify``, ``POST /settle``,
``GET /supported``, served under ``/x402``), so the official SDK's
``HTTPFacilitatorClient`` can use it, and tollway's own paid routes call it
in-process. A payment that fails a check is an answer, not an error:
``{"isValid": false, "invalidReason": ...}`` or ``{"success": false,
"errorReason": ...}`` with HTTP 200 (the official clients raise on any other
status).

Checks, in order: the x402 version; scheme and network supported; the asset
is the one this facilitator settles; ``to`` equals ``payTo``; the value is
exactly the price; ``validAfter <= now < validBefore - 6 s``, and
``validBefore`` at most ``[x402] max_validity_seconds`` away; the EIP-712
signature recovers to ``from``; the nonce is unused (across every process
sharing the database); the payer's balance covers the value.

``upto`` (v2 only, :mod:`tollway.x402.upto_evm`): a Permit2 authorization for
a maximum. Verify checks it against the maximum (``amount`` is the permitted
amount); ``/settle`` moves the requirements' ``amount`` as the resource server
sends it there (the actual cost, at most the permitted amount: the SDK's
settlement override), once per permit. Zero settles nothing (success, no
transaction), as the SDK's facilitator does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from tollway.core.clock import Clock
from tollway.x402 import exact_evm, upto_evm, wire
from tollway.x402.config import X402Config
from tollway.x402.earnings import Credit
from tollway.x402.exact_evm import Authorization
from tollway.x402.upto_evm import Permit
from tollway.x402.wire import PaymentInvalid

log = logging.getLogger("tollway.x402")

# x402 v1 names networks; v2 uses CAIP-2. The legacy names for chains v1 clients know.
V1_NAMES = {
    "eip155:8453": "base",
    "eip155:84532": "base-sepolia",
    "eip155:1": "ethereum",
    "eip155:137": "polygon",
    "eip155:80002": "polygon-amoy",
    "eip155:43114": "avalanche",
    "eip155:43113": "avalanche-fuji",
}


class Settlement(Protocol):
    """Where payments settle: ``devnet`` (the ledger) or a real EVM chain."""

    @property
    def facilitator_address(self) -> str:
        """The address upto permits name as the one facilitator that may settle them."""
        ...

    async def nonce_used(self, authorizer: str, nonce: str) -> bool:
        """EIP-3009 ``authorizationState(authorizer, nonce)``."""
        ...

    async def balance(self, address: str) -> int:
        """The address's spendable balance of the asset, in atomic units."""
        ...

    async def covers(self, auth: Authorization | Permit) -> bool:
        """Whether the payer can pay ``auth`` now (its balance, or on devnet the
        wallet hold behind a payment the broker signed)."""
        ...

    async def spendable(self, auth: Authorization | Permit) -> int | None:
        """What the payer of ``auth`` can spend now, shared by its payments in
        flight; None where a hold reserved this payment already (the broker's)."""
        ...

    async def transfer_with_authorization(
        self, auth: Authorization, pay_to: str, meta: dict[str, Any], credit: Credit | None = None
    ) -> str:
        """Move ``auth.value`` from the payer to ``pay_to`` once, record it in the
        ledger as revenue (a transfer carrying the transaction reference, with a
        usage event of meter ``x402`` holding ``meta``) or, with ``credit`` (an
        agent-owned rule), as the wallet's earnings less the operator's fee
        (``earnings.settlement_chain``), and return the
        transaction reference. Raises ``PaymentInvalid`` (``NONCE_USED``,
        ``INSUFFICIENT_FUNDS``, ``TRANSACTION_FAILED``, ``SETTLEMENT_PENDING``)."""
        ...

    async def permit_witness_transfer(
        self, permit: Permit, amount: int, pay_to: str, meta: dict[str, Any], credit: Credit | None = None
    ) -> str:
        """The same for an upto permit: move ``amount`` (at most ``permit.value``) once."""
        ...


class Verifier(Protocol):
    """What the gateway verifies and settles through: the built-in
    :class:`Facilitator`, or an external one (``tollway.x402.remote``)."""

    @property
    def address(self) -> str | None:
        """The facilitator upto permits must name, if known now; None: upto is not offered."""
        ...

    async def upto_address(self) -> str | None:
        """The same, found out if need be (an external facilitator's ``/supported``)."""
        ...

    async def check(self, payload: Any, requirements: Any) -> Checked:
        """Every check; raises ``PaymentInvalid`` with the reason at the first failure."""
        ...

    async def settle(
        self,
        payload: Any,
        requirements: Any,
        resource: str | None = None,
        checked: Checked | None = None,
        credit: Credit | None = None,
        *,
        amount: int | None = None,
    ) -> dict[str, Any]:
        """A ``SettleResponse`` (failures are answers, not exceptions); ``credit``:
        the payment is an agent's earnings (``earnings.py``). ``amount``: for upto,
        what to settle (at most the maximum ``checked`` verified)."""
        ...


@dataclass(frozen=True, slots=True)
class Checked:
    """A payment that passed every check."""

    version: int
    network: str
    pay_to: str
    amount: int  # the price (exact) or the maximum (upto)
    auth: Authorization | Permit
    resource: str
    # What the payer can spend now, where no hold already covers the payment
    # (the claim holds this much of it while the request runs); None: not known here.
    spendable: int | None = None
    scheme: str = "exact"


class Facilitator:
    def __init__(self, cfg: X402Config, devnet: Settlement, clock: Clock) -> None:
        self.cfg = cfg
        self.devnet = devnet  # the settlement backend (named for the embedded default)
        self.clock = clock
        self.network = cfg.network
        self.chain = exact_evm.chain_id(cfg.network) or 0
        self.v1_network = V1_NAMES.get(cfg.network, cfg.network)

    @property
    def address(self) -> str:
        """The facilitator upto permits must name (their witness's ``facilitator``)."""
        return self.devnet.facilitator_address

    async def upto_address(self) -> str:
        return self.address

    def supported(self) -> dict[str, Any]:
        kinds = [
            {"x402Version": 2, "scheme": "exact", "network": self.network},
            {"x402Version": 1, "scheme": "exact", "network": self.v1_network},
            {
                "x402Version": 2,
                "scheme": upto_evm.SCHEME,
                "network": self.network,
                "extra": {"facilitatorAddress": self.address},
            },
        ]
        return {"kinds": kinds, "extensions": [], "signers": {"eip155:*": [self.address]}}

    def domain(self, extra: Any) -> dict[str, Any]:
        extra = extra if isinstance(extra, dict) else {}
        name = extra.get("name") if isinstance(extra.get("name"), str) else self.cfg.asset_name
        version = extra.get("version") if isinstance(extra.get("version"), str) else self.cfg.asset_version
        return exact_evm.domain(name, version, self.chain, self.cfg.asset)

    # ------------------------------------------------------------------ checks

    async def check(self, payload: Any, requirements: Any) -> Checked:
        """Every check, in order; raises :class:`PaymentInvalid` at the first that fails."""
        if not isinstance(payload, dict):
            raise PaymentInvalid(wire.INVALID_PAYLOAD, "paymentPayload must be an object")
        if not isinstance(requirements, dict):
            raise PaymentInvalid(wire.INVALID_REQUIREMENTS, "paymentRequirements must be an object")
        version = payload.get("x402Version")
        if version not in (1, 2) or isinstance(version, bool):
            raise PaymentInvalid(wire.INVALID_VERSION, "x402Version must be 1 or 2")
        scheme = wire.field(requirements, "scheme", str, wire.INVALID_REQUIREMENTS)
        network = wire.field(requirements, "network", str, wire.INVALID_REQUIREMENTS)
        # What the payer says it paid with: v2's ``accepted``, v1's top-level fields.
        said = payload.get("accepted") if version == 2 else payload
        if not isinstance(said, dict):
            said = {}
        paid_scheme, paid_network = said.get("scheme", scheme), said.get("network", network)
        if paid_scheme not in ("exact", upto_evm.SCHEME) or (paid_scheme == upto_evm.SCHEME and version != 2):
            raise PaymentInvalid(wire.UNSUPPORTED_SCHEME, f"scheme {paid_scheme!r} is not supported")
        if paid_network not in ((self.network, self.v1_network) if version == 1 else (self.network,)):
            raise PaymentInvalid(wire.INVALID_NETWORK, f"network {paid_network!r} is not supported")
        if (paid_scheme, paid_network) != (scheme, network):
            raise PaymentInvalid(wire.INVALID_PAYLOAD, "the payment is not for these requirements")
        asset = wire.field(requirements, "asset", str, wire.INVALID_REQUIREMENTS)
        if asset.lower() != self.cfg.asset.lower():
            raise PaymentInvalid(wire.INVALID_REQUIREMENTS, f"asset {asset} is not settled here")
        pay_to = wire.field(requirements, "payTo", str, wire.INVALID_REQUIREMENTS)
        if not exact_evm.is_address(pay_to):
            raise PaymentInvalid(wire.INVALID_REQUIREMENTS, "payTo must be a 0x address")
        amount = wire.uint(
            requirements, "amount" if version == 2 else "maxAmountRequired", wire.INVALID_REQUIREMENTS
        )
        resource = (
            requirements.get("resource") if version == 1 else (payload.get("resource") or {}).get("url")
        )
        resource = resource if isinstance(resource, str) else ""
        if scheme == upto_evm.SCHEME:
            return await self._check_upto(payload.get("payload"), network, pay_to, amount, resource)
        auth = Authorization.parse(payload.get("payload"))
        now_s = self.clock.now_us() // 1_000_000
        exact_evm.check(auth, pay_to, amount, now_s)
        self._not_too_long(auth.valid_before - now_s, "validBefore", wire.VALID_BEFORE, auth.payer)
        if exact_evm.signer(auth, self.domain(requirements.get("extra"))) != auth.payer:
            raise PaymentInvalid(wire.BAD_SIGNATURE, "the signature is not the payer's", auth.payer)
        await self._usable(auth)
        return Checked(version, network, pay_to, amount, auth, resource, await self.devnet.spendable(auth))

    async def _check_upto(self, raw: Any, network: str, pay_to: str, amount: int, resource: str) -> Checked:
        """An upto permit, checked against its maximum ``amount``."""
        permit = Permit.parse(raw)
        now_s = self.clock.now_us() // 1_000_000
        self._check_permit(permit, pay_to, amount, now_s)
        if upto_evm.signer(permit, self.chain) != permit.payer:
            raise PaymentInvalid(upto_evm.BAD_SIGNATURE, "the signature is not the payer's", permit.payer)
        await self._usable(permit)
        spendable = await self.devnet.spendable(permit)
        return Checked(2, network, pay_to, amount, permit, resource, spendable, upto_evm.SCHEME)

    def _check_permit(self, permit: Permit, pay_to: str, amount: int, now_s: int) -> None:
        upto_evm.check(
            permit,
            pay_to=pay_to,
            asset=self.cfg.asset,
            facilitators=(self.address,),
            amount=amount,
            now_s=now_s,
        )
        self._not_too_long(permit.deadline - now_s, "the deadline", upto_evm.DEADLINE_EXPIRED, permit.payer)

    def _not_too_long(self, left_s: int, name: str, reason: str, payer: str) -> None:
        """A signature valid for centuries is a standing claim on the payer: none
        valid beyond ``max_validity_seconds``."""
        if left_s > self.cfg.max_validity_seconds:
            raise PaymentInvalid(
                reason,
                f"{name} is more than {self.cfg.max_validity_seconds} s away: this facilitator"
                " does not take authorizations valid that long",
                payer,
            )

    async def _usable(self, auth: Authorization | Permit) -> None:
        """Its nonce is unused (across every process sharing the database) and the payer can pay it."""
        if await self.devnet.nonce_used(auth.payer, auth.nonce):
            raise PaymentInvalid(wire.NONCE_USED, "this authorization was already used", auth.payer)
        if not await self.devnet.covers(auth):
            raise PaymentInvalid(wire.INSUFFICIENT_FUNDS, "the payer's balance is too low", auth.payer)

    # --------------------------------------------------------------- the API

    async def verify(self, payload: Any, requirements: Any) -> dict[str, Any]:
        """A ``VerifyResponse``."""
        try:
            c = await self.check(payload, requirements)
        except PaymentInvalid as e:
            return _drop_none(
                {"isValid": False, "invalidReason": e.reason, "invalidMessage": e.message, "payer": e.payer}
            )
        return {"isValid": True, "payer": c.auth.payer}

    async def settle(
        self,
        payload: Any,
        requirements: Any,
        resource: str | None = None,
        checked: Checked | None = None,
        credit: Credit | None = None,
        *,
        amount: int | None = None,
    ) -> dict[str, Any]:
        """A ``SettleResponse``: checks again, then moves the money (once per
        authorization). ``resource``: what was served, as the gateway saw it
        (otherwise the payload's own ``resource``). ``checked``: this process's
        own verification of the same payment moments ago (the gateway): only
        the validity window is checked again; the ledger still refuses a used
        nonce or a balance that no longer covers the value. ``amount``: what an
        upto permit settles (otherwise the requirements' ``amount``, as the
        official resource server sends it with its settlement override)."""
        network = requirements.get("network") if isinstance(requirements, dict) else None
        network = network if isinstance(network, str) else self.network
        try:
            upto = isinstance(payload, dict) and isinstance(requirements, dict)
            if checked is None and upto and _scheme(payload, requirements) == upto_evm.SCHEME:
                # The requirements name what to settle; the permit is checked against its maximum.
                permit = Permit.parse(payload.get("payload"))
                amount = wire.uint(requirements, "amount", wire.INVALID_REQUIREMENTS)
                requirements = {**requirements, "amount": str(permit.value)}
            if checked is not None:
                now_s = self.clock.now_us() // 1_000_000
                if isinstance(checked.auth, Permit):
                    self._check_permit(checked.auth, checked.pay_to, checked.amount, now_s)
                else:
                    exact_evm.check(checked.auth, checked.pay_to, checked.amount, now_s)
            c = checked or await self.check(payload, requirements)
            meta: dict[str, Any] = {
                "network": c.network,
                "asset": self.cfg.asset,
                "resource": resource or c.resource,
                "x402_version": c.version,
            }
            if isinstance(c.auth, Permit):
                moved = upto_evm.settle_amount(c.auth, c.amount if amount is None else amount)
                if moved == 0:  # nothing used, nothing moved (the SDK's zero settlement)
                    return wire.settled(c.auth.payer, "", network, 0)
                meta |= {"scheme": upto_evm.SCHEME, "max_amount": c.auth.value}
                tx = await self.devnet.permit_witness_transfer(c.auth, moved, c.pay_to, meta, credit)
            else:
                moved = c.amount
                tx = await self.devnet.transfer_with_authorization(c.auth, c.pay_to, meta, credit)
        except PaymentInvalid as e:
            return wire.settle_failed(e, network)
        # DEBUG: every settlement is a ledger transfer with its usage event (the record);
        # a line per payment at INFO cost the edge's paid path 4% of its event loop.
        log.debug("x402 settled %d from %s on %s: %s", moved, c.auth.payer, c.network, tx)
        return wire.settled(c.auth.payer, tx, network, moved)


def _scheme(payload: Any, requirements: Any) -> Any:
    """The scheme a payment says it pays with (v2's ``accepted``, else the requirements')."""
    said = payload.get("accepted") if isinstance(payload, dict) else None
    if isinstance(said, dict) and "scheme" in said:
        return said["scheme"]
    return requirements.get("scheme") if isinstance(requirements, dict) else None


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}
