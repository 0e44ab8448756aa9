"""Request bodies. Strict: wrong types and unknown fields are refused, never coerced."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tollway.ledger.types import AccountKind


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CustomerIn(Strict):
    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(None, max_length=320)


class ApiKeyIn(Strict):
    customer_id: str = Field(min_length=1, max_length=64)
    name: str = Field("", max_length=200)
    scopes: list[str] = Field(default_factory=lambda: ["*"], min_length=1, max_length=50)


class AccountIn(Strict):
    kind: AccountKind = Field(strict=False)
    name: str = Field("", max_length=200)
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")


class TransferIn(Strict):
    debit_account_id: str = Field(min_length=1, max_length=64)
    credit_account_id: str = Field(min_length=1, max_length=64)
    amount: int = Field(description="Micro-USD (1 USD = 1,000,000). A positive integer.")
    pending: bool = Field(False, description="Reserve only: post or void it later.")
    timeout: int | None = Field(None, description="Seconds before a pending transfer expires (voids itself).")
    description: str = Field("", max_length=500)


class PostIn(Strict):
    amount: int | None = Field(
        None, description="Micro-USD to take; omitted means all. The rest is released."
    )
