"""Statements the ledger's writer runs for the faces, on their own tables.

A face (the request log, x402 claims, the wallets) defines each statement it
hands the ledger next to its table, as a :class:`Statement`, and passes rows
of its type: the ledger runs them inside its next batch's transaction
(``Ledger.ride``) or in one of their own between batches
(``Ledger.write_aside``). The ledger knows no face's SQL; it executes what
it is handed through this one door.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tollway.core.pointread import numbered

Row = TypeVar("Row", bound=tuple[Any, ...])


@dataclass(frozen=True, slots=True)
class Statement(Generic[Row]):
    """One statement and the type of its rows. ``sql`` has ``?`` placeholders
    (SQLite); the PostgreSQL text is derived once. ``postgres``: the rows carry
    exactly the column types, so they may ride on PostgreSQL too (asyncpg
    types parameters from the statement, with no casts)."""

    sql: str
    postgres: bool = False
    pg_sql: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pg_sql", numbered(self.sql))
