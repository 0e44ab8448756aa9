"""An agent's definition: model, system prompt, tools, memory, retrieval,
budget and guardrails (with its escalation rules). Written in ``tollway.toml``
(``[[agents.definitions]]``) or sent to the admin API; every change is a new
version, and each session records the version it runs."""

from __future__ import annotations

import re
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tollway.agents.guardrails import GuardPolicy
from tollway.core.errors import TollwayError

NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)


def unique_names(items: list[T], what: str) -> list[T]:
    """``items`` unchanged, or a ValueError naming the first name used twice."""
    names = [i.name for i in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate {what} name {dup[0]!r}")
    return items


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolSpec(_Strict):
    """An HTTP endpoint the model may call. ``url`` is a template: ``{name}``
    takes the argument of that name (URL-quoted); the other arguments go in the
    query string (GET, DELETE) or the JSON body. A ``url`` that is a path
    (``/demo/orders/{id}``) is on this tollway server, at the port it serves on."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = Field("", max_length=1000)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str = Field(pattern=r"^(https?://|/)\S*$")
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    idempotent: bool = True  # a failed idempotent call is retried once
    rate_limit_per_minute: int = Field(60, ge=0)  # per session; 0 = none
    timeout_seconds: float = Field(10.0, gt=0, le=300)
    paid: bool = False  # paid over x402 through the wallet broker
    category: str = Field("api_access", max_length=32)
    max_price: str = ""  # the most one call may cost ("$0.01"); empty = the wallet's policy decides

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        if v.get("type") != "object":
            raise ValueError("parameters is a JSON schema of type object")
        try:
            Draft202012Validator.check_schema(v)
        except SchemaError as e:
            raise ValueError(f"parameters is not a valid JSON schema: {e.message}") from None
        return v

    @model_validator(mode="after")
    def _placeholders(self) -> ToolSpec:
        props = self.parameters.get("properties") or {}
        for name in _PLACEHOLDER.findall(self.url):
            if name not in props:
                raise ValueError(f"url placeholder {{{name}}} is not one of the parameters")
        return self

    def placeholders(self) -> list[str]:
        return _PLACEHOLDER.findall(self.url)

    def function(self) -> dict[str, Any]:
        """The OpenAI function-calling shape."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


class MemoryPolicy(_Strict):
    max_context_tokens: int = Field(1500, ge=64, le=1_000_000)
    summarize_after_turns: int = Field(8, ge=0)  # 0 = never summarize
    keep_recent_turns: int = Field(4, ge=1)  # turns never folded into the summary
    ttl_seconds: int = Field(0, ge=0)  # idle sessions' messages are purged after this; 0 = kept


class RetrievalSpec(_Strict):
    index: str = ""  # a vector index of ``owner``; empty = no retrieval
    owner: str = ""  # the customer id owning the index (and paying for ingestion)
    top_k: int = Field(3, ge=1, le=50)
    chunk_chars: int = Field(800, ge=100, le=20_000)
    overlap_chars: int = Field(120, ge=0, le=5_000)

    @model_validator(mode="after")
    def _owner(self) -> RetrievalSpec:
        if self.index and not self.owner:
            raise ValueError("retrieval.owner (a customer id) is required with retrieval.index")
        if self.overlap_chars >= self.chunk_chars:
            raise ValueError("retrieval.overlap_chars must be smaller than chunk_chars")
        return self


class BudgetSpec(_Strict):
    usd: str = ""  # per session, e.g. "$0.50"
    neurons: int = Field(0, ge=0)  # per session, converted at [inference] usd_per_1000_neurons

    @field_validator("usd")
    @classmethod
    def _amount(cls, v: str) -> str:
        if v:
            from tollway.core.money import parse_amount

            try:
                parse_amount(v)
            except TollwayError as e:
                raise ValueError(e.message) from None
        return v


class AgentSpec(_Strict):
    name: str = Field(pattern=NAME)
    model: str = Field(min_length=1)
    system_prompt: str = Field("You are a helpful assistant.", max_length=20_000)
    tools: list[ToolSpec] = Field(default_factory=list)
    memory: MemoryPolicy = MemoryPolicy()
    retrieval: RetrievalSpec = RetrievalSpec()
    budget: BudgetSpec = BudgetSpec()
    # tollway.agents.guardrails.GuardPolicy: filters, refusals and escalation rules.
    guardrails: dict[str, Any] = Field(default_factory=dict)
    max_steps: int = Field(4, ge=1, le=20)  # model calls per turn
    max_tokens: int = Field(256, ge=1)  # per model call
    temperature: float | None = Field(None, ge=0, le=2)
    # Paid tools: the environment variable holding the agent's wallet token.
    wallet_token_env: str = Field("", pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$")

    @field_validator("tools")
    @classmethod
    def _unique(cls, v: list[ToolSpec]) -> list[ToolSpec]:
        return unique_names(v, "tool")

    @field_validator("guardrails")
    @classmethod
    def _guard(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            GuardPolicy.from_config(v)
        except TollwayError as e:
            raise ValueError(e.message) from None
        return v

    @model_validator(mode="after")
    def _wallet(self) -> AgentSpec:
        if any(t.paid for t in self.tools) and not self.wallet_token_env:
            raise ValueError("paid tools need wallet_token_env (the agent's wallet token)")
        return self

    def policy(self) -> GuardPolicy:
        return GuardPolicy.from_config(self.guardrails)

    def tool(self, name: str) -> ToolSpec | None:
        return next((t for t in self.tools if t.name == name), None)
