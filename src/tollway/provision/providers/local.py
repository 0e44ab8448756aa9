"""The embedded provider: tollway is the registry, the DNS zone store and the host.

- Domains: the local registry is the ``provision_domains`` table (written by
  the service in the purchase's transaction), priced by ``[provision.tlds]``.
- DNS: the zone store is the ``provision_records`` table; the edge routes by it.
- Deployments: each live version runs in its own worker process (see
  :mod:`tollway.provision.runner`), behind the edge's Host routing.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.ids import new_id
from tollway.core.schema import provision_domains as D
from tollway.provision.config import ProvisionConfig
from tollway.provision.dns import Record
from tollway.provision.providers.base import DeployFailed, Quote, Release
from tollway.provision.runner import Runner, Spec
from tollway.provision.sandbox import SandboxUnavailable
from tollway.provision.workers import WorkerFailed


class LocalProvider:
    name = "local"

    def __init__(self, cfg: ProvisionConfig, runner: Runner, engine: AsyncEngine) -> None:
        self.cfg = cfg
        self.engine = engine
        self.runner = runner
        self.reserved = {label.lower() for label in cfg.reserved_labels}

    async def quote(self, domain: str, tld: str) -> Quote:
        price = self.cfg.tlds[tld]
        label = domain.split(".", 1)[0]
        if label in self.reserved:
            return Quote(domain, False, price.price, price.renew, "reserved by the registry")
        return Quote(domain, True, price.price, price.renew)

    async def register(self, domain: str, years: int) -> None:
        """The registration is the service's row in ``provision_domains``: nothing else to do."""

    async def renew(self, domain: str, years: int) -> None:
        """As :meth:`register`: the new expiry is the service's row."""

    async def release_domain(self, domain: str) -> None:
        """The name returns to the registry when the service marks its row deleted."""

    async def domains(self) -> list[str]:
        async with self.engine.connect() as conn:
            q = select(D.c.name).where(D.c.provider == self.name, D.c.status == "active").order_by(D.c.name)
            return [r[0] for r in await conn.execute(q)]

    async def create_record(self, zone: str, record: Record) -> str:
        return new_id("rec")

    async def delete_record(self, zone: str, ref: str) -> None:
        """The zone store's row is deleted by the service."""

    async def deploy(self, release: Release, hostnames: list[str]) -> None:
        spec = Spec(
            release.deployment_id,
            release.version,
            release.dir,
            release.kind,
            release.entrypoint,
            release.host,
            release.env,
        )
        try:
            await self.runner.activate(spec)
        except SandboxUnavailable as e:
            raise DeployFailed(f"no sandbox for the app: {e}", "sandbox_unavailable", 503) from None
        except WorkerFailed as e:
            raise DeployFailed(str(e)) from None

    async def bind(self, name: str, hostname: str) -> None:
        """Nothing more: the edge routes by the zone store, where the hostname's record already is."""

    async def delete_deployment(self, deployment_id: str, name: str, hostnames: list[str]) -> None:
        self.runner.stop(deployment_id, forget=True)

    async def aclose(self) -> None:
        await self.runner.close()
