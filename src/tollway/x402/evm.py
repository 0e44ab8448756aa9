"""``evm``: settle x402 payments on a real EVM chain with EIP-3009.

The asset is an EIP-3009 token (USDC, or ``contracts/EIP3009Token.sol`` on a
local chain). The facilitator holds a funded key and submits the payer's
signed authorization as ``transferWithAuthorization(from, to, value,
validAfter, validBefore, nonce, v, r, s)``; the token, not tollway, decides
whether the nonce is fresh and the balance suffices.

- ``authorizationState`` and ``balanceOf`` are the chain's; nothing about the
  payer is stored in the ledger.
- A settlement is mined once: the token marks the nonce used. Concurrent
  settlements of one authorization in a process send one transaction (the
  rest are ``nonce already used``); across processes the loser's transaction
  reverts and, the nonce being used on chain, is ``nonce already used`` too.
  After the receipt shows status 1 and the token's ``Transfer(payer, payTo,
  value)`` log, it is recorded in the ledger as a transfer from ``x402_evm_inbound``
  (a funding account: money that arrived on chain) to revenue, keyed by the
  authorization (the same idempotency key as devnet's), with a usage event
  (meter ``x402``) naming the payer, ``payTo`` and the transaction hash.
- An ``upto`` permit (Permit2, :mod:`tollway.x402.upto_evm`) is settled by
  calling the x402 upto proxy's ``settle(permit, amount, owner, witness,
  signature)`` as the facilitator its witness names: the proxy has Permit2
  move ``amount`` (at most the permitted maximum) to ``witness.to``. Its nonce
  is Permit2's (``nonceBitmap``); the payer must have approved Permit2 for the
  token. Booked like an EIP-3009 settlement, for the amount moved.
- A receipt that does not arrive within ``receipt_timeout_s`` is
  ``settlement_pending`` (the message carries the hash). The process keeps
  following the transaction for ``follow_s`` and books it once mined; a
  restart in between drops that follow.

web3.py's ``Web3`` is synchronous; every call runs in a worker thread. Within
one process an ``asyncio.Lock`` serializes building, signing and sending, so
the facilitator's account nonces never collide. Several processes sharing one
facilitator key would need a key each (or an external nonce manager).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError, TransactionNotFound
from web3.logs import DISCARD
from web3.types import Nonce, TxParams, TxReceipt

from tollway.ledger import Ledger
from tollway.x402 import exact_evm, upto_evm, wire
from tollway.x402.devnet import authorization_key
from tollway.x402.earnings import Credit
from tollway.x402.exact_evm import Authorization
from tollway.x402.payments import record_received
from tollway.x402.upto_evm import Permit
from tollway.x402.wire import PaymentInvalid

log = logging.getLogger("tollway.x402")

INBOUND_ACCOUNT = "x402_evm_inbound"
TRANSFER_WITH_AUTHORIZATION_SIG = (
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
)
# The token's revert strings (USDC's, mirrored by EIP3009Token.sol).
_USED = "authorization is used or canceled"
_BALANCE = "transfer amount exceeds balance"
# What a settlement needs of the token: the same on USDC (FiatTokenV2+) and EIP3009Token.
TOKEN_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "authorizationState",
        "stateMutability": "view",
        "inputs": [{"name": "authorizer", "type": "address"}, {"name": "nonce", "type": "bytes32"}],
        "outputs": [{"name": "", "type": "bool"}],
    },
    {
        "type": "function",
        "name": "balanceOf",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
    {
        "type": "function",
        "name": "transferWithAuthorization",
        "stateMutability": "nonpayable",
        "inputs": [
            *exact_evm.TRANSFER_WITH_AUTHORIZATION,
            {"name": "v", "type": "uint8"},
            {"name": "r", "type": "bytes32"},
            {"name": "s", "type": "bytes32"},
        ],
        "outputs": [],
    },
    {
        "type": "event",
        "name": "Transfer",
        "anonymous": False,
        "inputs": [
            {"name": "from", "type": "address", "indexed": True},
            {"name": "to", "type": "address", "indexed": True},
            {"name": "value", "type": "uint256", "indexed": False},
        ],
    },
]

_PERMIT_TUPLE = {
    "name": "permit",
    "type": "tuple",
    "components": [
        {
            "name": "permitted",
            "type": "tuple",
            "components": [{"name": "token", "type": "address"}, {"name": "amount", "type": "uint256"}],
        },
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ],
}
_WITNESS_TUPLE = {
    "name": "witness",
    "type": "tuple",
    "components": [
        {"name": "to", "type": "address"},
        {"name": "facilitator", "type": "address"},
        {"name": "validAfter", "type": "uint256"},
    ],
}
# The x402UptoPermit2Proxy's settle (the official SDK's ABI), and Permit2's nonce bitmap.
UPTO_PROXY_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "settle",
        "stateMutability": "nonpayable",
        "inputs": [
            _PERMIT_TUPLE,
            {"name": "amount", "type": "uint256"},
            {"name": "owner", "type": "address"},
            _WITNESS_TUPLE,
            {"name": "signature", "type": "bytes"},
        ],
        "outputs": [],
    }
]
PERMIT2_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "nonceBitmap",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}, {"name": "wordPos", "type": "uint256"}],
        "outputs": [{"name": "", "type": "uint256"}],
    }
]
ALLOWANCE_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "allowance",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}, {"name": "spender", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    }
]
# The upto proxy's and Permit2's custom errors, as the SDK reads them.
_PERMIT_USED = ("InvalidNonce",)

T = TypeVar("T")


class EvmSettlement:
    """The :class:`~tollway.x402.facilitator.Settlement` of a real EVM chain."""

    def __init__(
        self,
        ledger: Ledger,
        w3: Web3,
        network: str,
        asset: str,
        facilitator_key: str,
        *,
        receipt_timeout_s: float = 60,
        poll_interval_s: float = 0.5,
        gas_margin: float = 1.2,
        follow_s: float = 3600,
    ) -> None:
        chain = exact_evm.chain_id(network)
        if chain is None:
            raise ValueError(f"network {network!r} is not eip155:<chain id>")
        if not exact_evm.is_address(asset):
            raise ValueError(f"asset {asset!r} is not a 0x address")
        self.ledger = ledger
        self.w3 = w3
        self.network = network
        self.asset = to_checksum_address(asset)
        self.chain = chain
        self.account: LocalAccount = Account.from_key(facilitator_key)
        self.receipt_timeout_s = receipt_timeout_s
        self.poll_interval_s = poll_interval_s
        self.gas_margin = gas_margin
        self.token: Contract = w3.eth.contract(address=self.asset, abi=TOKEN_ABI + ALLOWANCE_ABI)
        self.permit2: Contract = w3.eth.contract(
            address=to_checksum_address(upto_evm.PERMIT2_ADDRESS), abi=PERMIT2_ABI
        )
        self.upto_proxy: Contract = w3.eth.contract(
            address=to_checksum_address(upto_evm.UPTO_PROXY_ADDRESS), abi=UPTO_PROXY_ABI
        )
        self._send_lock = asyncio.Lock()
        self._next_nonce: int | None = None  # the facilitator's next account nonce, once known
        self._chain_checked = False
        self._inflight: set[str] = set()  # authorizations being settled by this process
        self._followers: set[asyncio.Future[None]] = set()  # pending settlements still watched
        self.follow_s = follow_s

    @classmethod
    def from_rpc(
        cls,
        ledger: Ledger,
        rpc_url: str,
        network: str,
        asset: str,
        facilitator_key: str,
        *,
        receipt_timeout_s: float = 60,
        rpc_timeout_s: float = 30,
    ) -> EvmSettlement:
        """Over JSON-RPC (HTTP) at ``rpc_url``."""
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": rpc_timeout_s}))
        return cls(ledger, w3, network, asset, facilitator_key, receipt_timeout_s=receipt_timeout_s)

    @property
    def facilitator_address(self) -> str:
        return str(self.account.address)

    def nonce_key(self, authorizer: str, nonce: str) -> str:
        """The ledger idempotency key of a settlement (the same as devnet's)."""
        return authorization_key(self.network, self.asset, authorizer, nonce)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def check_chain(self) -> None:
        """Fail loudly if the RPC endpoint serves another chain than ``network`` names."""
        if self._chain_checked:
            return
        actual = await self._run(lambda: int(self.w3.eth.chain_id))
        if actual != self.chain:
            raise RuntimeError(f"x402: the RPC endpoint is chain {actual}, but network is {self.network}")
        self._chain_checked = True

    # ------------------------------------------------------------- reads

    async def nonce_used(self, authorizer: str, nonce: str) -> bool:
        """EIP-3009's ``authorizationState``, or for a Permit2 nonce (``permit2:<n>``)
        its bit in Permit2's ``nonceBitmap(owner, n >> 8)``."""
        owner = to_checksum_address(authorizer)
        if nonce.startswith("permit2:"):
            n = int(nonce.removeprefix("permit2:"))
            word = self.permit2.functions.nonceBitmap(owner, n >> 8)
            bitmap = int(await self._run(word.call, {"from": self.facilitator_address}))
            return bool(bitmap >> (n & 0xFF) & 1)
        fn = self.token.functions.authorizationState(owner, _bytes32(nonce))
        return bool(await self._run(fn.call, {"from": self.facilitator_address}))

    async def balance(self, address: str) -> int:
        fn = self.token.functions.balanceOf(to_checksum_address(address))
        return int(await self._run(fn.call, {"from": self.facilitator_address}))

    async def covers(self, auth: Authorization | Permit) -> bool:
        """The balance covers the value; for a permit, Permit2's allowance too."""
        if await self.balance(auth.payer) < auth.value:
            return False
        if isinstance(auth, Permit):
            fn = self.token.functions.allowance(auth.payer, upto_evm.PERMIT2_ADDRESS)
            return int(await self._run(fn.call, {"from": self.facilitator_address})) >= auth.value
        return True

    async def spendable(self, auth: Authorization | Permit) -> int | None:
        return await self.balance(auth.payer)

    # ------------------------------------------------------------ settle

    async def transfer_with_authorization(
        self, auth: Authorization, pay_to: str, meta: dict[str, Any], credit: Credit | None = None
    ) -> str:
        await self.check_chain()
        key = self.nonce_key(auth.payer, auth.nonce)
        if key in self._inflight:  # a concurrent settlement of it in this process: one sends
            raise PaymentInvalid(wire.NONCE_USED, "this authorization is already being settled", auth.payer)
        self._inflight.add(key)
        try:
            return await self._settle(auth, auth.value, pay_to, meta, credit)
        finally:
            self._inflight.discard(key)

    async def permit_witness_transfer(
        self, permit: Permit, amount: int, pay_to: str, meta: dict[str, Any], credit: Credit | None = None
    ) -> str:
        """Settle ``amount`` of an upto permit through the x402 upto proxy, once."""
        await self.check_chain()
        key = self.nonce_key(permit.payer, permit.nonce)
        if key in self._inflight:
            raise PaymentInvalid(wire.NONCE_USED, "this authorization is already being settled", permit.payer)
        self._inflight.add(key)
        try:
            return await self._settle(permit, upto_evm.settle_amount(permit, amount), pay_to, meta, credit)
        finally:
            self._inflight.discard(key)

    def _call_for(self, auth: Authorization | Permit, value: int) -> Any:
        """The contract call that moves ``value`` as ``auth`` allows."""
        if isinstance(auth, Permit):
            return self.upto_proxy.functions.settle(
                ((to_checksum_address(auth.token), auth.value), auth.permit_nonce, auth.deadline),
                value,
                auth.payer,
                (to_checksum_address(auth.to), to_checksum_address(auth.facilitator), auth.valid_after),
                bytes.fromhex(auth.signature[2:]),
            )
        v, r, s = _vrs(auth.signature)
        return self.token.get_function_by_signature(TRANSFER_WITH_AUTHORIZATION_SIG)(
            auth.payer,
            to_checksum_address(auth.to),
            auth.value,
            auth.valid_after,
            auth.valid_before,
            _bytes32(auth.nonce),
            v,
            r,
            s,
        )

    async def _settle(
        self,
        auth: Authorization | Permit,
        value: int,
        pay_to: str,
        meta: dict[str, Any],
        credit: Credit | None = None,
    ) -> str:
        if await self.nonce_used(auth.payer, auth.nonce):
            raise PaymentInvalid(wire.NONCE_USED, "this authorization was already used", auth.payer)
        if await self.balance(auth.payer) < value:
            raise PaymentInvalid(wire.INSUFFICIENT_FUNDS, "the payer's balance is too low", auth.payer)
        tx = await self._send(self._call_for(auth, value), auth)
        try:
            receipt = await self._receipt(tx, auth)
        except PaymentInvalid as e:
            if e.reason == wire.SETTLEMENT_PENDING:  # keep watching: book it if it is mined
                task = asyncio.ensure_future(self._book_when_mined(tx, auth, value, pay_to, meta, credit))
                self._followers.add(task)
                task.add_done_callback(self._followers.discard)
            raise
        return await self._confirmed(tx, receipt, auth, value, pay_to, meta, credit)

    async def aclose(self) -> None:
        """Stop following pending settlements (the runtime is closing)."""
        for task in list(self._followers):
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)

    async def _book_when_mined(
        self,
        tx: str,
        auth: Authorization | Permit,
        value: int,
        pay_to: str,
        meta: dict[str, Any],
        credit: Credit | None,
    ) -> None:
        """A settlement reported pending, followed in this process for up to
        ``follow_s``: once mined, it is booked in the ledger like any other."""
        deadline = time.monotonic() + self.follow_s
        while time.monotonic() < deadline:
            await asyncio.sleep(self.poll_interval_s)
            try:
                receipt = await self._run(self.w3.eth.get_transaction_receipt, HexStr(tx))
            except TransactionNotFound:
                continue
            except Exception:  # the node is unreachable for now
                log.warning("x402: following pending settlement %s", tx, exc_info=True)
                continue
            try:
                await self._confirmed(tx, receipt, auth, value, pay_to, meta, credit)
                log.info("x402 settlement %s was mined after all: booked", tx)
            except PaymentInvalid as e:
                log.warning("x402 settlement %s was mined but not booked: %s", tx, e.message)
            return
        log.error("x402 settlement %s was still not mined after %ss: not booked", tx, self.follow_s)

    async def _confirmed(
        self,
        tx: str,
        receipt: TxReceipt,
        auth: Authorization | Permit,
        value: int,
        pay_to: str,
        meta: dict[str, Any],
        credit: Credit | None = None,
    ) -> str:
        """A receipt's verdict: booked in the ledger if it moved the money as authorized."""
        if receipt["status"] != 1:
            if await self.nonce_used(auth.payer, auth.nonce):  # another process's transaction won
                raise PaymentInvalid(
                    wire.NONCE_USED,
                    f"this authorization was already used (transaction {tx} reverted)",
                    auth.payer,
                )
            raise PaymentInvalid(wire.TRANSACTION_FAILED, f"transaction {tx} reverted", auth.payer)
        if not self._transferred(receipt, auth.payer, pay_to, value):
            raise PaymentInvalid(
                wire.TRANSACTION_FAILED, f"transfer event mismatch in transaction {tx}", auth.payer
            )
        await self._record(auth, value, pay_to, meta, tx, credit)
        return tx

    async def _send(self, fn: Any, auth: Authorization | Permit) -> str:
        """Estimate, sign and send as the facilitator; the transaction hash (0x)."""
        sender = self.facilitator_address
        try:
            gas = int(await self._run(fn.estimate_gas, {"from": sender}))
        except Exception as e:
            reason = _revert_reason(e)
            if reason is None:
                raise
            raise _reverted(reason, auth) from None
        async with self._send_lock:
            pending = int(await self._run(self.w3.eth.get_transaction_count, sender, "pending"))
            nonce = max(pending, self._next_nonce or 0)
            params: TxParams = {
                "from": sender,
                "nonce": Nonce(nonce),
                "chainId": self.chain,
                "gas": int(gas * self.gas_margin),
            }
            built = await self._run(fn.build_transaction, params)
            signed = self.account.sign_transaction(built)
            try:
                h = await self._run(self.w3.eth.send_raw_transaction, signed.raw_transaction)
            except Exception:
                self._next_nonce = None  # unknown: ask the node next time
                raise
            self._next_nonce = nonce + 1
        return "0x" + bytes(h).hex()

    async def _receipt(self, tx: str, auth: Authorization | Permit) -> TxReceipt:
        deadline = time.monotonic() + self.receipt_timeout_s
        while True:
            try:
                return await self._run(self.w3.eth.get_transaction_receipt, HexStr(tx))
            except TransactionNotFound:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                self._next_nonce = None  # the transaction may yet be dropped: ask the node next time
                log.warning(
                    "x402 settlement %s of %s not mined within %ss", tx, auth.payer, self.receipt_timeout_s
                )
                raise PaymentInvalid(
                    wire.SETTLEMENT_PENDING,
                    f"transaction {tx} was sent but not mined within {self.receipt_timeout_s:g} s",
                    auth.payer,
                )
            await asyncio.sleep(min(self.poll_interval_s, left))

    def _transferred(self, receipt: TxReceipt, payer: str, pay_to: str, value: int) -> bool:
        ours = [lg for lg in receipt["logs"] if str(lg["address"]).lower() == self.asset.lower()]
        events = self.token.events.Transfer().process_receipt({**receipt, "logs": ours}, errors=DISCARD)
        return any(
            str(e["args"]["from"]).lower() == payer.lower()
            and str(e["args"]["to"]).lower() == pay_to.lower()
            and int(e["args"]["value"]) == value
            for e in events
        )

    async def _record(
        self,
        auth: Authorization | Permit,
        value: int,
        pay_to: str,
        meta: dict[str, Any],
        tx: str,
        credit: Credit | None = None,
    ) -> None:
        """The mined settlement into the ledger: inbound -> revenue, with its usage event."""
        try:
            await record_received(
                self.ledger,
                INBOUND_ACCOUNT,
                self.network,
                self.asset,
                auth,
                pay_to,
                tx,
                meta,
                credit,
                amount=value,
            )
        except PaymentInvalid:
            raise
        except Exception:
            log.exception("x402 settlement %s was mined but not recorded in the ledger", tx)
            raise


def _bytes32(hex32: str) -> bytes:
    return bytes.fromhex(hex32.removeprefix("0x"))


def _vrs(signature: str) -> tuple[int, bytes, bytes]:
    """A 65-byte ``r || s || v`` signature as the token's (v, r, s); v in {27, 28}."""
    raw = bytes.fromhex(signature.removeprefix("0x"))
    v = raw[64]
    return (v + 27 if v < 27 else v), raw[:32], raw[32:64]


def _revert_reason(e: BaseException) -> str | None:
    """The revert message of a call that would revert, or None if ``e`` is something else.
    JSON-RPC nodes raise ``ContractLogicError``; eth-tester's in-process chain raises its
    own ``TransactionFailed("execution reverted: ...")``."""
    if isinstance(e, ContractLogicError):
        return str(e.message or e)
    if type(e).__name__ == "TransactionFailed" and type(e).__module__.startswith("eth_tester"):
        return str(e)
    return None


def _reverted(reason: str, auth: Authorization | Permit) -> PaymentInvalid:
    if _USED in reason or any(e in reason for e in _PERMIT_USED):
        return PaymentInvalid(wire.NONCE_USED, "this authorization was already used", auth.payer)
    if _BALANCE in reason:
        return PaymentInvalid(wire.INSUFFICIENT_FUNDS, "the payer's balance is too low", auth.payer)
    return PaymentInvalid(wire.TRANSACTION_FAILED, f"the transfer would revert: {reason}", auth.payer)
