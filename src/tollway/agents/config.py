"""``[agents]`` and the agent definitions ``[[agents.definitions]]``."""

from __future__ import annotations

from typing import Protocol

from pydantic import Field, field_validator

from tollway.agents.spec import AgentSpec, unique_names
from tollway.core.config import DatabaseConfig, Section, ServerConfig


class AgentsConfig(Section):
    """Durable agents (see tollway.agents and docs/agents.md)."""

    # Hosts or CIDRs on private networks agents' tools may reach (e.g. "127.0.0.1/32").
    tool_allow: list[str] = Field(default_factory=list)
    max_tool_bytes: int = Field(1024 * 1024, ge=1024)  # a tool's answer is cut off past this
    purge_seconds: float = Field(60.0, gt=0)  # how often stale memory (memory.ttl_seconds) is purged
    # Serve GET /demo/orders/{id}: the order-status tool of `tollway init --demo`'s support agent.
    demo: bool = False
    definitions: list[AgentSpec] = Field(default_factory=list)

    @field_validator("definitions")
    @classmethod
    def _unique_agents(cls, v: list[AgentSpec]) -> list[AgentSpec]:
        return unique_names(v, "agent")


class AgentsSettings(Protocol):
    """What agents read of the whole configuration (``tollway.settings.Settings`` is one)."""

    @property
    def agents(self) -> AgentsConfig: ...

    @property
    def database(self) -> DatabaseConfig: ...

    @property
    def server(self) -> ServerConfig: ...
