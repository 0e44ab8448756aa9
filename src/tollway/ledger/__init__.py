"""A two-phase ledger modeled on TigerBeetle: immutable transfers, pending →
post/void/expire, balance bounds, idempotency keys, group commit."""

from tollway.ledger.ledger import Ledger
from tollway.ledger.types import Account, AccountKind, Transfer, TransferKind

__all__ = ["Account", "AccountKind", "Ledger", "Transfer", "TransferKind"]
