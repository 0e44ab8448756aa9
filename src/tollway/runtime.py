"""Everything a process needs, built once from the settings: used by the
server and the CLI alike, so both act on the same objects."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.agents.alarms import Alarms
from tollway.agents.service import Agents
from tollway.agents.service import build as build_agents
from tollway.alerts.delivery import Delivery
from tollway.billing import stripe as stripe_billing
from tollway.billing.service import Billing
from tollway.billing.subscriptions import KEY_JOIN
from tollway.charge import Charger
from tollway.charge.recovery import Recovery
from tollway.core import migrate
from tollway.core.clock import Clock, SystemClock
from tollway.core.config import ConfigError
from tollway.core.storage import make_engine
from tollway.evals.service import Evals
from tollway.evals.weekly import Weekly
from tollway.gateway.gate import Gateway
from tollway.gateway.requestlog import RequestLog
from tollway.identity.customers import Customers
from tollway.identity.keys import ApiKeys
from tollway.inference.service import Inference
from tollway.ledger import Ledger
from tollway.observe.alert_checks import Checks
from tollway.observe.alerts import TOKEN_FROZEN, Alerts, AlertsConfig, Webhook
from tollway.provision.service import Provisioner
from tollway.schedules import Scheduler
from tollway.settings import Settings
from tollway.vectors.service import Vectors, make_backend
from tollway.wallets.audit import Audit
from tollway.wallets.authorize import Authorizer, alerts
from tollway.wallets.bootstrap import Bootstraps
from tollway.wallets.broker import Broker
from tollway.wallets.budget import BudgetRequests
from tollway.wallets.signatures import Signatures
from tollway.wallets.store import Wallets
from tollway.x402.claims import Claims
from tollway.x402.config import X402Config
from tollway.x402.devnet import Devnet
from tollway.x402.facilitator import Facilitator, Settlement
from tollway.x402.front import Front
from tollway.x402.owned import OwnedRuleStore
from tollway.x402.paywall import Paywall
from tollway.x402.remote import RemoteFacilitator
from tollway.x402.rules import Rules
from tollway.x402.rulestore import RuleStore

if TYPE_CHECKING:
    from tollway.billing.stripe.service import StripeBilling


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    clock: Clock
    ledger: Ledger
    charger: Charger
    customers: Customers
    keys: ApiKeys
    inference: Inference
    gateway: Gateway
    devnet: Devnet
    facilitator: Facilitator
    paywall: Paywall  # paid routes: [[x402.rules]], or rules imported through the admin API
    billing: Billing
    wallets: Wallets
    authorizer: Authorizer
    broker: Broker
    vectors: Vectors
    provision: Provisioner
    scheduler: Scheduler  # persisted timers, run by the server's loop (tollway.schedules)
    agents: Agents
    alarms: Alarms  # agents' scheduled messages (on rt.scheduler)
    recovery: Recovery  # long calls' progress, charged after a crash (tollway.charge.recovery)
    alerts: Alerts  # raised once each (tollway.observe.alerts)
    alert_delivery: Delivery  # to [alerts] webhooks, as schedules: signed, retried, once
    alert_checks: Checks  # the conditions that raise alerts, checked periodically
    evals: Evals  # the eval loop (tollway.evals)
    evals_weekly: Weekly  # its weekly run on the scheduler ([evals] weekly)
    remote_facilitator: RemoteFacilitator | None = None  # [x402] facilitator_url
    stripe: StripeBilling | None = None  # STRIPE_API_KEY set: Stripe billing (tollway.billing.stripe)

    @classmethod
    def build(cls, settings: Settings, *, clock: Clock | None = None) -> Runtime:
        clock = clock or SystemClock()
        engine = make_engine(settings.database)
        alert_cfg = _alerts_config(settings)
        alerts_ = Alerts(engine, clock)
        ledger = Ledger(
            engine,
            clock=clock,
            batch_max=settings.ledger.batch_max,
            default_timeout_s=settings.ledger.pending_timeout_seconds,
        )
        charger = Charger(ledger)
        x402 = settings.x402
        devnet = Devnet(ledger, x402.network, x402.asset)
        facilitator = Facilitator(x402, _settlement(x402, ledger, devnet), clock)
        remote = (
            RemoteFacilitator(x402.facilitator_url, x402, ledger, clock) if x402.facilitator_url else None
        )
        keys = ApiKeys(engine, clock, ledger.reads, KEY_JOIN)
        billing = Billing(settings, engine, ledger, clock)
        customers = Customers(engine, clock)
        request_log = RequestLog(
            engine, clock, settings.gateway.log_flush_ms, settings.gateway.log_retention_days, ledger
        )
        gateway = Gateway(settings.gateway, ledger, clock, request_log, billing)
        audit = Audit(engine, ledger, clock)
        wallets = Wallets(engine, ledger, clock, audit, settings.wallets.key_env)
        authorizer = Authorizer(
            engine,
            ledger,
            charger,
            clock,
            wallets,
            audit,
            gateway.windows,
            settings.wallets.hold_seconds,
            alerts(alerts_),
        )
        devnet.signatures = Signatures(authorizer, x402.asset_decimals)  # broker payments: the wallet pays
        claims = Claims(engine, ledger, clock)
        paywall = Paywall(
            x402,
            Rules(x402.rules),
            remote or facilitator,
            keys,
            claims,
            RuleStore(engine, clock),
            OwnedRuleStore(engine, clock),
        )
        paywall.entitled = lambda key, feature: billing.standing(key.customer_id, key.billing).plan.has(
            feature
        )
        inference = Inference(settings, charger, clock, billing)
        vectors = Vectors(
            engine,
            clock,
            make_backend(settings, engine),
            inference,
            settings.vectors.embeddings_model,
        )
        scheduler = Scheduler(engine, clock, lease_s=settings.schedules.lease_seconds)
        broker = Broker(settings, wallets, authorizer)
        agents = build_agents(settings, engine, clock, inference, vectors, broker, ledger)
        provision = Provisioner(settings, engine, clock, wallets, authorizer)
        # Agents' priced hosts: the edge serves them through the paywall (settling to their wallets).
        provision.edge.front = Front(paywall, provision.target, x402.take_rate_bps)
        evals = Evals(settings.evals, engine, clock, agents, customers)
        authorizer.autopilot.teardown = provision.deployments.delete  # its teardowns: the normal path
        authorizer.autopilot.apps_domain = settings.provision.apps_domain
        return cls(
            settings=settings,
            engine=engine,
            clock=clock,
            ledger=ledger,
            charger=charger,
            customers=customers,
            keys=keys,
            inference=inference,
            gateway=gateway,
            devnet=devnet,
            facilitator=facilitator,
            paywall=paywall,
            billing=billing,
            wallets=wallets,
            authorizer=authorizer,
            broker=broker,
            vectors=vectors,
            provision=provision,
            scheduler=scheduler,
            agents=agents,
            recovery=Recovery(engine, ledger, charger, clock, settings.ledger.progress_seconds),
            alarms=Alarms(agents, scheduler),
            alerts=alerts_,
            alert_delivery=Delivery(engine, clock, alert_cfg, scheduler),
            alert_checks=Checks(engine, clock, alert_cfg, quiet=(settings.evals.payer,)),
            evals=evals,
            evals_weekly=Weekly(evals, scheduler),
            remote_facilitator=remote,
            stripe=stripe_billing.from_env(settings, engine, clock, customers, billing.subscriptions),
        )

    @functools.cached_property
    def bootstraps(self) -> Bootstraps:
        """Bootstrap credentials: an agent's way to ask for its first budget."""
        return Bootstraps(
            self.engine, self.clock, self.wallets, self.wallets.audit, self.settings.wallets.bootstrap_seconds
        )

    @functools.cached_property
    def budget_requests(self) -> BudgetRequests:
        """Agents' budget requests and the owner's decisions (tollway.wallets.budget)."""
        return BudgetRequests(
            self.engine,
            self.clock,
            self.wallets,
            self.wallets.audit,
            self.authorizer,
            self.bootstraps,
            self.settings.wallets.budget_request_seconds,
        )

    async def migrate(self) -> tuple[str | None, str | None]:
        return await migrate.upgrade(self.engine)

    async def close(self) -> None:
        if self.stripe is not None:
            await self.stripe.aclose()
        await self.paywall.aclose()
        if self.remote_facilitator is not None:
            await self.remote_facilitator.aclose()
        close = getattr(self.facilitator.devnet, "aclose", None)  # evm: pending settlements it follows
        if close is not None:
            await close()
        await self.gateway.aclose()
        await self.alert_delivery.aclose()
        await self.provision.close()
        await self.agents.aclose()
        await self.vectors.close()
        await self.inference.aclose()
        await self.ledger.close()
        await self.engine.dispose()


def _alerts_config(settings: Settings) -> AlertsConfig:
    """``[alerts]``, with ``[wallets] alert_webhook_url`` (the frozen-token webhook
    before alerts) as one more webhook for ``token_frozen`` alone."""
    cfg = settings.alerts
    url = settings.wallets.alert_webhook_url
    if url and not any(w.url == url for w in cfg.webhooks):
        cfg = cfg.model_copy(update={"webhooks": [*cfg.webhooks, Webhook(url=url, kinds=[TOKEN_FROZEN])]})
    return cfg


def _settlement(x402: X402Config, ledger: Ledger, devnet: Devnet) -> Settlement:
    """Where the built-in facilitator settles: devnet, or a real chain."""
    if x402.backend == "devnet":
        return devnet
    from tollway.x402.evm import EvmSettlement  # web3 loads only when used

    key = os.environ.get(x402.facilitator_key_env, "")
    if not key:
        raise ConfigError(
            "environment",
            x402.facilitator_key_env,
            'backend = "evm" needs the facilitator\'s private key here',
        )
    return EvmSettlement.from_rpc(
        ledger, x402.rpc_url, x402.network, x402.asset, key, receipt_timeout_s=x402.receipt_timeout_seconds
    )
