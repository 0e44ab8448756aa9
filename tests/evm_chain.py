"""An in-process EVM chain for tests: py-evm behind eth-tester, chain id 31337,
with the committed EIP3009Token deployed ("USD Coin", version "2"), a
facilitator key funded with ETH, and minting to payers.

eth-tester hard-codes its chain id (131277322940537) on a chain class it makes
afresh at every genesis, and web3's tester provider answers ``eth_chainId``
with a constant; both are overridden, so the token's EIP-712 domain (CHAINID)
and ``w3.eth.chain_id`` are 31337, the chain of ``x402_helpers.NETWORK``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester import EthereumTester, PyEVMBackend
from web3 import Web3
from web3.contract import Contract
from web3.providers.eth_tester import EthereumTesterProvider
from web3.providers.eth_tester.defaults import API_ENDPOINTS, static_return

import tollway.x402

CHAIN_ID = 31337
NETWORK = f"eip155:{CHAIN_ID}"
CONTRACTS = Path(tollway.x402.__file__).parent / "contracts"
ARTIFACT = CONTRACTS / "EIP3009Token.json"
SOURCE = CONTRACTS / "EIP3009Token.sol"


class _ChainIdBackend(PyEVMBackend):  # type: ignore[misc]
    """A py-evm backend whose CHAINID is ``chain_id`` (survives snapshots and resets)."""

    def __init__(self, chain_id: int, **kwargs: Any) -> None:
        self._chain_id = chain_id
        super().__init__(**kwargs)

    def reset_to_genesis(self, *args: Any, **kwargs: Any) -> None:
        super().reset_to_genesis(*args, **kwargs)
        type(self.chain).chain_id = self._chain_id  # a class made per genesis: no one else sees it


class _SerialProvider(EthereumTesterProvider):  # type: ignore[misc]
    """One request at a time: eth-tester is not thread-safe, and EvmSettlement calls
    web3 from worker threads (a JSON-RPC node serializes for itself)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.RLock()

    def make_request(self, method: Any, params: Any) -> Any:
        with self.lock:
            return super().make_request(method, params)


def artifact() -> dict[str, Any]:
    art: dict[str, Any] = json.loads(ARTIFACT.read_text())
    return art


@dataclass
class EvmChain:
    w3: Web3
    tester: EthereumTester  # direct use: through ``manual_mining`` and ``mine`` (they take the lock)
    token: Contract
    owner: str  # deployer and minter (an unlocked eth-tester account)
    facilitator: LocalAccount  # submits settlements; holds ETH for gas

    @property
    def asset(self) -> str:
        return str(self.token.address)

    @property
    def facilitator_key(self) -> str:
        return "0x" + bytes(self.facilitator.key).hex()

    def mint(self, to: str, amount: int) -> None:
        tx = self.token.functions.mint(Web3.to_checksum_address(to), amount).transact({"from": self.owner})
        assert self.w3.eth.wait_for_transaction_receipt(tx)["status"] == 1

    def balance(self, address: str) -> int:
        fn = self.token.functions.balanceOf(Web3.to_checksum_address(address))
        return int(fn.call({"from": self.owner}))

    def used(self, authorizer: str, nonce: str) -> bool:
        fn = self.token.functions.authorizationState(
            Web3.to_checksum_address(authorizer), bytes.fromhex(nonce[2:])
        )
        return bool(fn.call({"from": self.owner}))

    def manual_mining(self) -> None:
        """Sent transactions stay pending until :meth:`mine`."""
        with self._lock:
            self.tester.disable_auto_mine_transactions()

    def mine(self) -> None:
        with self._lock:
            self.tester.mine_blocks()

    @property
    def _lock(self) -> threading.RLock:
        provider = self.w3.provider
        assert isinstance(provider, _SerialProvider)
        return provider.lock

    def fund_eth(self, to: str, wei: int = 10**18) -> None:
        tx = self.w3.eth.send_transaction(
            {"from": self.owner, "to": Web3.to_checksum_address(to), "value": wei}
        )
        self.w3.eth.wait_for_transaction_receipt(tx)


# Stand-ins for Permit2 and the x402 upto proxy, at their canonical addresses (with
# ``start(permit2=True)``): their runtime code is placed there at genesis.
STUBS = {
    "0x000000000022D473030F116dDEE9F6B43aC78BA3": CONTRACTS / "Permit2Stub.json",
    "0x4020A4f3b7b90ccA423B9fabCc0CE57C6C240002": CONTRACTS / "X402UptoProxyStub.json",
}


def _genesis(permit2: bool) -> dict[bytes, dict[str, Any]] | None:
    if not permit2:
        return None
    state = dict(PyEVMBackend.generate_genesis_state(num_accounts=10))
    for address, path in STUBS.items():
        code = bytes.fromhex(json.loads(path.read_text())["deployedBytecode"][2:])
        state[bytes.fromhex(address[2:])] = {"balance": 0, "nonce": 1, "code": code, "storage": {}}
    return state


def start(
    name: str = "USD Coin", version: str = "2", chain_id: int = CHAIN_ID, *, permit2: bool = False
) -> EvmChain:
    """A fresh chain with the token deployed and a funded facilitator (and, with
    ``permit2``, the Permit2 and x402 upto proxy stand-ins in place)."""
    tester = EthereumTester(_ChainIdBackend(chain_id, genesis_state=_genesis(permit2)))
    endpoints = {ns: dict(fns) for ns, fns in API_ENDPOINTS.items()}  # a copy: never the global
    endpoints["eth"]["chainId"] = static_return(chain_id)
    w3 = Web3(_SerialProvider(tester, api_endpoints=endpoints))
    owner = w3.eth.accounts[0]
    art = artifact()
    tx = (
        w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        .constructor(name, version)
        .transact({"from": owner})
    )
    receipt = w3.eth.wait_for_transaction_receipt(tx)
    assert receipt["status"] == 1
    token = w3.eth.contract(address=receipt["contractAddress"], abi=art["abi"])
    chain = EvmChain(w3, tester, token, owner, Account.create())
    chain.fund_eth(chain.facilitator.address)
    return chain
