"""Alerts (issue 23 §4): each kind raised by its trigger, once; delivered to a
webhook the test runs, signed as Stripe signs (checked by the receiver on its
own), retried after 500s, delivered once, also by two processes at once on
PostgreSQL; listed and acknowledged in the API and CLI."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import os
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from conftest import ADMIN, PG_SKIP, PG_URL, err, settings_for
from threaded import ThreadServer, read_body
from tollway.alerts.delivery import HEADER, verify
from tollway.billing import usage as U
from tollway.billing.periods import to_us
from tollway.charge.limits import BUDGETS
from tollway.core.clock import ManualClock
from tollway.core.schema import (
    agent_escalations,
    alerts,
    provision_deployments,
    provision_versions,
    schedules,
    wallet_authorizations,
    wallets,
)
from tollway.core.storage import writer
from tollway.observe import alerts as K
from tollway.runtime import Runtime
from tollway.wallets.alerts import alerts as freeze_hook

SECRET = "whsec_test_0123456789"
SRC = str(Path(__file__).resolve().parents[1] / "src")
T0 = to_us(dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC))


class Receiver:
    """A webhook endpoint: records each POST; the first ``fail`` answer 500."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.fail = 0
        self.lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self.lock:
            status = 500 if self.fail > 0 else 200
            self.fail -= 1
            if status == 200:
                self.got.append((headers, body))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def ids(self) -> list[str]:
        return [json.loads(b)["id"] for _, b in self.got]


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    app = Receiver()
    with ThreadServer(app, lifespan="off") as srv:
        yield app, srv.url + "/hook"


def alert_settings(db_url: str, url: str, **alerts_over: Any) -> Any:
    cfg = {
        "webhooks": [{"url": url, "secret": SECRET}],
        "allow": ["127.0.0.1/32"],
        **alerts_over,
    }
    return settings_for(db_url, alerts=cfg)


@pytest.fixture
async def art(db_url: str, receiver: tuple[Receiver, str]) -> AsyncIterator[Runtime]:
    receiver[0].got.clear()
    receiver[0].fail = 0
    rt = Runtime.build(alert_settings(db_url, receiver[1], wallet_low_balance="$5"), clock=ManualClock(T0))
    yield rt
    await rt.close()


async def deliver(rt: Runtime) -> None:
    """What the server's loops do: new alerts become schedules, the scheduler runs the due ones."""
    await rt.alert_delivery.fan_out()
    await rt.scheduler.run_due()


def stripe_style_ok(header: str, body: bytes) -> bool:
    """The receiver's own check, as Stripe's docs describe it (no tollway code)."""
    fields = dict(p.split("=", 1) for p in header.split(","))
    mac = hmac.new(SECRET.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, fields["v1"])


async def test_a_delivery_is_signed_and_the_receiver_verifies_it(
    art: Runtime, receiver: tuple[Receiver, str]
) -> None:
    aid = await art.alerts.raise_alert(K.RESOURCE_SUSPENDED, "dep_1", {"reason": "abuse"}, "suspended:dep_1")
    assert aid is not None
    await deliver(art)
    [(headers, body)] = receiver[0].got
    assert stripe_style_ok(headers[HEADER.lower()], body)
    t = int(headers[HEADER.lower()].split(",")[0][2:])
    assert t == T0 // 1_000_000
    assert verify(SECRET, headers[HEADER.lower()], body, now=t)
    assert not verify(SECRET, headers[HEADER.lower()], body + b" ", now=t)  # a changed body
    assert not verify("whsec_other", headers[HEADER.lower()], body, now=t)  # another secret
    assert not verify(SECRET, headers[HEADER.lower()], body, now=t + 3600)  # a replay, later
    sent = json.loads(body)
    assert (
        sent["id"] == aid and sent["kind"] == "resource_suspended" and sent["payload"] == {"reason": "abuse"}
    )
    assert headers["tollway-alert-id"] == aid
    await deliver(art)
    assert len(receiver[0].got) == 1  # delivered: not again
    [a] = await art.alerts.list()
    assert a.deliveries is not None and a.deliveries[0]["status"] == "delivered"


async def test_retried_after_500s_with_backoff_then_delivered_once(
    art: Runtime, receiver: tuple[Receiver, str]
) -> None:
    clock = art.clock
    assert isinstance(clock, ManualClock)
    receiver[0].fail = 2
    aid = await art.alerts.raise_alert(K.RESOURCE_SUSPENDED, "dep_2", {}, "suspended:dep_2")
    await deliver(art)  # 500
    await deliver(art)  # not due yet: backoff 1 s
    clock.advance(1)
    await deliver(art)  # 500 again; next in 2 s
    clock.advance(1)
    await deliver(art)
    assert receiver[0].ids() == []
    clock.advance(1)
    await deliver(art)
    clock.advance(100)
    await deliver(art)
    assert receiver[0].ids() == [aid]
    [a] = await art.alerts.list()
    assert a.deliveries is not None
    [d] = a.deliveries
    assert (d["url"], d["status"], d["attempts"]) == (receiver[1], "delivered", 3)
    assert "answered 500" in d["last_error"]


async def test_a_delivery_gives_up_after_max_attempts_and_a_restart_continues(
    db_url: str, receiver: tuple[Receiver, str]
) -> None:
    receiver[0].got.clear()
    receiver[0].fail = 1
    clock = ManualClock(T0)
    rt = Runtime.build(alert_settings(db_url, receiver[1], max_attempts=2), clock=clock)
    await rt.alerts.raise_alert(K.RESOURCE_SUSPENDED, "x", {}, "x")
    await deliver(rt)
    await rt.close()
    clock.advance(5)
    rt = Runtime.build(alert_settings(db_url, receiver[1], max_attempts=2), clock=clock)  # a new process
    await deliver(rt)
    assert len(receiver[0].got) == 1
    receiver[0].fail = 5
    await rt.alerts.raise_alert(K.RESOURCE_SUSPENDED, "y", {}, "y")
    for _ in range(3):
        await deliver(rt)
        clock.advance(10)
    [y, _x] = await rt.alerts.list()
    assert y.deliveries is not None and y.deliveries[0]["status"] == "failed"
    assert y.deliveries[0]["attempts"] == 2 and "500" in y.deliveries[0]["last_error"]
    await rt.close()


async def test_private_webhooks_are_refused_unless_allowed(
    db_url: str, receiver: tuple[Receiver, str]
) -> None:
    receiver[0].got.clear()
    receiver[0].fail = 0
    rt = Runtime.build(alert_settings(db_url, receiver[1], allow=[], max_attempts=1), clock=ManualClock(T0))
    await rt.alerts.raise_alert(K.RESOURCE_SUSPENDED, "z", {}, "z")
    await deliver(rt)
    [z] = await rt.alerts.list()
    assert z.deliveries is not None and z.deliveries[0]["status"] == "failed"
    assert (
        "url_not_allowed" in z.deliveries[0]["last_error"] or "not fetched" in z.deliveries[0]["last_error"]
    )
    assert receiver[0].got == []
    await rt.close()


async def test_webhooks_get_only_the_kinds_they_ask_for(db_url: str, receiver: tuple[Receiver, str]) -> None:
    receiver[0].got.clear()
    receiver[0].fail = 0
    rt = Runtime.build(
        settings_for(
            db_url,
            alerts={"webhooks": [{"url": receiver[1], "kinds": ["token_frozen"]}], "allow": ["127.0.0.1/32"]},
        ),
        clock=ManualClock(T0),
    )
    await rt.alerts.raise_alert(K.RESOURCE_SUSPENDED, "a", {}, "a")
    await rt.alerts.raise_alert(K.TOKEN_FROZEN, "tok", {}, "b")
    await deliver(rt)
    [(headers, body)] = receiver[0].got
    assert json.loads(body)["kind"] == "token_frozen" and HEADER.lower() not in headers  # no secret: unsigned
    await rt.close()


def test_the_legacy_frozen_token_webhook_becomes_a_webhook_for_that_kind(db_url: str) -> None:
    rt = Runtime.build(settings_for(db_url, wallets={"alert_webhook_url": "https://ops.example/frozen"}))
    [hook] = rt.alert_delivery.cfg.webhooks
    assert hook.url == "https://ops.example/frozen" and hook.kinds == ["token_frozen"]
    asyncio.run(rt.close())


# ------------------------------------------------------------------ each kind


async def _count(rt: Runtime, kind: str) -> int:
    async with rt.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).where(alerts.c.kind == kind))).scalar_one())


async def test_each_kind_is_raised_by_its_trigger_once(art: Runtime) -> None:
    now = art.clock.now_us()
    c = await art.customers.create("Ada")
    # A budget: the gateway's daily budget account of a key, funded, 85% spent.
    acct = f"budget_key_key_abc_d{dt.datetime.fromtimestamp(now / 1e6, dt.UTC):%Y%m%d}"
    await art.ledger.create_account("budget", id=acct, customer_id=c.id, name="key daily budget")
    await art.ledger.transfer(BUDGETS, acct, 1_000_000)
    await art.ledger.transfer(acct, BUDGETS, 850_000)
    # A wallet under $5, an approval waiting on it, an open escalation, a failed deployment.
    wacct = await art.ledger.create_account("wallet", customer_id=c.id, name="w")
    await art.ledger.transfer("sys_funding", wacct.id, 1_000_000)
    async with writer(art.engine).begin() as conn:
        await conn.execute(
            wallets.insert().values(
                id="wal_1",
                owner=c.id,
                customer_id=c.id,
                account_id=wacct.id,
                policy="{}",
                created_at_us=now,
                updated_at_us=now,
            )
        )
        await conn.execute(
            wallet_authorizations.insert().values(
                id="wau_1",
                wallet_id="wal_1",
                token_id="tok_1",
                idempotency_key="k1",
                request_hash="h",
                amount=2_000_000,
                currency="USD",
                payee="https://shop.example",
                category="x",
                status="pending_approval",
                legs="[]",
                captured=0,
                expires_at_us=now + 10**9,
                memo="",
                created_at_us=now,
                updated_at_us=now,
            )
        )
        await conn.execute(
            agent_escalations.insert().values(
                id="esc_1",
                agent="support",
                session_id="s~1",
                customer_id=c.id,
                reason="asked",
                status="open",
                detail="",
                created_at_us=now,
            )
        )
        await conn.execute(
            provision_deployments.insert().values(
                id="dep_1",
                name="shop",
                wallet_id="wal_1",
                provider="local",
                live_version=None,
                hostnames="[]",
                status="active",
                last_request_at_us=now,
                created_at_us=now,
                updated_at_us=now,
            )
        )
        await conn.execute(
            provision_versions.insert().values(
                id="ver_1",
                deployment_id="dep_1",
                version=1,
                kind="asgi",
                entrypoint="app:app",
                sha256="0" * 64,
                size=1,
                status="failed",
                error="ImportError",
                created_at_us=now,
            )
        )
    for _ in range(3):  # any number of checks, any number of processes: once
        await art.alert_checks.run_once()
    assert await _count(art, K.BUDGET_THRESHOLD) == 2  # 50% and 80%, not 100%
    for kind in (K.WALLET_LOW_BALANCE, K.APPROVAL_WAITING, K.ESCALATION_WAITING, K.DEPLOYMENT_FAILED):
        assert await _count(art, kind) == 1, kind
    [b80] = [a for a in await art.alerts.list(kind=K.BUDGET_THRESHOLD) if a.payload["threshold"] == 80]
    assert (
        b80.payload["period"] == "daily"
        and b80.payload["scope"] == "key"
        and b80.payload["owner"] == "key_abc"
    )
    # 100%: the next threshold, once.
    await art.ledger.transfer(acct, BUDGETS, 150_000)
    await art.alert_checks.run_once()
    await art.alert_checks.run_once()
    assert await _count(art, K.BUDGET_THRESHOLD) == 3
    # The escalation answered later does not raise again; a new one does.
    async with writer(art.engine).begin() as conn:
        await conn.execute(update(agent_escalations).values(status="answered"))
    await art.alert_checks.run_once()
    assert await _count(art, K.ESCALATION_WAITING) == 1
    # A frozen token (the velocity guard's hook), a suspension (another face's call).
    freeze_hook(art.alerts)(
        {"type": "wallet.token_frozen", "wallet_id": "wal_1", "token_id": "tok_1", "reason": "r"}
    )
    for _ in range(200):  # raised in the background (an authorization does not wait for it)
        if await _count(art, K.TOKEN_FROZEN):
            break
        await asyncio.sleep(0.01)
    assert await _count(art, K.TOKEN_FROZEN) == 1
    assert await art.alerts.raise_alert(K.RESOURCE_SUSPENDED, "dep_1", {}, "suspended:dep_1:1") is not None
    assert await art.alerts.raise_alert(K.RESOURCE_SUSPENDED, "dep_1", {}, "suspended:dep_1:1") is None
    # Usage anomalies: raised by the rollup that flags them, once per customer-day.
    day = dt.date(2026, 11, 20)
    past = [
        {"id": f"p{b}", "feature": "reports", "quantity": 10, "timestamp_us": T0 - b * 86_400_000_000}
        for b in range(1, 5)
    ]
    await U.ingest(
        art.engine,
        art.clock,
        c.id,
        [*past, {"id": "t", "feature": "reports", "quantity": 31, "timestamp_us": T0}],
    )
    for b in range(4, 0, -1):
        await U.rollup_day(art.engine, art.clock, day - dt.timedelta(days=b))
    for _ in range(3):
        await U.rollup_day(art.engine, art.clock, day)
    [anomaly] = await art.alerts.list(kind=K.USAGE_ANOMALY)
    assert anomaly.subject == c.id and anomaly.payload["features"] == ["reports"]
    # Every alert delivered, once.
    await deliver(art)
    await deliver(art)
    async with art.engine.connect() as conn:
        n_alerts = (await conn.execute(select(func.count()).select_from(alerts))).scalar_one()
        states = [
            r[0]
            for r in await conn.execute(select(schedules.c.status).where(schedules.c.task == "alert.deliver"))
        ]
    assert len(states) == n_alerts == 10 and set(states) == {"done"}


# ------------------------------------------------------------------ API, CLI


async def test_list_filter_and_ack_over_http_and_bad_input(art: Runtime) -> None:
    from tollway.api.app import create_app

    a1 = await art.alerts.raise_alert(K.RESOURCE_SUSPENDED, "dep_1", {"n": 1}, "s1")
    await art.alerts.raise_alert(K.TOKEN_FROZEN, "tok_1", {}, "s2")
    app = create_app(rt=art)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.get("/admin/alerts", headers=ADMIN)
        assert r.status_code == 200 and len(r.json()["data"]) == 2
        r = await http.get("/admin/alerts", params={"kind": "resource_suspended"}, headers=ADMIN)
        [one] = r.json()["data"]
        assert one["id"] == a1 and one["payload"] == {"n": 1} and one["status"] == "open"
        r = await http.post(f"/admin/alerts/{a1}/ack", json={"by": "ops@example"}, headers=ADMIN)
        assert (
            r.status_code == 200 and r.json()["status"] == "acked" and r.json()["acked_by"] == "ops@example"
        )
        err(await http.post(f"/admin/alerts/{a1}/ack", json={}, headers=ADMIN), 409, "alert_acked")
        r = await http.get("/admin/alerts", params={"status": "open"}, headers=ADMIN)
        assert [a["kind"] for a in r.json()["data"]] == ["token_frozen"]
        err(await http.post("/admin/alerts/alt_nope/ack", json={}, headers=ADMIN), 404, "alert_not_found")
        err(await http.post(f"/admin/alerts/{a1}/ack", json={"by": 5}, headers=ADMIN), 400, "invalid_by")
        err(
            await http.post(f"/admin/alerts/{a1}/ack", json={"x": 1}, headers=ADMIN), 400, "unknown_parameter"
        )
        r = await http.get("/admin/alerts", params={"status": "weird"}, headers=ADMIN)
        assert r.status_code == 400 and "error" in r.json()
        r = await http.get("/admin/alerts", params={"limit": 0}, headers=ADMIN)
        assert r.status_code == 400
        assert (await http.get("/admin/alerts")).status_code == 401


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_alerts_list_json(db_url: str, tmp_path: Path) -> None:
    from tollway.cli.main import app

    cfg = tmp_path / "tollway.toml"
    cfg.write_text(f'[database]\nurl = "{db_url}"\n')

    async def raise_one() -> None:
        rt = Runtime.build(settings_for(db_url))
        await rt.alerts.raise_alert(K.DEPLOYMENT_FAILED, "shop", {"error": "boom"}, "d1")
        await rt.close()

    asyncio.run(raise_one())
    r = CliRunner().invoke(app, ["--config", str(cfg), "alerts", "list", "--json"])
    assert r.exit_code == 0, r.output
    [a] = json.loads(r.stdout)["data"]
    assert a["kind"] == "deployment_failed" and a["subject"] == "shop" and a["status"] == "open"
    r = CliRunner().invoke(app, ["--config", str(cfg), "alerts", "ack", a["id"], "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "acked"
    r = CliRunner().invoke(app, ["--config", str(cfg), "alerts", "list"])
    assert r.exit_code == 0 and "deployment_failed" in r.stdout


# ------------------------------------------------------------- two processes

PROCESS = textwrap.dedent(
    """
    import asyncio, sys
    from tollway.alerts.delivery import Delivery
    from tollway.observe.alerts import AlertsConfig
    from tollway.core.clock import SystemClock
    from tollway.core.storage import make_engine
    from tollway.core.config import DatabaseConfig
    from tollway.schedules import Scheduler

    async def main(url, hook):
        cfg = AlertsConfig(webhooks=[{"url": hook, "secret": "s"}], allow=["127.0.0.1/32"])
        engine = make_engine(DatabaseConfig(url=url))
        scheduler = Scheduler(engine, SystemClock())
        d = Delivery(engine, SystemClock(), cfg, scheduler)
        for _ in range(20):
            await d.fan_out()
            await scheduler.run_due(limit=5)
        await d.aclose()
        await engine.dispose()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


@pytest.mark.slow  # spawns two processes
@pytest.mark.skipif(not PG_URL, reason=PG_SKIP)
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_two_processes_deliver_each_alert_once(db_url: str, receiver: tuple[Receiver, str]) -> None:
    receiver[0].got.clear()
    receiver[0].fail = 0
    rt = Runtime.build(settings_for(db_url))
    made = [await rt.alerts.raise_alert(K.RESOURCE_SUSPENDED, f"r{i}", {}, f"two:{i}") for i in range(40)]
    await rt.close()
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", PROCESS, db_url, receiver[1], env=env)
        for _ in range(2)
    ]
    for p in procs:
        assert await asyncio.wait_for(p.wait(), 120) == 0
    assert sorted(receiver[0].ids()) == sorted(m for m in made if m)
    assert len(receiver[0].ids()) == 40


async def test_budget_thresholds_of_the_gateways_budgets_as_charges_spend_them(art: Runtime) -> None:
    """The gateway's own budget accounts (tollway.gateway.budgets), spent by real
    holds: 50% and 80% of the daily budget, then 100%; the monthly one at 50%."""
    from tollway.charge.hold import Payer
    from tollway.gateway.budgets import Budgets
    from tollway.gateway.limits import Limits

    c = await art.customers.create("Ada")
    await art.ledger.transfer("sys_funding", c.account_id, 10_000_000)
    limits = Limits(daily_budget=1_000_000, monthly_budget=2_000_000)
    budgets = Budgets(art.ledger, art.clock)

    async def spend(amount: int) -> None:
        caps = tuple(await budgets.caps("customer", c.id, c.id, limits))
        async with art.charger.hold(Payer(c.account_id, c.id, caps=caps), amount, meter="tokens") as h:
            h.post(amount)

    await spend(500_000)
    await art.alert_checks.run_once()
    found = {
        (a.payload["period"], a.payload["threshold"]) for a in await art.alerts.list(kind=K.BUDGET_THRESHOLD)
    }
    assert found == {("daily", 50)}
    await spend(350_000)
    await art.alert_checks.run_once()
    await spend(150_000)
    await art.alert_checks.run_once()
    await art.alert_checks.run_once()
    got = [
        (a.payload["period"], a.payload["threshold"]) for a in await art.alerts.list(kind=K.BUDGET_THRESHOLD)
    ]
    assert sorted(got) == [("daily", 50), ("daily", 80), ("daily", 100), ("monthly", 50)]
    [a] = [a for a in await art.alerts.list(kind=K.BUDGET_THRESHOLD) if a.payload["threshold"] == 100]
    assert a.subject == f"customer:{c.id}" and a.payload["spent"] == a.payload["budget"] == 1_000_000


async def test_concurrent_raises_and_checks_make_one_alert(art: Runtime) -> None:
    got = await asyncio.gather(
        *[art.alerts.raise_alert(K.RESOURCE_SUSPENDED, "d", {}, "same") for _ in range(20)]
    )
    assert len([g for g in got if g is not None]) == 1
    now = art.clock.now_us()
    async with writer(art.engine).begin() as conn:
        await conn.execute(
            agent_escalations.insert().values(
                id="esc_c",
                agent="support",
                session_id="s~1",
                customer_id="cus_x",
                reason="asked",
                status="open",
                detail="",
                created_at_us=now,
            )
        )
    raised = await asyncio.gather(*[art.alert_checks.run_once() for _ in range(5)])
    assert sum(raised) == 1 and await _count(art, K.ESCALATION_WAITING) == 1
