"""The console's eval grades (Overview, Agents, a run's page), wallets' profit
and loss (Deployments, a wallet's P&L page) and budget requests (Wallets:
approve keeping the caps asked, deny): operator-only, the figures equal to
what ``rt.evals`` and ``tollway.wallets.pnl`` return, CSRF and Origin on the
actions, and the delegated token's secret never rendered."""

from __future__ import annotations

import asyncio
import html
import re

import httpx

from conftest import ADMIN, ADMIN_TOKEN, err
from console_support import ORIGIN, Scenario, app_of, sign_in
from tollway.runtime import Runtime
from tollway.wallets.pnl import month_of, pnl

pytest_plugins = ["agent_support", "console_seeded"]  # the seeded fixture


def _rt(http: httpx.AsyncClient) -> Runtime:
    rt: Runtime = app_of(http).state.runtime
    return rt


def _row(page: str, attr: str, value: str) -> str:
    """The table row ``<tr attr="value">``'s HTML."""
    m = re.search(rf'<tr {attr}="{re.escape(value)}">(.*?)</tr>', page, re.S)
    assert m, f"no row {attr}={value}"
    return m.group(1)


def _cell(row: str, cls: str) -> str:
    m = re.search(rf'<td class="{cls}">(.*?)</td>', row, re.S)
    assert m, f"no cell {cls}"
    return html.unescape(re.sub(r"<[^>]+>", "", m.group(1))).strip()


def _usd(micro: int) -> str:
    from tollway.core.money import format_usd

    return format_usd(micro)


# ------------------------------------------------------------ who sees what


async def test_anonymous_and_customers_never_see_nor_act(http: httpx.AsyncClient, seeded: Scenario) -> None:
    pages = [f"/console/evals/{seeded.eval_run}", f"/console/wallets/{seeded.shop_wallet}/pnl"]
    actions = [f"/console/wallets/budget-requests/{seeded.budget_request}/{d}" for d in ("approve", "deny")]
    for path in pages:
        r = await http.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next="), path
    for path in actions:
        err(await http.post(path, headers={"origin": ORIGIN}), 401, "signed_out")
    # Ada's own wallet's request: still the operator's to decide.
    csrf = await sign_in(http, seeded.key_a)
    for path in [
        *pages,
        f"/console/wallets/{seeded.wallet['id']}/pnl",
        f"/console/evals/{seeded.eval_compare}",
    ]:
        err(await http.get(path), 404, "page_not_found")
    for path in actions:
        err(await http.post(path, data={"csrf": csrf}, headers={"origin": ORIGIN}), 404, "page_not_found")
    me = (await http.get("/console/me")).text
    assert seeded.eval_run not in me and "budget" not in me.lower()
    r = await _rt(http).budget_requests.get(seeded.budget_request)
    assert r["status"] == "pending"


# --------------------------------------------------------------------- evals


async def test_eval_figures_are_the_eval_loops(http: httpx.AsyncClient, seeded: Scenario) -> None:
    rt = _rt(http)
    await sign_in(http, ADMIN_TOKEN)
    run = await rt.evals.show(seeded.eval_run)
    s = run["summary"]
    agents = (await http.get("/console/agents")).text
    overview = (await http.get("/console/overview")).text
    for page in (agents, overview):
        row = _row(page, "data-eval-run", seeded.eval_run)
        for k in ("helpfulness", "safety", "groundedness"):
            assert _cell(row, k) == f"{s['scores'][k]:.2f}", k
        assert _cell(row, "graded").startswith(str(s["graded"]))
        passed = sum(g["checks"]["passed"] for g in run["grades"])
        assert _cell(row, "checks") == f"{passed} / {len(run['grades'])}" == "1 / 2"
        assert _cell(row, "cost") == _usd(run["cost"])
        assert "<td>1</td><td>1</td><td>1</td>" in row  # guardrail hits, tool errors, refusals
    assert seeded.eval_compare not in overview  # the tile: the latest graded run per agent
    # A comparison: A / B and the deltas B - A, as the loop stored them.
    cmp_ = await rt.evals.show(seeded.eval_compare)
    row = _row(agents, "data-eval-run", seeded.eval_compare)
    d, a, b = cmp_["summary"]["delta"], cmp_["summary"]["a"]["scores"], cmp_["summary"]["b"]["scores"]
    assert (
        _cell(row, "helpfulness")
        == f"{a['helpfulness']:.2f} / {b['helpfulness']:.2f} ({d['helpfulness']:+.2f})"
    )
    assert _cell(row, "helpfulness") == "3.00 / 5.00 (+2.00)" and "v1 → v2" in row
    # A run's grades, each with its checks.
    detail = await http.get(f"/console/evals/{seeded.eval_run}")
    assert detail.status_code == 200
    for g in run["grades"]:
        grow = _row(detail.text, "data-grade", g["id"])
        assert g["session_id"] in grow and f"{g['helpfulness']:.2f}" in grow
    assert "pii" in detail.text and "lookup (error)" in detail.text
    err(await http.get("/console/evals/evr_nope"), 404, "eval_run_not_found")


async def test_an_empty_or_failed_run_renders(http: httpx.AsyncClient, seeded: Scenario) -> None:
    rt = _rt(http)
    await sign_in(http, ADMIN_TOKEN)
    run_id = await rt.evals._start("run", "support", None, None)
    await rt.evals._end(run_id, "failed", {"error": "TollwayError: the grader is down"})
    page = (await http.get("/console/agents")).text
    row = _row(page, "data-eval-run", run_id)
    assert "the grader is down" in row and _cell(row, "helpfulness") == "—"
    assert (await http.get(f"/console/evals/{run_id}")).status_code == 200
    # The overview's tile keeps the latest run that finished.
    assert seeded.eval_run in (await http.get("/console/overview")).text


# ----------------------------------------------------------------------- P&L


async def test_pnl_figures_are_the_ledgers(http: httpx.AsyncClient, seeded: Scenario) -> None:
    rt = _rt(http)
    await sign_in(http, ADMIN_TOKEN)
    w = await rt.wallets.get(seeded.shop_wallet)
    now = rt.clock.now_us()
    start, end = month_of(now)
    want = await pnl(rt.engine, w.id, w.account_id, rt.settings.provision.apps_domain, now, start, end)
    assert (want["revenue"]["total"], want["costs"]["total"], want["net"]) == (1_500_000, 250_000, 1_250_000)
    page = (await http.get("/console/deployments")).text
    row = _row(page, "data-pnl-wallet", w.id)
    assert _cell(row, "revenue") == _usd(want["revenue"]["total"])
    assert _cell(row, "costs") == _usd(want["costs"]["total"])
    assert _cell(row, "net") == _usd(want["net"])
    assert "hosting</span> $0.200000" in row and "fees</span> $0.050000" in row
    [dep] = want["deployments"]
    assert dep["id"] == seeded.shop_deployment and (dep["revenue"], dep["costs"]) == (1_500_000, 200_000)
    assert f"{_usd(dep['revenue'])} \N{MINUS SIGN} {_usd(dep['costs'])} = <b>{_usd(dep['net'])}</b>" in row
    # The detail, over the period the link states: the admin API's figures.
    link = html.unescape(re.search(r'href="(/console/wallets/[^"]+/pnl\?[^"]+)"', row).group(1))  # type: ignore[union-attr]
    detail = await http.get(link)
    assert detail.status_code == 200
    api = (await http.get(f"/admin/wallets/{w.id}/pnl", params=dict(detail.url.params), headers=ADMIN)).json()
    assert api["from_us"] == start and api["to_us"] == end
    for key, value in (
        ("revenue", api["revenue"]["total"]),
        ("costs", api["costs"]["total"]),
        ("net", api["net"]),
    ):
        assert f'data-pnl="{key}">{_usd(value)}<' in detail.text
    assert "api.shop.example/price" in detail.text
    assert _cell(_row(detail.text, "data-deployment", dep["id"]), "net") == _usd(dep["net"])
    # Another period: last month, nothing in it.
    before = await http.get(f"/console/wallets/{w.id}/pnl", params={"from": "2000-01-01", "to": "2000-02-01"})
    assert 'data-pnl="revenue">$0.000000<' in before.text and "Nothing earned" in before.text


async def test_pnl_bad_input_is_a_clear_4xx(http: httpx.AsyncClient, seeded: Scenario) -> None:
    await sign_in(http, ADMIN_TOKEN)
    base = f"/console/wallets/{seeded.shop_wallet}/pnl"
    err(await http.get(base, params={"from": "yesterday"}), 400, "invalid_from", "from")
    err(await http.get(base, params={"from": "2026-02-01", "to": "2026-01-01"}), 400, "invalid_period", "to")
    err(await http.get(base, params={"to": "9" * 41}), 400, "invalid_parameter", "to")
    err(await http.get("/console/wallets/wal_nope/pnl"), 404, "wallet_not_found")


# ----------------------------------------------------------- budget requests


async def test_budget_actions_need_csrf_and_origin(http: httpx.AsyncClient, seeded: Scenario) -> None:
    csrf = await sign_in(http, ADMIN_TOKEN)
    for d in ("approve", "deny"):
        url = f"/console/wallets/budget-requests/{seeded.budget_request}/{d}"
        err(await http.post(url, headers={"origin": ORIGIN}), 403, "csrf_failed")
        err(await http.post(url, data={"csrf": csrf + "x"}, headers={"origin": ORIGIN}), 403, "csrf_failed")
        err(
            await http.post(url, data={"csrf": csrf}, headers={"origin": "http://evil.example"}),
            403,
            "cross_origin",
        )
        err(await http.post(url, data={"csrf": csrf}), 403, "origin_missing")
    assert (await _rt(http).budget_requests.get(seeded.budget_request))["status"] == "pending"


async def test_approve_keeps_the_caps_and_never_renders_the_token(
    http: httpx.AsyncClient, seeded: Scenario
) -> None:
    rt = _rt(http)
    csrf = await sign_in(http, ADMIN_TOKEN)
    page = (await http.get("/console/wallets")).text
    row = _row(page, "data-budget-request", seeded.budget_request)
    assert "buy market data" in row and "$20.000000 monthly" in row and "api_access" in row
    url = f"/console/wallets/budget-requests/{seeded.budget_request}/approve"
    r = await http.post(url, data={"csrf": csrf}, headers={"origin": ORIGIN})
    assert r.status_code == 303 and r.headers["location"] == "/console/wallets"
    got = await rt.budget_requests.get(seeded.budget_request)
    assert (
        got["status"] == "approved" and got["approved_caps"] == got["caps"] and got["decided_by"] == "console"
    )
    after = (await http.get("/console/wallets")).text
    assert f'data-budget-request="{seeded.budget_request}"' not in after
    assert "No budget requests wait" in after and "budget_approved" in after
    # The token is the agent's: issued at its read, its secret there only, never on a page.
    boot = {"authorization": f"Bearer {seeded.bootstrap}"}
    polled = (await http.get(f"/v1/wallet/budget-requests/{seeded.budget_request}", headers=boot)).json()
    secret = polled["token"]
    assert secret.startswith("tw_agt_") and polled["status"] == "issued"
    for path in ("/console/wallets", "/console/deployments", f"/console/wallets/{seeded.wallet['id']}/pnl"):
        body = (await http.get(path)).text
        assert secret not in body and seeded.bootstrap not in body, path
    assert secret not in r.text
    # Twice: a clear 409, nothing more issued.
    err(
        await http.post(url, data={"csrf": csrf}, headers={"origin": ORIGIN}),
        409,
        "budget_request_not_pending",
    )
    err(
        await http.post(
            "/console/wallets/budget-requests/wbr_nope/approve",
            data={"csrf": csrf},
            headers={"origin": ORIGIN},
        ),
        404,
        "budget_request_not_found",
    )
    err(
        await http.post(
            f"/console/wallets/budget-requests/{seeded.budget_request}/maybe",
            data={"csrf": csrf},
            headers={"origin": ORIGIN},
        ),
        404,
        "page_not_found",
    )


async def test_deny_with_a_reason_or_the_consoles(http: httpx.AsyncClient, seeded: Scenario) -> None:
    rt = _rt(http)
    csrf = await sign_in(http, ADMIN_TOKEN)
    url = f"/console/wallets/budget-requests/{seeded.budget_request}/deny"
    err(
        await http.post(url, data={"csrf": csrf, "reason": "x" * 501}, headers={"origin": ORIGIN}),
        400,
        "invalid_reason",
    )
    r = await http.post(
        url, data={"csrf": csrf, "reason": "  too much <b>now</b> "}, headers={"origin": ORIGIN}
    )
    assert r.status_code == 303
    got = await rt.budget_requests.get(seeded.budget_request)
    assert (got["status"], got["reason"], got["decided_by"]) == ("denied", "too much <b>now</b>", "console")
    page = (await http.get("/console/wallets")).text
    assert "too much" in page and "<b>now</b>" not in page  # the audit trail, escaped
    # Without a reason: the console's.
    boot = {"authorization": f"Bearer {seeded.bootstrap}"}
    again = await http.post(
        "/v1/wallet/budget-requests", json={"amount": "$1", "purpose": "retry"}, headers=boot
    )
    r = await http.post(
        f"/console/wallets/budget-requests/{again.json()['id']}/deny",
        data={"csrf": csrf, "reason": " "},
        headers={"origin": ORIGIN},
    )
    assert r.status_code == 303
    assert (await rt.budget_requests.get(again.json()["id"]))["reason"] == "denied in the console"


async def test_racing_approve_and_deny_decide_once(http: httpx.AsyncClient, seeded: Scenario) -> None:
    rt = _rt(http)
    csrf = await sign_in(http, ADMIN_TOKEN)
    base = f"/console/wallets/budget-requests/{seeded.budget_request}"
    rs = await asyncio.gather(
        *(
            http.post(f"{base}/{d}", data={"csrf": csrf}, headers={"origin": ORIGIN})
            for d in ("approve", "deny") * 3
        )
    )
    assert sorted(r.status_code for r in rs) == [303, 409, 409, 409, 409, 409], [r.text for r in rs]
    got = await rt.budget_requests.get(seeded.budget_request)
    decided = [
        e
        for e in await rt.wallets.audit.query(limit=50)
        if e["event"] in ("budget_approved", "budget_denied")
    ]
    assert got["status"] in ("approved", "denied") and len(decided) == 1


async def test_approve_with_the_operators_edited_caps(http: httpx.AsyncClient, seeded: Scenario) -> None:
    """The amount and the most a payment may take, as the operator entered them; the
    rest as asked. A bad amount is a 400 that decides nothing."""
    rt = _rt(http)
    csrf = await sign_in(http, ADMIN_TOKEN)
    url = f"/console/wallets/budget-requests/{seeded.budget_request}/approve"
    bad = await http.post(url, data={"csrf": csrf, "amount": "-$3"}, headers={"origin": ORIGIN})
    assert bad.status_code == 400 and bad.json()["error"]["param"].startswith("caps")
    assert (await rt.budget_requests.get(seeded.budget_request))["status"] == "pending"
    edited = {"csrf": csrf, "amount": "$5", "max_per_payment": " $1 "}
    r = await http.post(url, data=edited, headers={"origin": ORIGIN})
    assert r.status_code == 303
    got = await rt.budget_requests.get(seeded.budget_request)
    assert got["status"] == "approved"
    approved, asked = got["approved_caps"], got["caps"]
    assert approved["amount"] == 5_000_000 and approved["max_per_payment"] == 1_000_000
    assert {k: v for k, v in approved.items() if k not in ("amount", "max_per_payment")} == {
        k: v for k, v in asked.items() if k not in ("amount", "max_per_payment")
    }
    audit = (await http.get("/console/wallets")).text
    assert "budget_approved" in audit
