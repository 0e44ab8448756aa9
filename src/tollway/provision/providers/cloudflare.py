"""The Cloudflare provider, through the official SDK (``cloudflare`` on PyPI).

- Domains: Registrar. Availability comes from ``GET
  /accounts/{id}/registrar/domains/{name}`` (``available``, ``can_register``,
  ``supported_tld``), the price from ``[provision.tlds]``. Registering
  configures the name at Registrar (auto-renew, lock, WHOIS privacy) and adds
  its zone. Cloudflare's public API has no call that buys a brand-new name:
  the purchase itself is completed in Cloudflare's dashboard or by transfer.
- DNS: ``/zones/{zone_id}/dns_records``.
- Deployments: a Python Worker (``python_workers``) uploaded as a multipart
  module script, and a Workers route per bound hostname. Static sites need
  Workers' asset upload sessions, which this provider does not do: deploy
  them with the local provider.

The API token is read from the environment variable named by ``[provision.cloudflare]
api_token_env`` in the broker's process, and never leaves it.
"""

from __future__ import annotations

import os
from typing import Any

import cloudflare
from cloudflare import AsyncCloudflare

from tollway.core.config import ConfigError
from tollway.core.errors import ErrorType, TollwayError, invalid
from tollway.provision.config import ProvisionConfig
from tollway.provision.dns import Record
from tollway.provision.providers.base import DeployFailed, Quote, Release


def _upstream(e: cloudflare.APIError) -> TollwayError:
    return TollwayError(
        ErrorType.API, "provider_error", f"Cloudflare refused the call: {e.message}", None, status=502
    )


class CloudflareProvider:
    name = "cloudflare"

    def __init__(self, cfg: ProvisionConfig) -> None:
        c = cfg.cloudflare
        token = os.environ.get(c.api_token_env, "")
        if not token or not c.account_id:
            raise ConfigError(
                "environment", c.api_token_env, "the cloudflare provider needs an API token and account_id"
            )
        self.cfg = cfg
        self.account = c.account_id
        kw: dict[str, Any] = {"api_token": token, "max_retries": 0}
        if c.base_url:
            kw["base_url"] = c.base_url
        self.client = AsyncCloudflare(**kw)
        self._zones: dict[str, str] = {}

    async def _zone(self, zone: str) -> str:
        zid = self._zones.get(zone)
        if zid is None:
            page = await self.client.zones.list(name=zone, account={"id": self.account})
            found = [z for z in page.result if z.name == zone]
            if not found:
                raise TollwayError(
                    ErrorType.API, "provider_error", f"Cloudflare has no zone {zone}", None, status=502
                )
            zid = self._zones[zone] = found[0].id
        return zid

    async def quote(self, domain: str, tld: str) -> Quote:
        price = self.cfg.tlds[tld]
        try:
            got: Any = await self.client.registrar.domains.get(domain, account_id=self.account)
        except cloudflare.APIError as e:
            raise _upstream(e) from None
        info = got if isinstance(got, dict) else {}
        if not info.get("supported_tld", True):
            return Quote(
                domain, False, price.price, price.renew, "Cloudflare Registrar does not sell this TLD"
            )
        ok = bool(info.get("available")) and bool(info.get("can_register", True))
        return Quote(domain, ok, price.price, price.renew, None if ok else "not available at Registrar")

    async def register(self, domain: str, years: int) -> None:
        try:
            await self.client.registrar.domains.update(
                domain, account_id=self.account, auto_renew=True, locked=True, privacy=True
            )
            await self.client.zones.create(account={"id": self.account}, name=domain, type="full")
        except cloudflare.APIError as e:
            raise _upstream(e) from None

    async def renew(self, domain: str, years: int) -> None:
        try:
            await self.client.registrar.domains.update(domain, account_id=self.account, auto_renew=True)
        except cloudflare.APIError as e:
            raise _upstream(e) from None

    async def release_domain(self, domain: str) -> None:
        try:
            await self.client.registrar.domains.update(domain, account_id=self.account, auto_renew=False)
        except cloudflare.APIError as e:
            raise _upstream(e) from None

    async def domains(self) -> list[str]:
        out = []
        async for d in self.client.registrar.domains.list(account_id=self.account):
            name = getattr(d, "name", None) or getattr(d, "id", None)
            if name:
                out.append(str(name))
        return out

    async def create_record(self, zone: str, record: Record) -> str:
        kw: dict[str, Any] = {
            "zone_id": await self._zone(zone),
            "name": record.name,
            "type": record.type,
            "content": record.content,
            "ttl": record.ttl,
        }
        if record.priority is not None:
            kw["priority"] = record.priority
        try:
            created = await self.client.dns.records.create(**kw)
        except cloudflare.APIError as e:
            raise _upstream(e) from None
        if created is None or not created.id:
            raise TollwayError(
                ErrorType.API, "provider_error", "Cloudflare returned no record id", status=502
            )
        return str(created.id)

    async def delete_record(self, zone: str, ref: str) -> None:
        try:
            await self.client.dns.records.delete(ref, zone_id=await self._zone(zone))
        except cloudflare.NotFoundError:
            return
        except cloudflare.APIError as e:
            raise _upstream(e) from None

    async def deploy(self, release: Release, hostnames: list[str]) -> None:
        if release.kind == "static":
            raise invalid(
                "unsupported_kind", "the cloudflare provider deploys Python apps, not static sites", "kind"
            )
        module = release.entrypoint.split(":", 1)[0].replace(".", "/") + ".py"
        files: dict[str, Any] = {}
        for p in sorted(release.dir.rglob("*")):
            if p.is_file():
                rel = p.relative_to(release.dir).as_posix()
                ctype = "text/x-python" if rel.endswith(".py") else "application/octet-stream"
                files[rel] = (rel, p.read_bytes(), ctype)
        metadata: Any = {
            "main_module": module,
            "compatibility_date": self.cfg.cloudflare.workers_compatibility_date,
            "compatibility_flags": ["python_workers"],
        }
        try:
            await self.client.workers.scripts.update(
                release.name, account_id=self.account, metadata=metadata, files=files
            )
            for h in hostnames:
                await self._route(h, release.name)
        except cloudflare.APIStatusError as e:
            if e.status_code < 500:
                raise DeployFailed(f"Cloudflare refused the script: {e.message}") from None
            raise _upstream(e) from None
        except cloudflare.APIError as e:
            raise _upstream(e) from None

    async def bind(self, name: str, hostname: str) -> None:
        try:
            await self._route(hostname, name)
        except cloudflare.APIError as e:
            raise _upstream(e) from None

    async def _route(self, hostname: str, script: str) -> None:
        zone = ".".join(hostname.split(".")[-2:])
        zid = await self._zone(zone)
        pattern = f"{hostname}/*"
        async for r in self.client.workers.routes.list(zone_id=zid):
            if r.pattern == pattern:
                return
        await self.client.workers.routes.create(zone_id=zid, pattern=pattern, script=script)

    async def delete_deployment(self, deployment_id: str, name: str, hostnames: list[str]) -> None:
        try:
            await self.client.workers.scripts.delete(name, account_id=self.account, force=True)
        except cloudflare.NotFoundError:
            return
        except cloudflare.APIError as e:
            raise _upstream(e) from None

    async def aclose(self) -> None:
        await self.client.close()
