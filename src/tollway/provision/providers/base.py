"""The provider interface: domains, DNS records and deployments.

The service (:mod:`tollway.provision.service`) validates every request,
checks the trademark guard, holds the money, keeps the rows of what each
wallet bought, and calls a provider for the effect itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tollway.provision.dns import Record


@dataclass(frozen=True, slots=True)
class Quote:
    domain: str
    available: bool
    register: int  # micro-USD a year
    renew: int  # micro-USD a year
    reason: str | None = None  # why not available


@dataclass(frozen=True, slots=True)
class Release:
    """A version of a deployment to make live."""

    deployment_id: str
    name: str
    version: int
    kind: str  # asgi | wsgi | static
    entrypoint: str
    dir: Path  # the unpacked bundle
    host: str  # the deployment's default host name
    env: tuple[tuple[str, str], ...] = ()  # what the deployment declares for its environment


class DeployFailed(Exception):
    """The version did not go live; the previous one still serves."""

    def __init__(self, message: str, code: str = "deploy_failed", status: int = 422) -> None:
        super().__init__(message)
        self.code, self.status = code, status


class Provider(Protocol):
    name: str  # the wallet payee: its per-provider cap applies

    async def quote(self, domain: str, tld: str) -> Quote: ...

    async def register(self, domain: str, years: int) -> None: ...

    async def renew(self, domain: str, years: int) -> None: ...

    async def release_domain(self, domain: str) -> None: ...

    async def domains(self) -> list[str]: ...

    async def create_record(self, zone: str, record: Record) -> str:
        """Create it; returns the provider's id for it."""
        ...

    async def delete_record(self, zone: str, ref: str) -> None: ...

    async def deploy(self, release: Release, hostnames: list[str]) -> None:
        """Make ``release`` live (raises :class:`DeployFailed`, leaving the previous one live)."""
        ...

    async def bind(self, name: str, hostname: str) -> None:
        """Route ``hostname`` (already in the zone) to the deployment ``name``."""
        ...

    async def delete_deployment(self, deployment_id: str, name: str, hostnames: list[str]) -> None: ...

    async def aclose(self) -> None: ...
