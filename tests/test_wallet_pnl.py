"""A wallet's profit and loss, derived from its ledger transfers: generated
activity (earnings with their fees, captures by category, broker payments,
top-ups, withdrawals, open holds) always sums, and the balance identity
holds; over HTTP for the owner and the agent, and from the CLI."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ADMIN, err, settings_for
from tollway.core.clock import ManualClock
from tollway.ledger.ops import Usage
from tollway.runtime import Runtime
from tollway.wallets.pnl import month_of, period, wallet_pnl

ROUTES = [("api.shop.example", "/price"), ("api.shop.example", "/quote"), ("b.tollway.localhost", "/")]
CATEGORIES = ["hosting", "domains", "dns", "ai_inference", "api_access"]
EXPECTED = {"ai_inference": "inference"}

Op = tuple[str, int, int, int]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("topup"), st.integers(1, 5_000_000), st.just(0), st.just(0)),
        st.tuples(st.just("earn"), st.integers(1, 3_000_000), st.integers(0, 2), st.integers(0, 30)),
        st.tuples(st.just("spend"), st.integers(1, 2_000_000), st.integers(0, 4), st.integers(0, 100)),
        st.tuples(st.just("fetch"), st.integers(1, 500_000), st.just(0), st.integers(0, 100)),
        st.tuples(st.just("hold"), st.integers(1, 1_000_000), st.integers(0, 4), st.just(0)),
        st.tuples(st.just("withdraw"), st.integers(1, 1_000_000), st.just(0), st.just(0)),
    ),
    min_size=1,
    max_size=25,
)


async def earn(
    rt: Runtime, account_id: str, wallet_id: str, gross: int, host: str, path: str, fee: int
) -> None:
    """The earnings' convention: gross credited with an ``x402_earnings`` usage event, the fee to sys_fees."""
    meta = {"rule_id": "r1", "host": host, "path": path, "wallet_id": wallet_id}
    await rt.ledger.transfer(
        "sys_settlement",
        account_id,
        gross,
        description="x402 earnings",
        usage=Usage("x402_earnings", 1, None, meta),
    )
    if fee:
        await rt.ledger.transfer(account_id, "sys_fees", fee, description="x402 fee")


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(activity=ops, before=st.integers(0, 3_000_000))
def test_generated_activity_always_sums(sqlite_template: Path, activity: list[Op], before: int) -> None:
    asyncio.run(_run(sqlite_template, activity, before))


async def _run(template: Path, activity: list[Op], before: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(template, Path(d) / "t.db")
        clock = ManualClock()
        rt = Runtime.build(settings_for(f"sqlite:///{Path(d) / 't.db'}"), clock=clock)
        try:
            w = await rt.wallets.create(owner="ada")
            if before:
                await rt.wallets.topup(w.id, before, source="sys_funding")
            clock.advance(seconds=1)
            start = clock.now_us()
            _, token = await rt.wallets.grant(w.id)
            want: dict[str, Any] = {"routes": {}, "costs": {}, "topups": 0, "withdrawals": 0, "held": 0}
            for i, (kind, amount, pick, pct) in enumerate(activity):
                clock.advance(us=10)
                avail = (await rt.ledger.get_account(w.account_id)).available
                if kind == "topup":
                    await rt.wallets.topup(w.id, amount, source="sys_funding")
                    want["topups"] += amount
                elif kind == "earn":
                    host, path = ROUTES[pick]
                    fee = amount * pct // 100
                    await earn(rt, w.account_id, w.id, amount, host, path, fee)
                    want["routes"][host + path] = want["routes"].get(host + path, 0) + amount
                    if fee:
                        want["costs"]["fees"] = want["costs"].get("fees", 0) + fee
                elif kind == "withdraw":
                    if amount <= avail:
                        await rt.ledger.transfer(
                            w.account_id, "sys_funding", amount, description="withdrawal"
                        )
                        want["withdrawals"] += amount
                else:
                    if amount > avail:
                        continue
                    cat = "api_access" if kind == "fetch" else CATEGORIES[pick]
                    memo = "x402 GET https://paid.example/x" if kind == "fetch" else ""
                    d_ = await rt.authorizer.authorize(
                        token,
                        amount=amount,
                        payee="paid.example",
                        category=cat,
                        idempotency_key=f"k{i}",
                        memo=memo,
                    )
                    assert d_.status == "approved", d_.reason
                    if kind == "hold":
                        want["held"] += amount
                        continue
                    take = amount * pct // 100
                    await rt.authorizer.capture(d_.id, take)
                    group = "paid_fetches" if kind == "fetch" else EXPECTED.get(cat, cat)
                    if take:
                        want["costs"][group] = want["costs"].get(group, 0) + take
            clock.advance(us=10)
            await rt.ledger.riders_committed()
            report = (await wallet_pnl(rt.engine, w.id, w.account_id, start, clock.now_us() + 1)).to_dict()
            acct = await rt.ledger.get_account(w.account_id)
        finally:
            await rt.close()
    assert report["revenue"]["by_route"] == want["routes"]
    assert report["revenue"]["total"] == sum(report["revenue"]["by_route"].values())
    assert report["costs"]["by_category"] == want["costs"]
    assert report["costs"]["total"] == sum(report["costs"]["by_category"].values())
    assert report["net"] == report["revenue"]["total"] - report["costs"]["total"]
    assert report["topups"] == want["topups"] and report["withdrawals"] == want["withdrawals"]
    assert report["opening_balance"] == before
    assert report["closing_balance"] == acct.balance
    # the identity: the balance's change over the period is net + top-ups - withdrawals
    assert acct.balance - before == report["net"] + report["topups"] - report["withdrawals"]
    assert report["committed"] == want["held"] == acct.debits_pending


def test_periods_default_to_the_month() -> None:
    jan15 = 1_768_478_400_000_000  # 2026-01-15T12:00Z
    assert month_of(jan15) == (1_767_225_600_000_000, 1_769_904_000_000_000)
    assert period(jan15, None, None) == month_of(jan15)
    assert period(jan15, "2026-01-10", "2026-01-11") == (1_768_003_200_000_000, 1_768_089_600_000_000)
    dec = int(dt.datetime(2026, 12, 31, 23, tzinfo=dt.UTC).timestamp()) * 1_000_000
    assert month_of(dec)[1] == int(dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000


@pytest.fixture
async def http_rt(db_url: str) -> Any:
    import httpx

    from tollway.api.app import create_app

    rt = Runtime.build(settings_for(db_url))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t"
    ) as c:
        yield rt, c
    await rt.close()


async def test_the_owner_and_the_agent_read_the_same_pnl(http_rt: Any) -> None:
    rt, http = http_rt
    w = await rt.wallets.create(owner="ada")
    other = await rt.wallets.create(owner="bob")
    await rt.wallets.topup(w.id, 5_000_000, source="sys_funding")
    await rt.wallets.topup(other.id, 7_000_000, source="sys_funding")
    await earn(rt, w.account_id, w.id, 1_000_000, "api.shop.example", "/price", 50_000)
    _, tok = await rt.wallets.grant(w.id)
    d = await rt.authorizer.authorize(
        tok, amount=300_000, payee="cloud.example", category="hosting", idempotency_key="h"
    )
    await rt.authorizer.capture(d.id)
    tid = (await rt.wallets.verify(tok))[0].id
    # inference with the agent token, on the charge path (its usage carries category and token)
    meta = {"category": "ai_inference", "wallet_id": w.id, "token_id": tid}
    await rt.ledger.transfer(w.account_id, "sys_revenue", 70_000, usage=Usage("tokens", 100, None, meta))
    owner = (await http.get(f"/admin/wallets/{w.id}/pnl", headers=ADMIN)).json()
    mine = (await http.get("/v1/wallet/pnl", headers={"authorization": f"Bearer {tok}"})).json()
    assert owner == mine
    assert owner["revenue"] == {"total": 1_000_000, "by_route": {"api.shop.example/price": 1_000_000}}
    assert owner["costs"]["by_category"] == {"fees": 50_000, "hosting": 300_000, "inference": 70_000}
    assert owner["costs"]["by_token"] == {tid: 370_000}
    assert owner["net"] == 580_000 and owner["topups"] == 5_000_000
    assert owner["closing_balance"] == 5_580_000
    # another wallet's figures never show
    assert (await http.get(f"/admin/wallets/{other.id}/pnl", headers=ADMIN)).json()["revenue"]["total"] == 0
    err(
        await http.get(f"/admin/wallets/{w.id}/pnl?from=yesterday", headers=ADMIN),
        400,
        "invalid_from",
        "from",
    )
    err(
        await http.get(f"/admin/wallets/{w.id}/pnl?from=2026-02-01&to=2026-01-01", headers=ADMIN),
        400,
        "invalid_period",
    )
    err(await http.get("/v1/wallet/pnl"), 401, "missing_agent_token")
    await rt.authorizer.revoke(tid)
    err(await http.get("/v1/wallet/pnl", headers={"authorization": f"Bearer {tok}"}), 403, "token_revoked")


FULLWIDTH_2026 = "\uff12\uff10\uff12\uff16"


@pytest.mark.parametrize(
    "bad", ["12345678901234567890123", "-5", FULLWIDTH_2026, "9999-12-31T23:59:59-23:59", "x"]
)
def test_bad_bounds_are_400(bad: str) -> None:
    from tollway.core.errors import TollwayError

    with pytest.raises(TollwayError) as e:
        period(1_768_478_400_000_000, bad, None)
    assert e.value.code == "invalid_from" and e.value.status == 400
