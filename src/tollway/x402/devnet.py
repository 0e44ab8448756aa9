"""``devnet``: the embedded settlement backend. A token with EIP-3009 semantics
whose balances, used nonces and transfers live in tollway's ledger.

- Each address holds a ledger account ``x402dev_<address>``: a wallet account,
  so it can never be overdrawn. ``tollway devnet fund`` mints into it from
  ``sys_devnet``.
- ``authorizationState(authorizer, nonce)`` is the ledger's idempotency key
  for the settlement transfer: unique across every process sharing the
  database, so one authorization settles exactly once.
- A settlement is one ledger transfer from the payer to revenue, with a usage
  event (meter ``x402``) recording the payer, ``payTo``, network, asset and
  transaction reference.
- A payment the wallet broker signed (``signatures``, see
  :mod:`tollway.wallets.signatures`) is paid from the wallet's ledger account,
  the one balance: settling it captures the wallet's hold (into
  ``sys_settlement``), and the settlement transfer moves that amount on to
  revenue. No ``x402dev_`` balance is involved, and a payment whose hold is
  gone (voided, expired) cannot settle.
- An ``upto`` permit (Permit2, :mod:`tollway.x402.upto_evm`) settles the
  amount the resource server names, at most the permitted maximum: the same
  one transfer, keyed by the permit's nonce, so a second settlement of it is
  ``nonce already used`` whatever its amount. Its witness names the
  facilitator allowed to settle it: on devnet, ``FACILITATOR_ADDRESS``.
"""

from __future__ import annotations

from typing import Any, Protocol

from tollway.core.errors import TollwayError
from tollway.core.ids import new_id
from tollway.ledger import Ledger, Transfer
from tollway.ledger.ops import Usage
from tollway.x402 import wire
from tollway.x402.earnings import Credit, book_chain, settlement_chain
from tollway.x402.exact_evm import Authorization, keccak
from tollway.x402.upto_evm import Permit
from tollway.x402.wire import PaymentInvalid

MINT_ACCOUNT = "sys_devnet"
REVENUE_ACCOUNT = "sys_revenue"
SETTLEMENT_ACCOUNT = "sys_settlement"  # where a captured wallet hold waits for its settlement
METER = "x402"
# The facilitator an upto permit names on devnet (witness.facilitator): there is
# no key behind it, the ledger settles. The first account of a local dev chain.
FACILITATOR_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


class BrokerSignatures(Protocol):
    """Payments the wallet broker signed (``tollway.wallets.signatures.Signatures``)."""

    async def covers(self, auth: Authorization) -> bool | None: ...

    async def capture(self, auth: Authorization) -> int | None: ...


def authorization_key(network: str, asset: str, authorizer: str, nonce: str) -> str:
    """The ledger idempotency key of an authorization's settlement: one per
    authorization, whatever the backend."""
    return f"x402:{network}:{asset.lower()}:{authorizer.lower()}:{nonce.lower()}"


class Devnet:
    def __init__(self, ledger: Ledger, network: str, asset: str) -> None:
        self.ledger = ledger
        self.network = network
        self.asset = asset
        self.signatures: BrokerSignatures | None = None  # set by the runtime
        self.facilitator_address = FACILITATOR_ADDRESS

    @staticmethod
    def account_id(address: str) -> str:
        return f"x402dev_{address.lower()}"

    def nonce_key(self, authorizer: str, nonce: str) -> str:
        return authorization_key(self.network, self.asset, authorizer, nonce)

    async def _ensure(self, account_id: str, kind: str, name: str) -> None:
        try:
            await self.ledger.create_account(kind, id=account_id, name=name)
        except TollwayError as e:
            if e.code != "account_exists":
                raise

    async def fund(self, address: str, amount: int) -> Transfer:
        """Mint ``amount`` atomic units to ``address`` (devnet only)."""
        await self._ensure(MINT_ACCOUNT, "funding", "devnet token supply")
        acct = self.account_id(address)
        await self._ensure(acct, "wallet", f"devnet balance of {address}")
        return await self.ledger.transfer(MINT_ACCOUNT, acct, amount, description=f"devnet mint to {address}")

    async def balance(self, address: str) -> int:
        acct = await self.ledger.find_account(self.account_id(address))
        return acct.available if acct is not None else 0

    async def covers(self, auth: Authorization | Permit) -> bool:
        """Whether the payer can pay ``auth``: the wallet's hold for a payment the
        broker signed, otherwise the address's devnet balance."""
        if self.signatures is not None and isinstance(auth, Authorization):
            held = await self.signatures.covers(auth)
            if held is not None:
                return held
        return await self.balance(auth.payer) >= auth.value

    async def spendable(self, auth: Authorization | Permit) -> int | None:
        """The address's devnet balance; None for a payment the broker signed
        (the wallet's hold reserved exactly it)."""
        if (
            self.signatures is not None
            and isinstance(auth, Authorization)
            and await self.signatures.covers(auth) is not None
        ):
            return None
        return await self.balance(auth.payer)

    async def nonce_used(self, authorizer: str, nonce: str) -> bool:
        return await self.ledger.transfer_by_key(self.nonce_key(authorizer, nonce)) is not None

    def transaction(self, auth: Authorization | Permit) -> str:
        """The settlement's transaction reference: deterministic per authorization."""
        return "0x" + keccak(text=self.nonce_key(auth.payer, auth.nonce)).hex().removeprefix("0x")

    async def transfer_with_authorization(
        self, auth: Authorization, pay_to: str, meta: dict[str, Any], credit: Credit | None = None
    ) -> str:
        """Move the authorized value from the payer to revenue (or, for an
        agent-owned rule, to its wallet less the operator's fee: see
        ``earnings.py``); the nonce is then used. A second settlement of the
        same authorization is ``nonce already used``."""
        tx = self.transaction(auth)
        source, value = self.account_id(auth.payer), auth.value
        if self.signatures is not None:
            # The wallet's one debit; a hold already captured returns its amount, and the
            # transfer below, keyed by the nonce, then settles once (a repeat: nonce used).
            taken = await self.signatures.capture(auth)
            if taken is not None:
                source, value = SETTLEMENT_ACCOUNT, taken
        return await self._move(auth, source, value, pay_to, meta, tx, credit)

    async def permit_witness_transfer(
        self, permit: Permit, amount: int, pay_to: str, meta: dict[str, Any], credit: Credit | None = None
    ) -> str:
        """Move ``amount`` (at most the permitted maximum) from the payer to
        revenue (or an agent's wallet, as above); the permit's nonce is then used."""
        tx = self.transaction(permit)
        return await self._move(permit, self.account_id(permit.payer), amount, pay_to, meta, tx, credit)

    async def _move(
        self,
        auth: Authorization | Permit,
        source: str,
        value: int,
        pay_to: str,
        meta: dict[str, Any],
        tx: str,
        credit: Credit | None,
    ) -> str:
        """The settlement's ledger batch, keyed by the authorization: one transfer to
        revenue, or the earnings chain of an agent-owned rule."""
        meta = {**meta, "transaction": tx, "payer": auth.payer, "pay_to": pay_to}
        # The key is the authorization; the call id makes a repeat a conflict, not a replay.
        key, described = self.nonce_key(auth.payer, auth.nonce), f"{self.network} {tx} ({new_id('call')})"
        try:
            if credit is not None:
                await book_chain(self.ledger, settlement_chain(source, value, key, described, meta, credit))
            else:
                await self.ledger.transfer(
                    source,
                    REVENUE_ACCOUNT,
                    value,
                    idempotency_key=key,
                    description=f"x402 {described}",
                    usage=Usage(METER, 1, None, meta, amount=value),
                )
        except TollwayError as e:
            if e.code == "idempotency_key_reused":
                raise PaymentInvalid(
                    wire.NONCE_USED, "this authorization was already used", auth.payer
                ) from None
            if e.code in ("insufficient_funds", "account_not_found"):
                raise PaymentInvalid(
                    wire.INSUFFICIENT_FUNDS, "the payer's balance is too low", auth.payer
                ) from None
            raise
        return tx
