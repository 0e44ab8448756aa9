"""``[provision]``: domains, DNS, deployments and their sandbox."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Protocol

from pydantic import Field, field_validator

from tollway.core.config import Section


class TldPrice(Section):
    """What a TLD costs in the local registry, in micro-USD (``"$10"`` accepted)."""

    price: int  # to register, a year
    renew: int  # to renew, a year

    @field_validator("price", "renew", mode="before")
    @classmethod
    def _money(cls, v: Any) -> int:
        from tollway.core.money import parse_amount

        return parse_amount(v)


class CloudflareConfig(Section):
    """The Cloudflare provider: credentials live here (or in the environment), never with agents."""

    api_token_env: str = Field("CLOUDFLARE_API_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    account_id: str = ""
    base_url: str = ""  # empty: the SDK's default (https://api.cloudflare.com/client/v4)
    workers_compatibility_date: str = "2025-01-01"


def _default_tlds() -> dict[str, TldPrice]:
    return {
        "com": TldPrice(price=10_440_000, renew=10_440_000),
        "net": TldPrice(price=11_840_000, renew=11_840_000),
        "org": TldPrice(price=10_110_000, renew=10_110_000),
        "dev": TldPrice(price=12_000_000, renew=12_000_000),
        "app": TldPrice(price=14_000_000, renew=14_000_000),
        "ai": TldPrice(price=80_000_000, renew=80_000_000),
        "test": TldPrice(price=1_000_000, renew=1_000_000),
    }


class ProvisionConfig(Section):
    """Domains, DNS and deployments for agents (see tollway.provision and docs/provisioning.md)."""

    provider: Literal["local", "cloudflare"] = "local"
    tlds: dict[str, TldPrice] = Field(default_factory=_default_tlds)  # the local registry's price list
    dns_record_price: int = Field(1_000, ge=1)  # micro-USD per record created
    deploy_price: int = Field(10_000, ge=1)  # micro-USD per deployed version
    hosting_monthly_price: int = Field(5_000_000, ge=0)  # what a running deployment costs a month
    # Where bundles are unpacked; empty = provision/ beside the SQLite database (or .tollway/provision).
    data_dir: str = ""
    apps_domain: str = "tollway.localhost"  # each deployment answers at <name>.<apps_domain>
    max_bundle_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_bundle_files: int = Field(2_000, ge=1)
    # The edge: tollway's Host-routing listener for deployments (port 0: off).
    edge_host: str = "127.0.0.1"
    edge_port: int = Field(8788, ge=0, le=65535)
    # Hand each connection to its worker (SCM_RIGHTS) once the Host is known,
    # rather than relaying its bytes (false: relay, for platforms without it).
    edge_handoff: bool = True
    # Each worker runs in a bubblewrap sandbox (docs/provisioning.md#the-sandbox) with its own uid.
    bwrap_path: str = ""  # empty: bwrap on PATH, else /usr/bin/bwrap
    # true: run apps WITHOUT a sandbox, as tollway's user (logged loudly). Never on a shared host.
    unsafe_no_sandbox: bool = False
    worker_uid_base: int = Field(200_000, ge=1_000)  # workers get uids base .. base+count-1 (and gid = uid)
    worker_uid_count: int = Field(50_000, ge=1)
    worker_memory_mb: int = Field(512, ge=64)  # RLIMIT_AS of each worker process
    worker_cpu_seconds: int = Field(3_600, ge=1)  # RLIMIT_CPU of each worker process
    worker_processes: int = Field(128, ge=8)  # RLIMIT_NPROC of a worker's uid (threads count)
    worker_open_files: int = Field(1_024, ge=32)  # RLIMIT_NOFILE
    worker_scratch_mb: int = Field(64, ge=1)  # its /tmp (a tmpfs) and RLIMIT_FSIZE
    worker_request_seconds: float = Field(60, gt=0)  # wall time of one request, then 504
    warm_workers: int = Field(2, ge=0, le=64)  # sandboxes started ahead of need
    health_path: str = Field("/", pattern=r"^/\S*$")
    health_timeout_seconds: float = Field(10, gt=0, le=300)
    idle_seconds: float = Field(300, gt=0)  # a worker with no requests this long is stopped
    # The AI binding (docs/provisioning.md#the-ai-binding): each worker's socket to tollway's
    # AI routes, charged to the deployment's wallet; the body size and the requests in flight
    # per deployment it allows.
    ai_binding: bool = True
    ai_binding_max_body_bytes: int = Field(1024 * 1024, ge=1024)
    ai_binding_concurrency: int = Field(8, ge=1)
    # The reaper: flags resources unused this long; tears them down when reap_apply is on.
    reap_after_seconds: float = Field(7 * 86_400, gt=0)
    reap_apply: bool = False
    reserved_labels: list[str] = Field(default_factory=list)  # never sold by the local registry
    trademarks: list[str] = Field(default_factory=list)  # the operator's marks, beside the starter list
    cloudflare: CloudflareConfig = CloudflareConfig()
    # Recurring costs (docs/provisioning.md#recurring-costs): hosting is metered and charged to the
    # owning wallet by the billing tick, in micro-USD (fractions to 1/1000 micro-USD accepted).
    hosting_price_per_worker_second: Decimal = Decimal(0)  # per second a deployment's worker is live
    hosting_price_per_request: Decimal = Decimal(0)  # per request (connection) the edge routes
    billing_tick_seconds: float = Field(3_600, gt=0)  # how often recurring charges are made
    renew_days_before: float = Field(30, ge=0)  # renew a domain this long before it expires
    grace_hours: float = Field(72, ge=0)  # an unpaid charge: grace, then suspended
    reclaim_after_hours: float = Field(7 * 24, ge=0)  # suspended this long: reclaimed by the reaper

    @field_validator("hosting_price_per_worker_second", "hosting_price_per_request", mode="before")
    @classmethod
    def _fractional(cls, v: Any) -> Decimal:
        try:
            d = Decimal(str(v))
        except InvalidOperation:
            raise ValueError('a price in micro-USD, e.g. 0.5 or "2.125"') from None
        if not d.is_finite() or d < 0 or (d * 1000) % 1 != 0:
            raise ValueError("a non-negative price in micro-USD with at most 3 decimals")
        return d

    @property
    def nanos_per_worker_second(self) -> int:
        """The worker-second price in 1/1000 micro-USD (exact: at most 3 decimals)."""
        return int(self.hosting_price_per_worker_second * 1000)

    @property
    def nanos_per_request(self) -> int:
        return int(self.hosting_price_per_request * 1000)

    @field_validator("dns_record_price", "deploy_price", "hosting_monthly_price", mode="before")
    @classmethod
    def _prices(cls, v: Any) -> int:
        from tollway.core.money import parse_price

        return parse_price(v)


class ProvisionSettings(Protocol):
    """What provisioning reads of the whole configuration (``tollway.settings.Settings`` is one)."""

    @property
    def provision(self) -> ProvisionConfig: ...
