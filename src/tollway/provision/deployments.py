"""Deployments: versions of an app or a static site, each deployed version
paid (category ``hosting``), made live only once healthy, kept for
rollbacks; hostnames bound through the DNS zone; Host routing for the edge."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import ErrorType, TollwayError, conflict, invalid, not_found
from tollway.core.ids import new_id
from tollway.core.schema import provision_deployments as P
from tollway.core.schema import provision_dues as U
from tollway.core.schema import provision_records as R
from tollway.core.schema import provision_versions as V
from tollway.core.storage import writer
from tollway.provision import bundles
from tollway.provision.config import ProvisionConfig
from tollway.provision.domains import Domains, in_zone
from tollway.provision.names import to_ascii, within
from tollway.provision.providers.base import DeployFailed, Provider, Release
from tollway.provision.purchase import Purchases, idempotency
from tollway.provision.runner import Spec
from tollway.wallets.authorize import Decision
from tollway.wallets.store import Wallets

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# The sandbox sets these (and the AI binding its two).
ENV_RESERVED = frozenset(
    {"PATH", "LANG", "HOME", "TMPDIR", "PORT", "PWD", "TOLLWAY_AI_SOCKET", "TOLLWAY_AI_URL"}
)
MAX_ENV, MAX_ENV_BYTES = 64, 32 * 1024


def check_env(env: object) -> tuple[tuple[str, str], ...]:
    """A deployment's declared environment: {NAME: value} strings, or 400 ``invalid_env``."""
    if env is None:
        return ()
    if not isinstance(env, dict) or len(env) > MAX_ENV:
        raise invalid("invalid_env", f"env is an object of up to {MAX_ENV} NAME: value strings", "env")
    size = 0
    for k, v in env.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k) or k in ENV_RESERVED:
            raise invalid(
                "invalid_env",
                f"env name {k!r}: letters, digits and '_' (not a digit first), and not one of"
                f" {', '.join(sorted(ENV_RESERVED))}",
                "env",
            )
        if not isinstance(v, str) or "\0" in v:
            raise invalid("invalid_env", f"env {k}: the value is a string without NUL", "env")
        size += len(k.encode()) + len(v.encode())
    if size > MAX_ENV_BYTES:
        raise invalid("invalid_env", f"env is larger than {MAX_ENV_BYTES} bytes", "env")
    return tuple(sorted((str(k), str(v)) for k, v in env.items()))


ROUTES_TTL_S = 2.0  # how stale another process's changes may be at this edge


def _version(r: Any) -> dict[str, Any]:
    return {
        "object": "deployment_version",
        "id": r.id,
        "version": r.version,
        "kind": r.kind,
        "entrypoint": r.entrypoint,
        "sha256": r.sha256,
        "size": r.size,
        "status": r.status,
        "error": r.error,
        "authorization_id": r.authorization_id,
        "created_at_us": r.created_at_us,
    }


class Deployments:
    def __init__(
        self,
        cfg: ProvisionConfig,
        engine: AsyncEngine,
        clock: Clock,
        wallets: Wallets,
        provider: Provider,
        purchases: Purchases,
        domains: Domains,
        data_dir: Path,
    ) -> None:
        self.cfg, self.engine, self.clock = cfg, engine, clock
        self.wallets, self.provider, self.purchases, self.domains = wallets, provider, purchases, domains
        self.data_dir = data_dir
        self._routes: dict[str, str] = {}
        self._owners: dict[str, str] = {}  # deployment id -> its wallet (the routed ones)
        self._routes_at = -ROUTES_TTL_S
        self._rebuilding: asyncio.Task[None] | None = None
        self._suspended: frozenset[str] = frozenset()  # deployments suspended for unpaid charges
        self._held: tuple[str, ...] = ()  # domains held for unpaid renewals
        domains.on_change.append(self.invalidate)
        self.on_delete: list[Callable[[str], Awaitable[None]]] = []  # deployment id: what else it ends

    def host(self, name: str) -> str:
        return f"{name}.{self.cfg.apps_domain}"

    # ---------------------------------------------------------------- reads

    async def _row(self, name: str, wallet_id: str | None) -> Any:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(P).where(P.c.name == name, P.c.status == "active"))).first()
        if r is None or (wallet_id is not None and r.wallet_id != wallet_id):
            raise not_found("deployment_not_found", f"no deployment {name!r}", "name")
        return r

    def _dict(self, r: Any, versions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "object": "deployment",
            "id": r.id,
            "name": r.name,
            "wallet_id": r.wallet_id,
            "provider": r.provider,
            "url": f"http://{self.host(r.name)}",
            "hostnames": [self.host(r.name), *json.loads(r.hostnames)],
            "live_version": r.live_version,
            "last_request_at_us": r.last_request_at_us,
            "created_at_us": r.created_at_us,
        }
        if versions is not None:
            out["versions"] = versions
        return out

    async def get(self, name: str, wallet_id: str | None = None) -> dict[str, Any]:
        r = await self._row(name, wallet_id)
        async with self.engine.connect() as conn:
            vs = await conn.execute(select(V).where(V.c.deployment_id == r.id).order_by(V.c.version.desc()))
            return self._dict(r, [_version(v) for v in vs])

    async def all(self, wallet_id: str | None = None) -> list[dict[str, Any]]:
        q = select(P).where(P.c.status == "active").order_by(P.c.name)
        if wallet_id is not None:
            q = q.where(P.c.wallet_id == wallet_id)
        async with self.engine.connect() as conn:
            return [self._dict(r) for r in await conn.execute(q)]

    def _dir(self, deployment_id: str, version: int) -> Path:
        return self.data_dir / "deployments" / deployment_id / f"v{version}"

    def _env_file(self, deployment_id: str, version: int) -> Path:
        """The environment a version declares (beside its bundle, outside what the app sees)."""
        return self.data_dir / "deployments" / deployment_id / f"v{version}.env.json"

    def _release(self, dep: Any, v: Any) -> Release:
        try:
            env = tuple(
                (str(k), str(x)) for k, x in json.loads(self._env_file(dep.id, v.version).read_text())
            )
        except FileNotFoundError:
            env = ()
        return Release(
            dep.id,
            dep.name,
            v.version,
            v.kind,
            v.entrypoint,
            self._dir(dep.id, v.version),
            self.host(dep.name),
            env,
        )

    async def live_spec(self, deployment_id: str) -> Spec | None:
        """The live version of a deployment (for waking its worker)."""
        async with self.engine.connect() as conn:
            dep = (
                await conn.execute(select(P).where(P.c.id == deployment_id, P.c.status == "active"))
            ).first()
            if dep is None or dep.live_version is None:
                return None
            q = select(V).where(V.c.deployment_id == dep.id, V.c.version == dep.live_version)
            v = (await conn.execute(q)).first()
        if v is None:
            return None
        r = self._release(dep, v)
        return Spec(r.deployment_id, r.version, r.dir, r.kind, r.entrypoint, r.host, r.env)

    # ---------------------------------------------------------------- deploy

    async def deploy(
        self,
        presented: str,
        name: object,
        *,
        kind: object,
        entrypoint: object,
        bundle: bytes,
        env: object = None,
        idempotency_key: object = None,
    ) -> dict[str, Any]:
        """Upload a new version and make it live: 400 for a bad name or bundle
        (nothing charged); 422 ``deploy_failed`` if it does not come up (the
        previous version keeps serving, the charge is voided)."""
        _, wallet = await self.wallets.verify(presented)
        if not isinstance(name, str) or not _NAME.match(name):
            raise invalid(
                "invalid_name", "a deployment's name is one DNS label: a-z, 0-9 and '-', up to 63", "name"
            )
        b = bundles.load(
            bundle, kind, entrypoint, max_bytes=self.cfg.max_bundle_bytes, max_files=self.cfg.max_bundle_files
        )
        declared = check_env(env)
        async with self.engine.connect() as conn:
            existing = (await conn.execute(select(P).where(P.c.name == name))).first()
        if existing is not None and (existing.wallet_id != wallet.id or existing.status != "active"):
            raise conflict("name_taken", f"the deployment name {name!r} is taken", "name")
        key = idempotency(idempotency_key)
        request = {
            "op": "deploy",
            "name": name,
            "kind": b.kind,
            "entrypoint": b.entrypoint,
            "sha256": b.sha256,
        }

        async def work(d: Decision) -> dict[str, Any]:
            dep = existing or await self._create(name, wallet.id)
            n, vrow = await self._new_version(dep.id, b, d.id)
            t0 = time.perf_counter()
            dest = self._dir(dep.id, n)
            b.unpack(dest)
            if declared:
                self._env_file(dep.id, n).write_text(json.dumps(declared))
            release = Release(dep.id, dep.name, n, b.kind, b.entrypoint, dest, self.host(dep.name), declared)
            try:
                await self.provider.deploy(release, json.loads(dep.hostnames))
            except DeployFailed as e:
                await self._set_version(vrow["id"], "failed", str(e)[:2000])
                shutil.rmtree(dest, ignore_errors=True)
                self._env_file(dep.id, n).unlink(missing_ok=True)
                raise TollwayError(
                    ErrorType.API if e.status >= 500 else ErrorType.INVALID_REQUEST,
                    e.code,
                    f"version {n} of {dep.name} did not go live (the previous version keeps serving): {e}",
                    "bundle",
                    status=e.status,
                ) from None
            live_ms = (time.perf_counter() - t0) * 1000
            await self._go_live(dep.id, vrow["id"], n)
            out = await self.get(dep.name)
            return {**out, "deployed_version": n, "live_ms": round(live_ms, 1),
                    "charged": self.cfg.deploy_price, "authorization_id": d.id}  # fmt: skip

        async def replay(d: Decision) -> dict[str, Any]:
            out = await self.get(name, wallet.id)
            v = next((v for v in out["versions"] if v["authorization_id"] == d.id), None)
            return {
                **out,
                "deployed_version": v and v["version"],
                "charged": d.captured,
                "authorization_id": d.id,
            }

        return await self.purchases.buy(
            presented, wallet_id=wallet.id, request=request,
            amount=self.cfg.deploy_price, category="hosting", key=key,
            memo=f"deploy {name}", work=work, replay=replay,
        )  # fmt: skip

    async def _create(self, name: str, wallet_id: str) -> Any:
        now = self.clock.now_us()
        row = {
            "id": new_id("dep"), "name": name, "wallet_id": wallet_id, "provider": self.provider.name,
            "live_version": None, "hostnames": "[]", "status": "active", "last_request_at_us": now,
            "created_at_us": now, "updated_at_us": now,
        }  # fmt: skip
        try:
            async with writer(self.engine).begin() as conn:
                await conn.execute(insert(P), [row])
        except IntegrityError:  # created meanwhile: by this wallet (another deploy), or taken
            pass
        try:
            return await self._row(name, wallet_id)
        except TollwayError:
            raise conflict("name_taken", f"the deployment name {name!r} is taken", "name") from None

    async def _new_version(self, deployment_id: str, b: bundles.Bundle, auth_id: str) -> tuple[int, Any]:
        """The next version's row (deploying). The SQLite write lock is taken at
        BEGIN (a read then a write); on PostgreSQL a concurrent deploy that took
        the same number first makes this one try the next."""
        for attempt in range(8):
            try:
                async with writer(self.engine).begin() as conn:
                    q = select(func.max(V.c.version)).where(V.c.deployment_id == deployment_id)
                    n = ((await conn.execute(q)).scalar() or 0) + 1
                    vrow = {
                        "id": new_id("dver"), "deployment_id": deployment_id, "version": n, "kind": b.kind,
                        "entrypoint": b.entrypoint, "sha256": b.sha256, "size": b.size, "status": "deploying",
                        "error": None, "authorization_id": auth_id, "created_at_us": self.clock.now_us(),
                    }  # fmt: skip
                    await conn.execute(insert(V), [vrow])
                return n, vrow
            except IntegrityError:
                if attempt == 7:
                    raise
        raise AssertionError("unreachable")

    async def _set_version(self, version_id: str, status: str, error: str | None = None) -> None:
        async with writer(self.engine).begin() as conn:
            await conn.execute(update(V).where(V.c.id == version_id).values(status=status, error=error))

    async def _go_live(self, deployment_id: str, version_id: str, n: int) -> None:
        async with writer(self.engine).begin() as conn:
            await conn.execute(
                update(V)
                .where(V.c.deployment_id == deployment_id, V.c.status == "live")
                .values(status="ready")
            )
            await conn.execute(update(V).where(V.c.id == version_id).values(status="live"))
            await conn.execute(
                update(P)
                .where(P.c.id == deployment_id)
                .values(live_version=n, updated_at_us=self.clock.now_us())
            )
        self.invalidate()

    async def rollback(self, presented: str, name: str, version: object = None) -> dict[str, Any]:
        """Make an earlier version live again (default: the newest one before the live one). Free."""
        _, wallet = await self.wallets.verify(presented)
        dep = await self._row(name, wallet.id)
        async with self.engine.connect() as conn:
            q = select(V).where(V.c.deployment_id == dep.id, V.c.status == "ready")
            vs = (await conn.execute(q.order_by(V.c.version.desc()))).all()
        if version is None:
            older = [v for v in vs if dep.live_version is None or v.version < dep.live_version]
            target = older[0] if older else None
        else:
            target = next((v for v in vs if v.version == version), None)
        if target is None:
            raise not_found(
                "version_not_found", f"{name} has no earlier healthy version to roll back to", "version"
            )
        try:
            await self.provider.deploy(self._release(dep, target), json.loads(dep.hostnames))
        except DeployFailed as e:
            raise TollwayError(
                ErrorType.API if e.status >= 500 else ErrorType.INVALID_REQUEST,
                e.code, f"rollback failed: {e}", "version", status=e.status,
            ) from None  # fmt: skip
        await self._go_live(dep.id, target.id, target.version)
        return await self.get(name)

    async def bind(
        self, presented: str, name: str, hostname: object, idempotency_key: object = None
    ) -> dict[str, Any]:
        """Serve the deployment at ``hostname`` too: a CNAME to its default host in
        the wallet's zone (an A record to the edge at a zone's apex), paid as DNS."""
        _, wallet = await self.wallets.verify(presented)
        dep = await self._row(name, wallet.id)
        h = to_ascii(hostname, "hostname")
        zone = in_zone(h, await self.domains.all(wallet.id))
        if zone is None:
            raise invalid("hostname_not_owned", f"{h} is not in a domain this wallet owns", "hostname")
        if h == zone.name:
            body = {"name": h, "type": "A", "content": self.cfg.edge_host}
        else:
            body = {"name": h, "type": "CNAME", "content": self.host(dep.name)}
        rec = await self.domains.create_record(
            presented, zone.name, body, idempotency_key, purpose={"bind": dep.name}
        )
        await self.provider.bind(dep.name, h)
        hosts = json.loads(dep.hostnames)
        if h not in hosts:
            hosts.append(h)
            async with writer(self.engine).begin() as conn:
                await conn.execute(update(P).where(P.c.id == dep.id).values(hostnames=json.dumps(hosts)))
        self.invalidate()
        return {**(await self.get(name)), "record": rec}

    async def delete(self, name: str, wallet_id: str | None) -> dict[str, Any]:
        dep = await self._row(name, wallet_id)
        await self.provider.delete_deployment(dep.id, dep.name, json.loads(dep.hostnames))
        async with writer(self.engine).begin() as conn:
            await conn.execute(
                update(P).where(P.c.id == dep.id).values(status="deleted", updated_at_us=self.clock.now_us())
            )
        shutil.rmtree(self.data_dir / "deployments" / dep.id, ignore_errors=True)
        self.invalidate()
        for hook in self.on_delete:
            await hook(dep.id)
        return {**self._dict(dep), "deleted": True}

    # --------------------------------------------------------------- routing

    def invalidate(self) -> None:
        self._routes_at = -ROUTES_TTL_S

    async def route(self, host: str) -> str | None:
        """The deployment serving ``host``: its default host, a bound apex, or a
        CNAME chain in the zone store that ends at a default host."""
        host = host.lower().rstrip(".")
        if time.monotonic() - self._routes_at >= ROUTES_TTL_S:
            if self._rebuilding is None or self._rebuilding.done():  # one rebuild at a time
                self._rebuilding = asyncio.get_running_loop().create_task(self._rebuild())
            await asyncio.shield(self._rebuilding)
        return self._routes.get(host)

    def blocked(self, deployment_id: str, host: str) -> str | None:
        """Why the edge must not serve ``host`` (provision/dues.py), as of the last rebuild."""
        if deployment_id in self._suspended:
            return "deployment_suspended"
        if any(within(host, z) for z in self._held):
            return "domain_suspended"
        return None

    async def _rebuild(self) -> None:
        async with self.engine.connect() as conn:
            q = select(U.c.kind, U.c.subject_id, U.c.name).where(U.c.suspended_at_us.is_not(None))
            out = (await conn.execute(q)).all()
            live = select(P.c.id, P.c.name, P.c.hostnames, P.c.wallet_id).where(
                P.c.status == "active", P.c.live_version.is_not(None)
            )
            deps = (await conn.execute(live)).all()
            rows = await conn.execute(select(R.c.name, R.c.content).where(R.c.type == "CNAME"))
            cnames = {name: target for name, target in rows}
        table: dict[str, str] = {}
        for d in deps:
            table[self.host(d.name)] = d.id
            for h in json.loads(d.hostnames):
                table.setdefault(h, d.id)
        for name in cnames:
            target, hops = cnames[name], 0
            while target not in table and target in cnames and hops < 8:
                target, hops = cnames[target], hops + 1
            if target in table:
                table[name] = table[target]
        self._owners = {d.id: d.wallet_id for d in deps}
        self._suspended = frozenset(r.subject_id for r in out if r.kind == "deployment")
        self._held = tuple(r.name for r in out if r.kind == "domain")
        self._routes, self._routes_at = table, time.monotonic()

    async def owner(self, host: str) -> tuple[str, str] | None:
        """(the deployment serving ``host``, the wallet that owns it), as routed now."""
        dep = await self.route(host)
        wallet = None if dep is None else self._owners.get(dep)
        return None if dep is None or wallet is None else (dep, wallet)

    async def owns(self, wallet_id: str, host: str) -> bool:
        """Whether ``host`` (an A-label name) is the wallet's: a hostname of one of
        its deployments, or a name within one of its domains."""
        for d in await self.all(wallet_id):
            if host in d["hostnames"]:
                return True
        return in_zone(host, await self.domains.all(wallet_id)) is not None
