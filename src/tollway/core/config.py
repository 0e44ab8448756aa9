"""``tollway.toml``: one file, validated with pydantic, overridable from the environment.

Every key can be overridden by ``TOLLWAY_<SECTION>__<KEY>`` (for example
``TOLLWAY_SERVER__PORT=9000``).  A bad file or variable raises
:class:`ConfigError` naming the source, the key and the reason.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tollway.agents.spec import AgentSpec, unique_names
from tollway.billing.plans import Plan
from tollway.x402.rules import Rule, atomic

ENV_PREFIX = "TOLLWAY_"
DEFAULT_PATH = "tollway.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8787, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class DatabaseConfig(_Section):
    url: str = "sqlite:///.tollway/tollway.db"
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "FULL"
    pool_size: int = Field(10, ge=1, le=1000)
    migrate_on_start: bool = True

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        scheme = v.split("://", 1)[0]
        if not (scheme.startswith("sqlite") or scheme.startswith("postgres")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return v


class LedgerConfig(_Section):
    batch_max: int = Field(2048, ge=1, le=100_000)
    pending_timeout_seconds: int = Field(300, ge=1)
    expiry_interval_seconds: float = Field(1.0, gt=0)
    # "durable": nothing that reports a charge (x-tollway-charged, a stream's
    # last chunks, a receipt) leaves the server before the charge is committed.
    # "fast": the response goes out first and the settle commits just after it
    # (a crash in that window leaves the call uncharged; see docs/ledger.md).
    acknowledge: Literal["durable", "fast"] = "durable"


class AdminConfig(_Section):
    token: str = ""

    @field_validator("token")
    @classmethod
    def _long_enough(cls, v: str) -> str:
        if v and len(v) < 16:
            raise ValueError("must be at least 16 characters (or empty to disable /admin)")
        return v


class InferenceConfig(_Section):
    # Workers AI's published defaults: 10,000 free neurons a day, $0.011 per 1,000 after.
    free_neurons_per_day: int = Field(10_000, ge=0)
    usd_per_1000_neurons: str = "$0.011"
    # A reservation for a call is released after this if the process dies mid-call.
    hold_timeout_seconds: int = Field(600, ge=1)

    @field_validator("usd_per_1000_neurons")
    @classmethod
    def _price(cls, v: str) -> str:
        return valid_amount(v)


_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,99}$"


class RetryConfig(_Section):
    """How a deployment is retried before the router falls back to the next one."""

    max_attempts: int = Field(2, ge=1, le=20)
    backoff: Literal["constant", "linear", "exponential"] = "exponential"
    backoff_ms: int = Field(100, ge=0, le=60_000)  # first wait; linear adds it, exponential doubles it
    max_backoff_ms: int = Field(5_000, ge=0, le=600_000)
    attempt_timeout_seconds: float = Field(60, gt=0)


class DeploymentConfig(_Section):
    """One place a routed model runs: a registry model (local or upstream) and its weight."""

    model: str = Field(pattern=_MODEL_NAME)
    weight: int = Field(1, ge=0, le=1_000_000)


class ModelConfig(_Section):
    """One entry of the model registry (``[[models]]``)."""

    name: str = Field(pattern=_MODEL_NAME)
    task: Literal["chat", "embeddings"]
    backend: Literal["llama_cpp", "sentence_transformers", "openai", "anthropic", "router"]
    # Local backends: a GGUF file (llama_cpp) or model directory (sentence_transformers);
    # empty means the embedded default shipped in a PyPI package.
    path: str = ""
    n_ctx: int = Field(2048, ge=128, le=1_048_576)
    n_threads: int = Field(0, ge=0, description="0 = one per core (llama_cpp), torch's default (embeddings)")
    instances: int = Field(1, ge=1, le=64)
    queue_max: int = Field(32, ge=0, le=100_000)
    max_tokens: int = Field(512, ge=1)
    batch_size: int = Field(32, ge=1, le=4096)
    # openai backend: any OpenAI-compatible server (vLLM, Ollama, llama.cpp, OpenAI).
    base_url: str = ""
    api_key_env: str = ""
    upstream_model: str = ""
    timeout_seconds: float = Field(120, gt=0)
    # Rates, in neurons per million tokens (embeddings: input only). A router
    # has none of its own: each call is priced by the deployment that served it.
    neurons_per_m_input: int = Field(0, ge=0)
    neurons_per_m_output: int = Field(0, ge=0)
    # backend = "router": the deployments, tried by weight, each with ``retry``.
    deployments: list[DeploymentConfig] = Field(default_factory=list)
    retry: RetryConfig = RetryConfig()

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.backend == "llama_cpp" and self.task != "chat":
            raise ValueError("backend llama_cpp serves task 'chat'")
        if self.backend == "sentence_transformers" and self.task != "embeddings":
            raise ValueError("backend sentence_transformers serves task 'embeddings'")
        if self.backend == "openai" and not self.base_url.startswith(("http://", "https://")):
            raise ValueError("backend openai needs base_url = 'http(s)://…/v1'")
        if self.backend == "anthropic" and (self.task != "chat" or not self.base_url.startswith("http")):
            raise ValueError("backend anthropic serves task 'chat' and needs base_url = 'http(s)://…'")
        if (self.backend == "router") != bool(self.deployments):
            raise ValueError("deployments = [...] is for backend 'router', which needs at least one")
        if self.backend == "router" and not any(d.weight for d in self.deployments):
            raise ValueError("a router needs a deployment with weight > 0")
        return self


def default_models() -> list[ModelConfig]:
    """The embedded defaults: both ship inside PyPI packages, nothing is downloaded.
    Rates are Workers AI's for the nearest published models (llama-3.2-1b-instruct:
    2,457 / 18,252 neurons per M in/out tokens; bge-small-en-v1.5: 1,841 per M)."""
    return [
        ModelConfig(
            name="smollm2-135m-instruct",
            task="chat",
            backend="llama_cpp",
            n_ctx=2048,
            max_tokens=512,
            neurons_per_m_input=2457,
            neurons_per_m_output=18252,
        ),
        ModelConfig(
            name="all-minilm-l6-v2",
            task="embeddings",
            backend="sentence_transformers",
            n_ctx=256,
            # One torch thread: on a small machine torch's OpenMP pool otherwise
            # slows llama.cpp for the life of the process (docs/benchmarks.md).
            n_threads=1,
            neurons_per_m_input=1841,
        ),
    ]


class LimitsConfig(_Section):
    """Default rate limits and budgets (0 = none); keys and customers can override them."""

    rpm: int = Field(0, ge=0)  # requests per minute
    tpm: int = Field(0, ge=0)  # tokens (prompt + completion) per minute
    daily_budget: str = ""  # USD, e.g. "$5"; empty = no budget
    monthly_budget: str = ""
    on_budget: Literal["block", "downgrade"] = "block"
    downgrade_model: str = ""  # the cheaper model served when a budget is reached

    @field_validator("daily_budget", "monthly_budget")
    @classmethod
    def _budget(cls, v: str) -> str:
        return valid_amount(v) if v else v


class GatewayConfig(_Section):
    # Empty: counters and cache live in this process. Set to share them across
    # processes and hosts, e.g. "redis://127.0.0.1:6379/0".
    redis_url: str = ""
    redis_timeout_ms: int = Field(250, ge=1, le=60_000)
    key_limits: LimitsConfig = LimitsConfig()
    customer_limits: LimitsConfig = LimitsConfig()
    # Response cache: off unless a TTL is set here or per request (x-tollway-cache-ttl).
    cache_ttl_seconds: int = Field(0, ge=0, le=31_536_000)
    cache_max_entries: int = Field(10_000, ge=0)
    cache_hit_price: str = "$0"  # charged per cache hit
    # Request log: batched writes, pruned after this many days (0 = keep forever).
    log_retention_days: int = Field(30, ge=0)
    log_flush_ms: int = Field(200, ge=1, le=60_000)

    @field_validator("cache_hit_price")
    @classmethod
    def _price(cls, v: str) -> str:
        return valid_amount(v, free_ok=True)


# The devnet token: a fixed address on chain 31337 (the first contract a local
# EVM node deploys), USD Coin's EIP-712 name and version, 6 decimals (1 unit = 1 micro-USD).
DEVNET_ASSET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
_HEX_ADDRESS = r"^0x[0-9a-fA-F]{40}$"


class X402Config(_Section):
    """x402 payments: the built-in facilitator and the asset it settles."""

    # devnet: a ledger-backed EIP-3009 token (chain 31337), the embedded default.
    # evm: a real chain through web3.py (rpc_url; the facilitator's key from the
    # environment variable facilitator_key_env, never from this file).
    backend: Literal["devnet", "evm"] = "devnet"
    rpc_url: str = Field("", pattern=r"^(https?://\S+)?$")
    facilitator_key_env: str = Field("TOLLWAY_X402_FACILITATOR_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    receipt_timeout_seconds: int = Field(60, ge=1, le=3600)
    network: str = Field("eip155:31337", pattern=r"^eip155:[1-9][0-9]{0,18}$")
    asset: str = Field(DEVNET_ASSET, pattern=_HEX_ADDRESS)
    asset_name: str = Field("USD Coin", min_length=1)  # EIP-712 domain name
    asset_version: str = Field("2", min_length=1)  # EIP-712 domain version
    asset_decimals: int = Field(6, ge=0, le=36)
    pay_to: str = Field("", pattern=r"^(0x[0-9a-fA-F]{40})?$")  # default payTo of paid routes
    max_timeout_seconds: int = Field(300, ge=10, le=86_400)
    # The built-in facilitator refuses an authorization whose validBefore is further
    # out than this: a signature valid for years is a standing claim on the payer.
    max_validity_seconds: int = Field(3600, ge=60, le=7 * 86_400)
    # An external facilitator (the official API: {url}/verify, {url}/settle) for the
    # paid routes, instead of the built-in one; empty: built in.
    facilitator_url: str = Field("", pattern=r"^(https?://\S+)?$")
    # Paid routes (see tollway.x402.rules); routes no rule matches are free.
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _rules(self) -> X402Config:
        names = [r.name for r in self.rules]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate rule name {sorted(dup)[0]!r}")
        if self.backend == "evm" and not self.rpc_url:
            raise ValueError('backend = "evm" needs rpc_url')
        for r in self.rules:
            if r.price_by != "ai_max_cost":
                atomic(r.price, self.asset_decimals)
            other = (r.network and r.network != self.network) or (
                r.asset and r.asset.lower() != self.asset.lower()
            )
            if other and not self.facilitator_url:
                raise ValueError(
                    f"rule {r.name!r}: the built-in facilitator settles only {self.network} {self.asset};"
                    " set [x402] facilitator_url to take other networks or assets"
                )
            if not (r.pay_to or self.pay_to):
                raise ValueError(f"rule {r.name!r}: set pay_to on the rule or in [x402]")
            if r.max_timeout_seconds > self.max_validity_seconds:
                raise ValueError(f"rule {r.name!r}: max_timeout_seconds is above max_validity_seconds")
        if self.max_timeout_seconds > self.max_validity_seconds:
            raise ValueError("max_timeout_seconds is above max_validity_seconds")
        return self


class BillingConfig(_Section):
    """Plans and subscriptions (see tollway.billing). With no plans configured,
    every customer is on a free plan of ``[inference] free_neurons_per_day``."""

    # The plan of customers with no subscription (and of canceled ones).
    default_plan: str = Field("free", pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    plans: list[Plan] = Field(default_factory=list)
    # Usage anomalies: a day above k x the median of the trailing days.
    anomaly_factor: float = Field(3.0, gt=1)
    anomaly_days: int = Field(14, ge=3, le=365)
    # Stripe Checkout and the customer portal send people back here.
    success_url: str = Field("http://127.0.0.1:8787/billing/done", pattern=r"^https?://\S+$")
    cancel_url: str = Field("http://127.0.0.1:8787/billing/canceled", pattern=r"^https?://\S+$")
    # Usage older than this is pushed to Stripe's meter (later events may still be committing).
    meter_lag_seconds: int = Field(5, ge=0, le=3600)
    meter_push_interval_seconds: float = Field(2.0, gt=0)
    # Stripe's v2 meter event stream (higher throughput) instead of v1 meter events.
    meter_event_stream: bool = False
    # How often each process renews ended subscriptions, expires credit grants
    # and rolls up today's usage.
    tick_seconds: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _plans(self) -> BillingConfig:
        keys = [p.lookup_key for p in self.plans]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError(f"duplicate plan lookup_key {sorted(dup)[0]!r}")
        if self.plans and self.default_plan not in keys:
            raise ValueError(f"default_plan {self.default_plan!r} is not one of the plans")
        return self


class BrokerAsset(_Section):
    """An asset the broker pays x402 resources with (a USD stablecoin)."""

    network: str = Field(pattern=r"^eip155:[1-9][0-9]{0,18}$")
    asset: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$")
    decimals: int = Field(6, ge=0, le=36)


class WalletsConfig(_Section):
    """Agent wallets and the broker (see tollway.wallets)."""

    # The environment variable holding the 32-byte key (base64 or hex) that
    # encrypts wallets' EVM signing keys at rest. Never put the key in this file.
    key_env: str = Field("TOLLWAY_WALLET_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    hold_seconds: int = Field(600, ge=1, le=7 * 86_400)  # an approved authorization's hold
    sweep_seconds: float = Field(5.0, gt=0)  # how often timed-out approvals are declined
    # Where a frozen token is reported (POST JSON); empty: the log and the metric only.
    alert_webhook_url: str = Field("", pattern=r"^(https?://\S+)?$")
    # Hosts or CIDRs on private networks the broker may reach (e.g. "127.0.0.1/32").
    broker_allow: list[str] = Field(default_factory=list)
    # What the broker pays with; empty: this tollway's own [x402] network and asset.
    broker_assets: list[BrokerAsset] = Field(default_factory=list)
    broker_timeout_seconds: float = Field(30, gt=0, le=600)
    # How long a payment the broker signs stays valid, at most, whatever the server
    # asks (its maxTimeoutSeconds): the wallet's hold lasts that long plus a minute.
    broker_signature_seconds: int = Field(180, ge=10, le=3600)
    broker_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)


class TldPrice(_Section):
    """What a TLD costs in the local registry, in micro-USD (``"$10"`` accepted)."""

    price: int  # to register, a year
    renew: int  # to renew, a year

    @field_validator("price", "renew", mode="before")
    @classmethod
    def _money(cls, v: Any) -> int:
        from tollway.core.money import parse_amount

        return parse_amount(v)


class CloudflareConfig(_Section):
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


class ProvisionConfig(_Section):
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
    # The reaper: flags resources unused this long; tears them down when reap_apply is on.
    reap_after_seconds: float = Field(7 * 86_400, gt=0)
    reap_apply: bool = False
    reserved_labels: list[str] = Field(default_factory=list)  # never sold by the local registry
    trademarks: list[str] = Field(default_factory=list)  # the operator's marks, beside the starter list
    cloudflare: CloudflareConfig = CloudflareConfig()

    @field_validator("dns_record_price", "deploy_price", "hosting_monthly_price", mode="before")
    @classmethod
    def _prices(cls, v: Any) -> int:
        from tollway.core.money import parse_price

        return parse_price(v)


class VectorsConfig(_Section):
    """Vector indexes (see tollway.vectors and docs/vectors.md)."""

    backend: Literal["embedded", "pgvector"] = "embedded"
    # embedded: where the index files live; empty = vectors/ beside the SQLite
    # database (or .tollway/vectors with PostgreSQL).
    path: str = ""
    # pgvector: the PostgreSQL (with the vector extension) holding the vectors;
    # empty = the main database.
    pgvector_url: str = ""
    embeddings_model: str = "all-minilm-l6-v2"  # upsert_text / query_text


class SchedulesConfig(_Section):
    """Persisted timers (see tollway.schedules and docs/schedules.md)."""

    tick_seconds: float = Field(1.0, gt=0)  # how often due schedules are looked for
    lease_seconds: float = Field(60.0, gt=0)  # a run's claim, renewed while it runs; then run again


class AgentsConfig(_Section):
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


def valid_amount(v: str, free_ok: bool = False) -> str:
    from tollway.core.errors import TollwayError
    from tollway.core.money import parse_amount, parse_price

    try:
        (parse_price if free_ok else parse_amount)(v)
    except TollwayError as e:
        raise ValueError(e.message) from None
    return v


class Settings(_Section):
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    ledger: LedgerConfig = LedgerConfig()
    admin: AdminConfig = AdminConfig()
    inference: InferenceConfig = InferenceConfig()
    gateway: GatewayConfig = GatewayConfig()
    x402: X402Config = X402Config()
    billing: BillingConfig = BillingConfig()
    wallets: WalletsConfig = WalletsConfig()
    vectors: VectorsConfig = VectorsConfig()
    provision: ProvisionConfig = ProvisionConfig()
    schedules: SchedulesConfig = SchedulesConfig()
    agents: AgentsConfig = AgentsConfig()
    models: list[ModelConfig] = Field(default_factory=default_models)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, v: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate model name {sorted(dup)[0]!r}")
        by_name = {m.name: m for m in v}
        for m in v:
            for d in m.deployments:
                target = by_name.get(d.model)
                if target is None or target.backend == "router":
                    raise ValueError(f"model {m.name!r}: deployment {d.model!r} is not a non-router model")
                if target.task != m.task:
                    raise ValueError(f"model {m.name!r}: deployment {d.model!r} serves {target.task}")
        return v

    @model_validator(mode="after")
    def _downgrades(self) -> Settings:
        names = {m.name for m in self.models}
        for lim in (self.gateway.key_limits, self.gateway.customer_limits):
            if lim.on_budget == "downgrade" and lim.downgrade_model not in names:
                raise ValueError(f"downgrade_model {lim.downgrade_model!r} is not in the model registry")
        for a in self.agents.definitions:
            if a.model not in names:
                raise ValueError(f"agent {a.name!r}: model {a.model!r} is not in the model registry")
        return self

    def plans(self) -> dict[str, Plan]:
        """The plans by lookup key; with none configured, the free tier of ``[inference]``."""
        if self.billing.plans:
            return {p.lookup_key: p for p in self.billing.plans}
        free = Plan(
            lookup_key=self.billing.default_plan,
            name="Free",
            daily_neurons=self.inference.free_neurons_per_day,
        )
        return {free.lookup_key: free}


class ConfigError(Exception):
    """A bad config: which file or variable, which key, and why."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


def default_config_text() -> str:
    return (resources.files("tollway.core") / "default_config.toml").read_text()


def _env_value(raw: str) -> Any:
    text = raw.strip()
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return raw
    return raw


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    data: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if any(not p for p in parts):
            continue
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = _env_value(raw)
            origin[".".join(parts)] = name
    return data, origin


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Load ``tollway.toml`` (if present) and apply ``TOLLWAY_*`` overrides.

    ``path`` defaults to ``$TOLLWAY_CONFIG``, else ``tollway.toml`` in the
    home: ``$TOLLWAY_HOME`` or the current directory. A missing default file
    means built-in defaults, a missing explicit file is an error. A relative
    SQLite path is taken from the home (``$TOLLWAY_HOME``, else the config
    file's directory), so every command finds the same database wherever it runs.
    """
    env = os.environ if env is None else env
    explicit = path is not None or "TOLLWAY_CONFIG" in env
    home = env.get("TOLLWAY_HOME")
    default = str(Path(home) / DEFAULT_PATH) if home else DEFAULT_PATH
    file = Path(path if path is not None else env.get("TOLLWAY_CONFIG", default))
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(str(file), "", f"not valid TOML: {e}") from None
        except OSError as e:
            raise ConfigError(str(file), "", f"cannot read: {e.strerror}") from None
    elif explicit:
        raise ConfigError(str(file), "", "file not found (run `tollway init` to write one)")
    overrides, origin = _env_overrides(
        {k: v for k, v in env.items() if k not in ("TOLLWAY_CONFIG", "TOLLWAY_HOME")}
    )
    merged = _merge(data, overrides)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        source = origin.get(key, str(file))
        reason = err["msg"]
        if err["type"] == "extra_forbidden":
            reason = "unknown key"
        elif "input" in err and not isinstance(err["input"], dict):
            reason = f"{reason} (got {err['input']!r})"
        raise ConfigError(source, key, reason) from None
    base = Path(home) if home else (file.parent if file.exists() else Path("."))
    settings.database.url = anchored_sqlite(settings.database.url, base)
    return settings


def anchored_sqlite(url: str, base: Path) -> str:
    """A relative ``sqlite:///path`` taken from ``base``; any other URL as is."""
    prefix = "sqlite:///"
    rest = url[len(prefix) :] if url.startswith(prefix) else None
    if rest is None or rest.startswith("/") or rest in ("", ":memory:") or base == Path("."):
        return url
    return prefix + str((base / rest).absolute())


def sqlite_file(url: str) -> Path | None:
    """The file a ``sqlite:///`` URL names (None for PostgreSQL or memory)."""
    prefix = url.split("://", 1)[0]
    rest = url.split(":///", 1)[1] if ":///" in url else ""
    if not prefix.startswith("sqlite") or rest in ("", ":memory:"):
        return None
    return Path(rest.split("?", 1)[0])
