"""Recurring costs (issue 22 §4): metered hosting and domain renewals charged
by the billing tick to the owning wallet, each once per interval or term;
what cannot be paid goes through grace, suspension and reclamation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from provision_support import hello, provisioned
from recurring_support import DAY_US, HOUR, World, world
from threaded import free_port
from tollway.core.schema import provision_billing as B
from tollway.core.schema import provision_deployments as P
from tollway.core.schema import provision_domains as D
from tollway.core.storage import writer
from tollway.provision.config import ProvisionConfig
from tollway.provision.domains import YEAR_US
from tollway.provision.metering import owed
from tollway.runtime import Runtime

PRICE = {"hosting_price_per_worker_second": 7, "grace_hours": 72, "reclaim_after_hours": 168}


# ------------------------------------------------------------------ exactness


@settings(max_examples=300, deadline=None)
@given(
    price_milli=st.integers(0, 50_000),  # up to 50 micro-USD a second, to 1/1000 micro-USD
    per_request_milli=st.integers(0, 5_000),
    ticks=st.lists(st.tuples(st.integers(0, 10**10), st.integers(0, 1000)), max_size=40),
)
def test_charges_over_any_tick_split_sum_to_the_exact_price(
    price_milli: int, per_request_milli: int, ticks: list[tuple[int, int]]
) -> None:
    billed = us = n = 0
    for dus, dn in ticks:
        us, n = us + dus, n + dn
        charge = owed(us, n, price_milli, per_request_milli) - billed
        assert charge >= 0
        billed += charge
    exact_nano_us = us * price_milli + n * per_request_milli * 1_000_000
    assert billed == exact_nano_us // 10**9  # the floor of the exact total: no drift, any split
    assert exact_nano_us - billed * 10**9 < 10**9  # what is carried is under one micro-USD


@given(price=st.integers(0, 10**6), seconds=st.lists(st.integers(0, 10**6), max_size=30))
def test_whole_prices_charge_price_times_seconds(price: int, seconds: list[int]) -> None:
    billed, total = 0, 0
    for s in seconds:
        total += s
        billed += owed(total * 1_000_000, 0, price * 1000, 0) - billed
    assert billed == price * sum(seconds)


def test_fractional_prices_are_exact_to_a_thousandth() -> None:
    cfg = ProvisionConfig.model_validate({"hosting_price_per_worker_second": "0.125"})
    assert cfg.nanos_per_worker_second == 125
    assert ProvisionConfig.model_validate({"hosting_price_per_request": 2}).nanos_per_request == 2000
    for bad in ("0.0001", "-1", "abc", "inf"):
        with pytest.raises(ValueError):
            ProvisionConfig.model_validate({"hosting_price_per_worker_second": bad})


# -------------------------------------------------------------------- hosting


async def test_hosting_is_charged_exactly_through_a_wallet_authorization(db_url: str, tmp_path: Path) -> None:
    async with world(db_url, tmp_path, **PRICE) as w:
        await w.wallet(100_000_000)
        dep = await w.deployment("shop")
        start = await w.available()
        charged = 0
        for seconds in (1, 59, 3600, 0, 17):
            await w.rt.provision.recurring.record({dep: (seconds * 1_000_000, 0)})
            w.next_interval()
            report = await w.rt.provision.tick()
            charged += sum(c["amount"] for c in report["charged"])
        assert charged == 7 * (1 + 59 + 3600 + 17)
        assert start - await w.available() == charged
        auths = await w.authorizations("hosting")
        assert [a.status for a in auths] == ["captured"] * 4
        assert sum(a.captured for a in auths) == charged
        assert {a.payee for a in auths} == {"local"}  # the provider
        assert all(dep in a.memo for a in auths)  # the deployment it paid for
        assert (await w.rt.provision.recurring.usage(dep))["billed"] == charged


async def test_a_tick_bills_once_per_interval(db_url: str, tmp_path: Path) -> None:
    async with world(db_url, tmp_path, **PRICE) as w:
        await w.wallet(100_000_000)
        dep = await w.deployment("shop")
        await w.rt.provision.recurring.record({dep: (10_000_000, 0)})
        w.next_interval()
        reports = await asyncio.gather(*[w.rt.provision.tick() for _ in range(5)])
        assert sum(len(r["charged"]) for r in reports) == 1
        await w.rt.provision.recurring.record({dep: (10_000_000, 0)})
        await w.rt.provision.tick()  # the same interval: the new use waits for the next
        assert len(await w.authorizations("hosting")) == 1
        w.next_interval()
        await w.rt.provision.tick()
        assert [a.captured for a in await w.authorizations("hosting")] == [70, 70]


async def test_a_tick_beside_this_process_s_flush_bills_what_it_is_writing(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background flush takes the runner's use, then writes it; a tick run meanwhile
    (the demo's last one) waits for it and bills that use, not nothing. Seen in CI:
    the demo's P&L showed no metered hosting."""
    async with world(db_url, tmp_path, **PRICE) as w:
        await w.wallet(100_000_000)
        dep = await w.deployment("shop")
        w.rt.provision.runner.worker_us[dep] = 10_000_000  # 10 live worker-seconds, not yet flushed
        recurring = w.rt.provision.recurring
        record, taken, go = recurring.record, asyncio.Event(), asyncio.Event()

        async def slow_first(usage: dict[str, tuple[int, int]]) -> None:
            if not taken.is_set():
                taken.set()
                await go.wait()
            await record(usage)

        monkeypatch.setattr(recurring, "record", slow_first)
        w.next_interval()
        flushing = asyncio.create_task(w.rt.provision.flush())
        await taken.wait()
        ticking = asyncio.create_task(w.rt.provision.tick())
        await asyncio.sleep(0.3)
        assert not ticking.done()  # it waits for the flush in progress
        go.set()
        report, _ = await asyncio.gather(ticking, flushing)
        assert [c["amount"] for c in report["charged"]] == [70]


async def test_requests_are_metered_too(db_url: str, tmp_path: Path) -> None:
    async with world(db_url, tmp_path, hosting_price_per_request="0.5") as w:
        await w.wallet(100_000_000)
        dep = await w.deployment("shop")
        w.rt.provision.runner.count(dep)
        w.rt.provision.runner.count(dep)
        w.rt.provision.runner.count(dep)
        w.next_interval()
        report = await w.rt.provision.tick()  # flushes the runner's counts first
        assert [c["amount"] for c in report["charged"]] == [1]  # 1.5 micro-USD: 1 now, .5 carried
        w.rt.provision.runner.count(dep)
        w.next_interval()
        assert [c["amount"] for c in (await w.rt.provision.tick())["charged"]] == [1]


# ------------------------------------------------------------------- renewals


async def test_a_domain_near_expiry_is_renewed_once(db_url: str, tmp_path: Path) -> None:
    async with world(db_url, tmp_path, renew_days_before=30) as w:
        await w.wallet(10_000_000)
        far = await w.domain("far.test", 200)
        near = await w.domain("near.test", 10, renew=1_000_000)
        reports = await asyncio.gather(*[w.rt.provision.tick() for _ in range(3)])
        assert sum(len(r["renewed"]) for r in reports) == 1
        w.next_interval()  # another interval, another key: the term is renewed already
        await w.rt.provision.tick()
        auths = await w.authorizations("domains")
        assert [(a.status, a.captured) for a in auths] == [("captured", 1_000_000)]
        assert await w.available() == 9_000_000
        async with w.rt.engine.connect() as conn:
            exp = dict((await conn.execute(select(D.c.id, D.c.expires_at_us))).all())
        assert exp[near] == w.clock.now_us() - HOUR * 1_000_000 + 10 * DAY_US + YEAR_US
        assert exp[far] == w.clock.now_us() - HOUR * 1_000_000 + 200 * DAY_US


async def test_a_tick_that_replays_a_renewal_done_beside_it_does_not_report_it(
    db_url: str, tmp_path: Path
) -> None:
    """Ticks running together share the renewal's key: one that finds the key's
    authorization already captured (another tick renewed meanwhile) replays it,
    takes nothing and does not report the renewal as its own (the CI run of
    2026-12-07 saw three concurrent ticks report it twice)."""
    async with world(db_url, tmp_path, renew_days_before=30) as w:
        await w.wallet(10_000_000)
        near = await w.domain("near.test", 10, renew=1_000_000)
        async with w.rt.engine.connect() as conn:
            before = (await conn.execute(select(D).where(D.c.id == near))).one()
        first = await w.rt.provision.tick()
        assert [r["domain_id"] for r in first["renewed"]] == [near]
        recurring = w.rt.provision.recurring
        late: dict[str, Any] = {"renewed": [], "failed": []}
        await recurring._renew(before, first["interval"], late)  # the row as a slower tick read it
        assert late == {"renewed": [], "failed": []}
        auths = await w.authorizations("domains")
        assert [(a.status, a.captured) for a in auths] == [("captured", 1_000_000)]
        assert await w.available() == 9_000_000


# ------------------------------------------------------------- unpaid charges


async def _failing(w: World) -> str:
    await w.wallet(100)  # 100 micro-USD: less than the first charge
    dep = await w.deployment("shop")
    await w.rt.provision.recurring.record({dep: (3_600_000_000, 0)})  # an hour: 25 200 micro-USD
    w.next_interval()
    report = await w.rt.provision.tick()
    assert [f["reason"] for f in report["failed"]] == ["insufficient_funds"]
    return dep


async def test_an_unpaid_charge_starts_grace_and_alerts_once(db_url: str, tmp_path: Path) -> None:
    async with world(db_url, tmp_path, **PRICE) as w:
        dep = await _failing(w)
        due = await w.rt.provision.dues.get("deployment", dep)
        assert due is not None and due.state == "grace" and due.amount == 25_200
        assert due.grace_until_us == w.clock.now_us() + 72 * HOUR * 1_000_000
        assert [a["type"] for a in w.alerts] == ["provision.payment_failed"]
        w.next_interval()
        await w.rt.provision.tick()  # tried again, refused again: no second alert
        assert [a["type"] for a in w.alerts] == ["provision.payment_failed"]
        assert await w.available() == 100  # nothing was taken
        assert (await w.rt.provision.recurring.usage(dep))["billed"] == 0  # still owed
        assert w.rt.provision.deployments.blocked(dep, "shop.tollway.localhost") is None


async def test_topping_up_before_the_end_of_grace_lifts_it(db_url: str, tmp_path: Path) -> None:
    async with world(db_url, tmp_path, **PRICE) as w:
        dep = await _failing(w)
        w.clock.advance(70 * HOUR)
        await w.rt.wallets.topup(w.wallet_id, 1_000_000)
        report = await w.rt.provision.tick()
        assert [c["amount"] for c in report["charged"]] == [25_200]
        assert await w.rt.provision.dues.get("deployment", dep) is None
        assert [a["type"] for a in w.alerts] == ["provision.payment_failed", "provision.payment_recovered"]
        w.clock.advance(10 * HOUR)
        assert (await w.rt.provision.tick())["suspended"] == []


async def test_past_grace_it_is_suspended_then_reclaimed(db_url: str, tmp_path: Path) -> None:
    async with world(db_url, tmp_path, **PRICE) as w:
        dep = await _failing(w)
        w.clock.advance(71 * HOUR)
        assert (await w.rt.provision.tick())["suspended"] == []
        w.clock.advance(1 * HOUR)
        report = await w.rt.provision.tick()
        assert [s["subject_id"] for s in report["suspended"]] == [dep]
        assert w.alerts[-1]["type"] == "provision.suspended"
        await w.rt.provision.deployments.route("shop.tollway.localhost")  # the routes are rebuilt
        assert w.rt.provision.deployments.blocked(dep, "shop.tollway.localhost") == "deployment_suspended"
        w.clock.advance(167 * HOUR)
        assert (await w.rt.provision.tick())["reclaim"]["reclaimed"] == []
        w.clock.advance(1 * HOUR)
        report = await w.rt.provision.tick()
        rec = report["reclaim"]
        assert [r["subject_id"] for r in rec["reclaimed"]] == [dep]
        assert rec["saved"] == w.rt.settings.provision.hosting_monthly_price and rec["written_off"] == 25_200
        assert w.alerts[-1]["type"] == "provision.reclaimed"
        async with w.rt.engine.connect() as conn:
            assert (await conn.execute(select(P.c.status).where(P.c.id == dep))).scalar() == "deleted"
        assert await w.rt.provision.dues.all() == []
        assert (await w.rt.provision.tick())["failed"] == []  # a reclaimed deployment is not billed
        assert await w.available() == 100


async def test_paying_while_suspended_lifts_the_suspension(db_url: str, tmp_path: Path) -> None:
    async with world(db_url, tmp_path, **PRICE) as w:
        dep = await _failing(w)
        w.clock.advance(73 * HOUR)
        await w.rt.provision.tick()
        await w.rt.wallets.topup(w.wallet_id, 1_000_000)
        w.next_interval()
        await w.rt.provision.tick()
        await w.rt.provision.deployments.route("shop.tollway.localhost")
        assert w.rt.provision.deployments.blocked(dep, "shop.tollway.localhost") is None
        assert await w.rt.provision.dues.all() == []


async def test_a_spending_limit_refuses_hosting_like_anything_else(db_url: str, tmp_path: Path) -> None:
    policy = {"spending_limits": [{"amount": 1_000, "interval": "daily", "categories": ["hosting"]}]}
    async with world(db_url, tmp_path, **PRICE) as w:
        await w.wallet(100_000_000, policy)
        dep = await w.deployment("shop")
        await w.rt.provision.recurring.record({dep: (1_000_000_000, 0)})  # 7 000 micro-USD
        w.next_interval()
        report = await w.rt.provision.tick()
        assert [f["reason"] for f in report["failed"]] == ["spending_limit_exceeded"]
        assert await w.available() == 100_000_000


async def test_an_unpaid_renewal_holds_the_domain(db_url: str, tmp_path: Path) -> None:
    async with world(db_url, tmp_path, **PRICE) as w:
        await w.wallet(100)
        dom = await w.domain("held.test", 5)
        report = await w.rt.provision.tick()
        assert [(f["kind"], f["reason"]) for f in report["failed"]] == [("domain", "insufficient_funds")]
        w.clock.advance(72 * HOUR)
        report = await w.rt.provision.tick()
        assert [s["subject_id"] for s in report["suspended"]] == [dom]
        await w.rt.provision.deployments.route("held.test")
        assert w.rt.provision.deployments.blocked("dep_x", "www.held.test") == "domain_suspended"
        w.clock.advance(168 * HOUR)
        rec = (await w.rt.provision.tick())["reclaim"]
        assert [r["name"] for r in rec["reclaimed"]] == ["held.test"] and rec["saved"] == 1_000_000
        assert await w.rt.provision.domains.all() == []


async def test_the_edge_answers_402_deployment_suspended(db_url: str, tmp_path: Path) -> None:
    async with world(db_url, tmp_path, **PRICE) as w:
        await _failing(w)
        w.clock.advance(72 * HOUR)
        await w.rt.provision.tick()
        await w.rt.provision.start(edge_port=free_port())
        port = w.rt.provision.edge_port
        assert port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /buy HTTP/1.1\r\nHost: shop.tollway.localhost\r\n\r\n")
        await writer.drain()
        raw = await reader.read()
        writer.close()
        head, body = raw.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 402 ")
        err = json.loads(body)["error"]
        assert (err["type"], err["code"]) == ("payment_error", "deployment_suspended")


@pytest.mark.slow
async def test_a_live_worker_is_metered_and_charged(db_url: str, tmp_path: Path) -> None:
    prices = {"hosting_price_per_worker_second": 1000, "hosting_price_per_request": "0.5"}
    async with provisioned(db_url, tmp_path, **prices) as a:
        r = await a.post("/deployments", {"name": "metered", "entrypoint": "app:app", "bundle": hello("m")})
        assert r.status_code == 201, r.text
        dep = r.json()["id"]
        edge = f"http://127.0.0.1:{a.rt.provision.edge_port}"
        for i in range(3):  # a connection each: the edge meters what it routes
            async with httpx.AsyncClient(base_url=edge, headers={"host": "metered.tollway.localhost"}) as e:
                assert (await e.get(f"/{i}")).text == f"hello m /{i}"
        before = await a.available()
        report = await a.rt.provision.tick()
        use = await a.rt.provision.recurring.usage(dep)
        assert use["requests"] == 3 and use["worker_us"] > 0
        assert [c["amount"] for c in report["charged"]] == [use["billed"]]
        assert use["billed"] == owed(use["worker_us"], 3, 1_000_000, 500) > 0
        assert before - await a.available() == use["billed"]


async def _claim_and_die(w: World, dep: str, amount: int) -> str:
    """What a process that died right after claiming a charge leaves behind."""
    interval = w.rt.provision.recurring.interval()
    key = f"hosting:{dep}:{interval}"
    async with writer(w.rt.engine).begin() as conn:
        await conn.execute(
            update(B)
            .where(B.c.deployment_id == dep)
            .values(billed=B.c.billed + amount, last_interval=interval, pending_key=key,
                    pending_amount=amount, pending_at_us=w.clock.now_us())
        )  # fmt: skip
    return key


async def test_a_charge_left_pending_by_a_dead_process_is_resumed(db_url: str, tmp_path: Path) -> None:
    async with world(db_url, tmp_path, **PRICE) as w:
        await w.wallet(1_000_000)
        dep = await w.deployment("shop")
        await w.rt.provision.recurring.record({dep: (10_000_000, 0)})
        w.next_interval()
        await _claim_and_die(w, dep, 70)
        assert (await w.rt.provision.tick())["charged"] == []  # its lease runs still
        w.clock.advance(601)
        assert [c["amount"] for c in (await w.rt.provision.tick())["charged"]] == [70]
        assert [a.captured for a in await w.authorizations("hosting")] == [70]
        assert (await w.rt.provision.recurring.usage(dep))["billed"] == 70
        assert await w.available() == 1_000_000 - 70


async def test_a_resumed_charge_whose_hold_expired_is_owed_again(db_url: str, tmp_path: Path) -> None:
    async with world(db_url, tmp_path, **PRICE) as w:
        await w.wallet(1_000_000)
        dep = await w.deployment("shop")
        await w.rt.provision.recurring.record({dep: (10_000_000, 0)})
        w.next_interval()
        key = await _claim_and_die(w, dep, 70)
        d = await w.rt.authorizer.recurring(
            w.wallet_id, amount=70, payee="local", category="hosting", idempotency_key=key,
            memo=f"hosting deployment {dep} (shop): metered use",
        )  # fmt: skip
        assert d.status == "approved"  # held, then the process died before the capture
        w.clock.advance(w.rt.settings.wallets.hold_seconds + 1)
        assert (await w.rt.provision.tick())["charged"] == []
        assert (await w.rt.provision.recurring.usage(dep))["billed"] == 0  # owed again
        w.next_interval()
        assert [c["amount"] for c in (await w.rt.provision.tick())["charged"]] == [70]
        assert await w.available() == 1_000_000 - 70


async def test_a_process_finding_the_term_renewed_under_its_key_leaves_the_capture(
    db_url: str, tmp_path: Path
) -> None:
    """Two processes renewing one term use one key, so one authorization. The one
    whose work finds the term renewed (under that authorization) must leave it to
    the renewer: its void released the renewer's hold, whose capture then failed,
    and the domain was renewed unpaid (seen in the four-process test)."""
    async with world(db_url, tmp_path, renew_days_before=30) as w:
        await w.wallet(10_000_000)
        dom = await w.domain("race.test", 10, renew=1_000_000)
        other = Runtime.build(w.rt.settings, clock=w.clock)  # a second process on the database
        try:
            async with w.rt.engine.connect() as conn:
                row = (await conn.execute(select(D).where(D.c.id == dom))).one()  # both read it due
            interval = w.rt.provision.recurring.interval()
            seen: list[dict[str, Any]] = []
            renew = w.rt.provision.provider.renew

            async def renew_while_the_other_ticks(name: str, years: int) -> None:
                report: dict[str, Any] = {"renewed": [], "failed": []}
                await other.provision.recurring._renew(row, interval, report)  # between work and capture
                seen.append(report)
                await renew(name, years)

            w.rt.provision.provider.renew = renew_while_the_other_ticks  # type: ignore[method-assign]
            report: dict[str, Any] = {"renewed": [], "failed": []}
            await w.rt.provision.recurring._renew(row, interval, report)
            assert seen == [{"renewed": [], "failed": []}]  # the other found it done, and did nothing
            assert [r["amount"] for r in report["renewed"]] == [1_000_000]
            auths = await w.authorizations("domains")
            assert [(a.status, a.captured) for a in auths] == [("captured", 1_000_000)]
            assert await w.available() == 9_000_000
        finally:
            await other.close()


async def test_a_term_renewed_by_hand_meanwhile_voids_the_ticks_charge(db_url: str, tmp_path: Path) -> None:
    """The other side of it: renewed under another authorization (by hand), the
    tick's own hold is released at once, not left until it expires."""
    async with world(db_url, tmp_path, renew_days_before=30) as w:
        await w.wallet(10_000_000)
        dom = await w.domain("hand.test", 10, renew=1_000_000)
        async with w.rt.engine.connect() as conn:
            row = (await conn.execute(select(D).where(D.c.id == dom))).one()
        async with writer(w.rt.engine).begin() as conn:  # renewed by hand, under its own authorization
            await conn.execute(
                update(D)
                .where(D.c.id == dom)
                .values(expires_at_us=row.expires_at_us + YEAR_US, authorization_id="x")
            )
        report: dict[str, Any] = {"renewed": [], "failed": []}
        await w.rt.provision.recurring._renew(row, w.rt.provision.recurring.interval(), report)
        assert report == {"renewed": [], "failed": []}
        auths = await w.authorizations("domains")
        assert [(a.status, a.captured) for a in auths] == [("voided", 0)]
        assert await w.available() == 10_000_000


async def test_a_capture_the_ledger_holds_is_a_capture_whatever_the_record_says(
    db_url: str, tmp_path: Path
) -> None:
    """A process captured under the key (the ledger posted the hold) and its record
    never said so (the process died first; on SQLite the record also lags, riding
    with that process's next batch). Another call with the key then finds the hold
    resolved: that is the capture it asked for, not an error."""
    async with world(db_url, tmp_path) as w:
        wallet = await w.wallet(10_000_000)
        other = Runtime.build(w.rt.settings, clock=w.clock)
        try:

            async def nothing(_: object) -> None:
                return None

            async def lost(*_: object, **__: object) -> None:  # the record dies with its process
                return None

            args: dict[str, Any] = {
                "amount": 2_500,
                "category": "hosting",
                "key": "k1",
                "memo": "m",
                "work": nothing,
            }
            other.provision.recurring.purchases.authorizer.records.finish = lost  # type: ignore[method-assign]
            d = await other.provision.recurring.purchases.recurring(wallet, **args)  # posted, unrecorded
            mine = w.rt.provision.recurring.purchases.authorizer
            assert (await mine.get(d.id)).status == "approved"  # the record never caught up
            assert await mine.captured(d.id)  # the ledger's word: what a capture conflict reads
            again = await w.rt.provision.recurring.purchases.recurring(wallet, **args)  # the key again
            assert again.id == d.id and again.status == "captured"  # the ledger replays the post
            assert await w.available() == 10_000_000 - 2_500  # charged once
        finally:
            await other.close()
