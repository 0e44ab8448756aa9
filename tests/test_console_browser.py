"""The console in a real browser: Playwright for Python driving Debian's
chromium (``executable_path``; nothing is downloaded) against a real server on
a seeded scenario. Signs in, sees each chart drawn with the seeded figures and
updating live, approves a pending wallet payment and sees the money move,
approves an agent's budget request, sees the eval grades and an agent
business's profit and loss, replies to an escalation and sees the session continue, and checks that a
customer sees only their own data. A screenshot of each page goes to
test-output/console/."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_helpers import agent_settings
from conftest import ADMIN_TOKEN
from console_support import AGENT_SESSIONS, Scenario, log_row, seed
from threaded import ThreadServer
from tollway.console.rollups import HOUR_US
from tollway.runtime import Runtime

pytest_plugins = ["agent_support"]

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / "test-output" / "console"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no {CHROMIUM}: apt-get install chromium"),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="no playwright: pip install playwright")


@pytest.fixture
def served(
    sqlite_template: Path, tmp_path: Path, agent_model: tuple[Any, str], tool_server: tuple[Any, str]
) -> Iterator[tuple[str, Scenario, Path]]:
    db = tmp_path / "tollway.db"
    shutil.copy(sqlite_template, db)
    settings = agent_settings(f"sqlite:///{db}", agent_model[1], tool_server[1], tmp_path)
    settings.console.refresh_seconds = 0.5
    settings.console.live_seconds = 0.5

    async def seeded() -> Scenario:  # through an in-process app, before the server starts
        from tollway.api.app import create_app

        rt = Runtime.build(settings)
        try:
            app = create_app(rt=rt)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://seed") as c:
                return await seed(c, rt)
        finally:
            await rt.close()

    scenario = asyncio.run(seeded())
    from tollway.api.app import create_app

    app = create_app(settings)
    with ThreadServer(app) as srv:
        yield srv.url, scenario, db


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _sign_in(page: Any, url: str, token: str) -> None:
    page.goto(url + "/console")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/**")


def test_console_in_a_browser(served: tuple[str, Scenario, Path]) -> None:
    url, scn, db = served
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            _operator(browser, url, scn, db)
            _customer(browser, url, scn)
        finally:
            browser.close()


def _operator(browser: Any, url: str, scn: Scenario, db: Path) -> None:
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    _sign_in(page, url, ADMIN_TOKEN)
    assert page.url.endswith("/console/overview")
    # The charts: drawn (a canvas each) with the seeded figures.
    page.wait_for_selector('figure.chart[data-drawn="1"] canvas')
    assert page.locator("figure.chart canvas").count() == 3
    expect = playwright_api.expect  # waits without eval (the console's CSP refuses it)
    expect(page.locator("[data-total=revenue_subscriptions]")).to_have_text("$2.000000")
    assert page.inner_text("[data-total=revenue_x402]") == "$0.250000"
    assert page.inner_text("[data-total=cost]") == "$0.002500"
    assert "m-alpha" in page.inner_text("#by-model") and "Ada Corp" not in page.inner_text("#by-model")
    _shot(page, "overview")
    # Live: a new request-log row shows up without reloading the page.
    before = int(page.inner_text("[data-total=requests]").replace(",", ""))
    with sqlite3.connect(db) as conn:
        now = conn.execute("SELECT MAX(created_at_us) FROM request_log").fetchone()[0]
        at = min(now + 1, (now // HOUR_US + 1) * HOUR_US - 1)  # the same hour
        row = log_row(scn.a["id"], None, "m-alpha", at, input_tokens=1, output_tokens=1, cost=100)
        cols = ", ".join(row)
        conn.execute(
            f"INSERT INTO request_log ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        )
    expect(page.locator("[data-total=requests]")).to_have_text(f"{before + 1:,}", timeout=20_000)
    expect(page.locator("#by-model tr:has-text('m-alpha') td").nth(1)).to_have_text("4")  # the tables too
    # Every page renders; a screenshot of each.
    for name in ("customers", "requests", "gateway", "x402", "wallets", "agents", "deployments", "ledger"):
        page.click(f"header nav a[href='/console/{name}']")
        page.wait_for_url(f"**/console/{name}")
        page.wait_for_selector("main h1")
        _shot(page, name)
    page.goto(f"{url}/console/customers/{scn.a['id']}")
    page.wait_for_selector('figure.chart[data-drawn="1"] canvas')
    _shot(page, "customer")
    page.goto(f"{url}/console/requests/{scn.request_b}")
    assert "m-beta" in page.inner_text("#request-detail")
    _shot(page, "request")
    page.goto(f"{url}/console/ledger")
    assert page.inner_text("#zero-sum") == "balanced"
    # Approve the pending wallet payment: $5 is held from the wallet.
    page.goto(f"{url}/console/wallets")
    row = page.locator(f"tr[data-wallet='{scn.wallet['id']}']")
    assert row.locator(".available").inner_text() == "$10.000000"
    page.locator(f"tr[data-authorization='{scn.authorization}'] button.ok").click()
    page.wait_for_selector("text=Nothing waits for a human")
    assert page.locator(f"tr[data-wallet='{scn.wallet['id']}'] .available").inner_text() == "$5.000000"
    assert "approved" in page.inner_text("#audit")
    _shot(page, "wallets-approved")
    # An agent's budget request: approved with the caps it asked, it leaves the pending list.
    request_row = page.locator(f"tr[data-budget-request='{scn.budget_request}']")
    assert "buy market data" in request_row.inner_text()
    request_row.locator("button.ok").click()
    page.wait_for_selector("text=No budget requests wait for a decision")
    assert "budget_approved" in page.inner_text("#audit")
    _shot(page, "wallets-budget-approved")
    # The eval grades the loop stored, and the agent business's P&L.
    page.goto(f"{url}/console/agents")
    run_row = page.locator(f"#eval-runs tr[data-eval-run='{scn.eval_run}']")
    assert run_row.locator(".helpfulness").inner_text() == "3.00"
    assert run_row.locator(".checks").inner_text() == "1 / 2"
    assert "+2.00" in page.inner_text(f"#eval-comparisons tr[data-eval-run='{scn.eval_compare}']")
    _shot(page, "agents-evals")
    run_row.locator("a").click()
    page.wait_for_selector("#eval-grades-of-run")
    _shot(page, "eval-run")
    page.goto(f"{url}/console/deployments")
    assert page.inner_text(f"tr[data-pnl-wallet='{scn.shop_wallet}'] .net") == "$1.250000"
    page.locator(f"tr[data-pnl-wallet='{scn.shop_wallet}'] a").click()
    page.wait_for_selector("#period")
    assert page.inner_text("[data-pnl=revenue]") == "$1.500000"
    _shot(page, "wallet-pnl")
    # Reply to the escalation: the session is active again, the reply in it.
    page.goto(f"{url}/console/agents")
    page.locator(f"tr[data-escalation='{scn.escalation}'] a").click()
    page.wait_for_selector("textarea[name=content]")
    _shot(page, "session-escalated")
    page.fill("textarea[name=content]", "Hi, Sam from support here.")
    page.fill("input[name=by]", "sam")
    page.click(".escalation button[type=submit]")
    page.wait_for_selector("#session-status:text('active')")
    assert "Hi, Sam from support here." in page.inner_text("#messages")
    # The customer writes again: the model answers (the session continued).
    r = httpx.post(
        f"{url}{AGENT_SESSIONS}/s1/messages",
        json={"content": "thanks"},
        headers={"authorization": f"Bearer {scn.key_a}"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["status"] == "active", r.text
    page.reload()
    assert "echo: thanks" in page.inner_text("#messages")
    _shot(page, "session-continued")
    for secret in scn.secrets:
        assert secret not in page.content()
    assert not [e for e in errors if "Content Security Policy" in e], errors
    ctx.close()


def _customer(browser: Any, url: str, scn: Scenario) -> None:
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    _sign_in(page, url, scn.key_a)
    assert page.url.endswith("/console/me")
    page.wait_for_selector('figure.chart[data-drawn="1"] canvas')
    text = page.inner_text("main")
    assert "Ada Corp" in text and "Bob Labs" not in text and "m-beta" not in text
    assert "ada-prod" in page.inner_text("#keys") and scn.key_a not in page.content()
    _shot(page, "customer-me")
    cookie = next(c for c in ctx.cookies() if c["name"] == "tollway_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert page.evaluate("document.cookie") == ""  # HttpOnly: not readable by script
    b = scn.b["id"]
    for path in (f"/console/customers/{b}", "/console/overview", f"/console/requests/{scn.request_b}"):
        resp = page.goto(url + path)
        assert resp is not None and resp.status == 404, path
    page.goto(url + "/console/requests")
    assert "m-beta" not in page.inner_text("main")
    ctx.close()
