"""The console (tollway.console): sign-in and sessions, who sees what, CSRF
and Origin on every action, the actions themselves (approve, deny, unfreeze,
reply), no secret rendered, the overview's figures from the rollups, and the
local /docs and /redoc assets."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import func, select

from conftest import ADMIN, ADMIN_TOKEN, err
from console_support import AGENT_SESSIONS, ORIGIN, Scenario, app_of, csrf_of, sign_in
from tollway.console import rollups
from tollway.core.schema import console_revenue_hourly as VH
from tollway.core.schema import ledger_transfers as T
from tollway.core.schema import request_log as L
from tollway.core.schema import usage_events as U
from tollway.runtime import Runtime

pytest_plugins = ["agent_support", "console_seeded"]  # the seeded fixture

OPERATOR_PAGES = [
    "/console/overview",
    "/console/overview.json",
    "/console/customers",
    "/console/gateway",
    "/console/x402",
    "/console/wallets",
    "/console/agents",
    "/console/deployments",
    "/console/ledger",
]


_app = app_of


async def _refresh(http: httpx.AsyncClient) -> None:
    await _app(http).state.console.refresh()


# ------------------------------------------------------------ who sees what


async def test_anonymous_is_sent_to_sign_in(http: httpx.AsyncClient, seeded: Scenario) -> None:
    pages = [
        *OPERATOR_PAGES,
        "/console",
        "/console/me",
        "/console/requests",
        f"/console/customers/{seeded.a['id']}",
    ]
    for path in pages:
        r = await http.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=/console"), path
    # An action without a session: 401, nothing done.
    r = await http.post(
        f"/console/wallets/approvals/{seeded.authorization}/approve", headers={"origin": ORIGIN}
    )
    err(r, 401, "signed_out")
    assert [d.id for d in await _app(http).state.runtime.authorizer.pending()] == [seeded.authorization]


async def test_operator_sees_every_page_and_no_secret(http: httpx.AsyncClient, seeded: Scenario) -> None:
    await sign_in(http, ADMIN_TOKEN)
    extra = [
        f"/console/customers/{seeded.a['id']}",
        f"/console/customers/{seeded.b['id']}",
        "/console/requests",
        f"/console/requests/{seeded.request_b}",
        f"/console/customers/{seeded.a['id']}/usage.json",
        "/console/ledger?prefix=sys_",
        f"/console/ledger?account_id={seeded.a['account_id']}",
    ]
    bodies = {}
    for path in [*OPERATOR_PAGES, *extra]:
        r = await http.get(path)
        assert r.status_code == 200, (path, r.text[:300])
        assert r.headers["cache-control"] == "no-store"
        bodies[path] = r.text
    agents = bodies["/console/agents"]
    sess = await http.get(f"/console/agents/support/session?id={_stored(seeded)}")
    assert sess.status_code == 200 and "I want to talk to a human please" in sess.text
    bodies["session"] = sess.text
    for path, html in bodies.items():
        for secret in seeded.secrets:
            assert secret not in html, f"a secret is rendered on {path}"
    assert "Ada Corp" in bodies["/console/customers"] and "Bob Labs" in bodies["/console/customers"]
    assert seeded.authorization in bodies["/console/wallets"] and "Approve" in bodies["/console/wallets"]
    assert seeded.escalation in agents and "human_requested" in agents
    assert "/paid/report" in bodies["/console/x402"] and "$0.250000" in bodies["/console/x402"]
    assert "balanced" in bodies["/console/ledger"]
    assert "m-alpha" in bodies["/console/gateway"] and "m-beta" in bodies["/console/gateway"]
    assert seeded.eval_run in bodies["/console/overview"] and seeded.eval_compare in agents
    assert seeded.shop_wallet in bodies["/console/deployments"]
    assert seeded.budget_request in bodies["/console/wallets"]
    # Key prefixes only.
    prefix = seeded.key_a.split("_")[0]
    assert prefix and seeded.key_a not in bodies[f"/console/customers/{seeded.a['id']}"]


def _stored(s: Scenario) -> str:
    from tollway.agents.store import scoped

    return scoped(s.a["id"], "s1")


async def test_customer_sees_only_their_own(http: httpx.AsyncClient, seeded: Scenario) -> None:
    await sign_in(http, seeded.key_a)
    me = await http.get("/console/me")
    assert me.status_code == 200 and "Ada Corp" in me.text and "Bob Labs" not in me.text
    for secret in seeded.secrets:
        assert secret not in me.text
    # Every operator page, and Bob's objects by id: not found.
    b = seeded.b["id"]
    for path in [
        *OPERATOR_PAGES,
        f"/console/customers/{b}",
        f"/console/customers/{b}/usage.json",
        f"/console/customers/{seeded.a['id']}",  # the operator's view, even of their own
        f"/console/requests?customer_id={b}",
        f"/console/requests/{seeded.request_b}",
        f"/console/agents/support/session?id={_stored(seeded)}",
    ]:
        err(await http.get(path), 404, "page_not_found")
    # The request log: their rows only, whatever the filter says.
    log = await http.get("/console/requests")
    assert log.status_code == 200 and "m-alpha" in log.text and "m-beta" not in log.text
    usage = (await http.get("/console/me/usage.json?range=24h")).json()
    models = {m["model"]: m["requests"] for m in usage["by_model"]}
    assert models["m-alpha"] == 3 and "m-beta" not in models and usage["by_customer"] == []
    assert usage["totals"]["requests"] == sum(models.values())
    # Operator actions: not found for a customer, even with their own CSRF token.
    csrf = csrf_of(me.text)
    r = await http.post(
        f"/console/wallets/approvals/{seeded.authorization}/approve",
        data={"csrf": csrf},
        headers={"origin": ORIGIN},
    )
    err(r, 404, "page_not_found")
    assert [d.id for d in await _app(http).state.runtime.authorizer.pending()] == [seeded.authorization]


async def test_a_revoked_key_ends_the_customer_session(http: httpx.AsyncClient, seeded: Scenario) -> None:
    await sign_in(http, seeded.key_b)
    assert (await http.get("/console/me")).status_code == 200
    keys = (await http.get(f"/admin/keys?customer_id={seeded.b['id']}", headers=ADMIN)).json()["data"]
    assert (await http.post(f"/admin/keys/{keys[0]['id']}/revoke", headers=ADMIN)).status_code == 200
    r = await http.get("/console/me")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    # And it cannot sign in again.
    r = await http.post("/console/login", data={"token": seeded.key_b}, headers={"origin": ORIGIN})
    assert r.status_code == 401 and "console_session" not in r.headers.get("set-cookie", "")


# ------------------------------------------------------------ sign-in, cookie


async def test_sign_in_cookie_and_sign_out(http: httpx.AsyncClient, seeded: Scenario) -> None:
    bad = await http.post("/console/login", data={"token": "sk-nope"}, headers={"origin": ORIGIN})
    assert (
        bad.status_code == 401 and "neither the admin token" in bad.text and "set-cookie" not in bad.headers
    )
    r = await http.post(
        "/console/login", data={"token": ADMIN_TOKEN, "next": "//evil.example/x"}, headers={"origin": ORIGIN}
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/overview"  # no open redirect
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/console" in cookie
    assert "secure" not in cookie  # served over http here; [console] cookie_secure or https sets it
    sid = r.cookies["tollway_console"]
    assert ADMIN_TOKEN not in sid
    page = await http.get("/console/overview")
    csrf = csrf_of(page.text)
    err(await http.post("/console/logout", headers={"origin": ORIGIN}), 403, "csrf_failed")
    out = await http.post("/console/logout", data={"csrf": csrf}, headers={"origin": ORIGIN})
    assert out.status_code == 303 and out.headers["location"] == "/console/login"
    # The old cookie is dead server-side, not only deleted in the browser.
    http.cookies.set("tollway_console", sid, domain="tollway.test", path="/console")
    assert (await http.get("/console/overview")).status_code == 303


async def test_sign_in_refuses_another_sites_form(http: httpx.AsyncClient, seeded: Scenario) -> None:
    r = await http.post(
        "/console/login", data={"token": ADMIN_TOKEN}, headers={"origin": "http://evil.example"}
    )
    err(r, 403, "cross_origin")
    r = await http.post("/console/login", data={"token": ADMIN_TOKEN})
    err(r, 403, "origin_missing")
    r = await http.post(
        "/console/login", data={"token": ADMIN_TOKEN}, headers={"referer": ORIGIN + "/console/login"}
    )
    assert r.status_code == 303


async def test_secure_cookie_by_config(art: Runtime, seeded: Scenario) -> None:
    from tollway.api.app import create_app

    art.settings.console.cookie_secure = True
    app = create_app(rt=art)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as c:
        r = await c.post("/console/login", data={"token": ADMIN_TOKEN}, headers={"origin": ORIGIN})
    assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()


# ------------------------------------------------------------------- actions


async def test_csrf_and_origin_guard_every_action(http: httpx.AsyncClient, seeded: Scenario) -> None:
    csrf = await sign_in(http, ADMIN_TOKEN)
    url = f"/console/wallets/approvals/{seeded.authorization}/approve"
    err(await http.post(url, headers={"origin": ORIGIN}), 403, "csrf_failed")
    err(await http.post(url, data={"csrf": "x" + csrf}, headers={"origin": ORIGIN}), 403, "csrf_failed")
    err(
        await http.post(url, data={"csrf": csrf}, headers={"origin": "http://evil.example"}),
        403,
        "cross_origin",
    )
    err(await http.post(url, data={"csrf": csrf}), 403, "origin_missing")
    err(await http.post(url, content=b"csrf=\xff\xfe", headers={"origin": ORIGIN}), 400, "invalid_form")
    # Another session's token is not this one's.
    other = httpx.AsyncClient(transport=http._transport, base_url=ORIGIN)
    async with other:
        other_csrf = await sign_in(other, ADMIN_TOKEN)
    assert other_csrf != csrf
    err(await http.post(url, data={"csrf": other_csrf}, headers={"origin": ORIGIN}), 403, "csrf_failed")
    rt = _app(http).state.runtime
    assert [d.id for d in await rt.authorizer.pending()] == [seeded.authorization]  # nothing changed
    for action in (
        f"/console/wallets/approvals/{seeded.authorization}/deny",
        "/console/wallets/tokens/tok_x/unfreeze",
        f"/console/escalations/{seeded.escalation}/reply",
        "/console/logout",
    ):
        err(await http.post(action, data={"csrf": "nope"}, headers={"origin": ORIGIN}), 403, "csrf_failed")
    assert [d.id for d in await rt.authorizer.pending()] == [seeded.authorization]


async def test_approve_moves_the_money_and_is_audited(http: httpx.AsyncClient, seeded: Scenario) -> None:
    rt = _app(http).state.runtime
    w = await rt.wallets.get(seeded.wallet["id"])
    before = await rt.wallets.balance(w)
    csrf = await sign_in(http, ADMIN_TOKEN)
    r = await http.post(
        f"/console/wallets/approvals/{seeded.authorization}/approve",
        data={"csrf": csrf},
        headers={"origin": ORIGIN},
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/wallets"
    after = await rt.wallets.balance(w)
    assert after[1] == before[1] - 5_000_000  # $5 held for the payment
    assert await rt.authorizer.pending() == []
    page = (await http.get("/console/wallets")).text
    assert "Nothing waits for a human" in page and "console" in page  # the audit trail names the actor
    # Twice: a clear 409, nothing moves.
    r = await http.post(
        f"/console/wallets/approvals/{seeded.authorization}/approve",
        data={"csrf": csrf},
        headers={"origin": ORIGIN},
    )
    err(r, 409, "authorization_not_pending")
    assert await rt.wallets.balance(w) == after
    err(
        await http.post(
            "/console/wallets/approvals/x/maybe", data={"csrf": csrf}, headers={"origin": ORIGIN}
        ),
        404,
        "page_not_found",
    )


async def test_deny_and_unfreeze(http: httpx.AsyncClient, seeded: Scenario) -> None:
    rt = _app(http).state.runtime
    csrf = await sign_in(http, ADMIN_TOKEN)
    r = await http.post(
        f"/console/wallets/approvals/{seeded.authorization}/deny",
        data={"csrf": csrf},
        headers={"origin": ORIGIN},
    )
    assert r.status_code == 303 and await rt.authorizer.pending() == []
    token = (await rt.wallets.tokens(seeded.wallet["id"]))[0]
    await rt.wallets.freeze(token.id, "runaway loop")
    page = (await http.get("/console/wallets")).text
    assert "runaway loop" in page and "Unfreeze" in page
    r = await http.post(
        f"/console/wallets/tokens/{token.id}/unfreeze", data={"csrf": csrf}, headers={"origin": ORIGIN}
    )
    assert r.status_code == 303
    assert (await rt.wallets.token(token.id)).frozen_at_us is None
    assert "No frozen tokens" in (await http.get("/console/wallets")).text


async def test_reply_to_an_escalation_continues_the_session(
    http: httpx.AsyncClient, seeded: Scenario
) -> None:
    csrf = await sign_in(http, ADMIN_TOKEN)
    r = await http.post(
        f"/console/escalations/{seeded.escalation}/reply",
        data={"csrf": csrf, "content": "Hi, Sam here <b>from support</b>.", "by": "sam"},
        headers={"origin": ORIGIN},
    )
    assert r.status_code == 303, r.text
    page = await http.get(r.headers["location"])
    assert "Hi, Sam here &lt;b&gt;from support&lt;/b&gt;." in page.text  # escaped, never markup
    assert 'id="session-status">active<' in page.text
    err(
        await http.post(
            f"/console/escalations/{seeded.escalation}/reply",
            data={"csrf": csrf, "content": "again"},
            headers={"origin": ORIGIN},
        ),
        409,
        "escalation_answered",
    )
    # The customer's next message goes to the model again.
    auth = {"authorization": f"Bearer {seeded.key_a}"}
    out = (await http.post(f"{AGENT_SESSIONS}/s1/messages", json={"content": "thanks"}, headers=auth)).json()
    assert out["status"] == "active" and out["reply"]["content"] == "echo: thanks"


async def test_bad_input_is_a_clear_4xx(http: httpx.AsyncClient, seeded: Scenario) -> None:
    await sign_in(http, ADMIN_TOKEN)
    err(await http.get("/console/overview?range=1y"), 400, "invalid_parameter", "range")
    err(await http.get("/console/requests?status=abc"), 400, "invalid_parameter", "status")
    err(await http.get("/console/requests/req_nope"), 404, "page_not_found")
    err(await http.get("/console/customers/cus_nope"), 404, "page_not_found")
    err(await http.get("/console/ledger?transfer_id=' OR 1=1"), 400, "invalid_parameter", "transfer_id")
    r = await http.get("/console/ledger?prefix=%25")  # a LIKE wildcard is taken literally
    assert r.status_code == 200 and "No accounts match" in r.text
    err(await http.get("/console/agents/support/session?id=nope"), 404, "session_not_found")


# ------------------------------------------------------------------ overview


async def test_overview_figures_match_the_sources(http: httpx.AsyncClient, seeded: Scenario) -> None:
    rt = _app(http).state.runtime
    await sign_in(http, ADMIN_TOKEN)
    data = (await http.get("/console/overview.json?range=24h")).json()
    async with rt.engine.connect() as conn:  # the same figures, by scanning the sources
        n, tok, cost = (
            await conn.execute(
                select(func.count(), func.sum(L.c.input_tokens + L.c.output_tokens), func.sum(L.c.cost))
            )
        ).one()
        metered = (await conn.execute(select(func.sum(U.c.amount)).where(U.c.meter == "neurons"))).scalar()
        subs = (
            await conn.execute(select(func.sum(T.c.amount)).where(T.c.description.like("subscription:%")))
        ).scalar()
    t = data["totals"]
    assert (t["requests"], t["tokens"], t["cost"]) == (n, tok, cost)
    assert n >= 5 and (tok, cost) == (470, 2500)  # the seeded rows (and the agent's logged request)
    assert t["revenue_subscriptions"] == subs == 2_000_000
    assert t["revenue_metered"] == metered and metered >= 3000  # the seeded event and the agent's turn
    assert t["revenue_x402"] == 250_000
    assert t["revenue"] == subs + metered + 250_000
    assert t["errors"] == 1
    assert sum(data["series"]["requests"]) == n and len(data["hours"]) == 24
    models = {m["model"]: m for m in data["by_model"]}
    assert models["m-alpha"]["requests"] == 3 and models["m-beta"]["cost"] == 500
    custs = {c["customer_id"]: c for c in data["by_customer"]}
    assert custs[seeded.a["id"]]["cost"] == 2000 and custs[seeded.b["id"]]["requests"] == 2
    # The page renders the same totals.
    page = (await http.get("/console/overview?range=24h")).text
    assert 'data-total="revenue_subscriptions" data-money="1">$2.000000<' in page
    # Refreshing again changes nothing (the subscription charge is not added twice).
    await _refresh(http)
    again = (await http.get("/console/overview.json?range=24h")).json()
    assert again["totals"] == t
    gw = (await http.get("/console/gateway")).text
    assert "50.0%" in gw  # m-beta: one 429 of two


async def test_a_view_refreshes_stale_rollups_once(http: httpx.AsyncClient, seeded: Scenario) -> None:
    """No short timer: a signed-in view brings rollups older than refresh_seconds up
    to date, once for views arriving together; fresh ones are read as they are."""
    console = _app(http).state.console
    await sign_in(http, ADMIN_TOKEN)
    calls = 0
    real = rollups.refresh

    async def counted(engine: Any, now_us: int) -> None:
        nonlocal calls
        calls += 1
        await real(engine, now_us)

    before = (await http.get("/console/overview.json?range=24h")).json()["totals"]["requests"]
    rt = _app(http).state.runtime
    async with rt.engine.begin() as conn:  # a row the rollups have not seen
        row = (await conn.execute(select(L).limit(1))).mappings().one()
        await conn.execute(L.insert().values({**row, "id": "req_late_row"}))
    orig = rollups.refresh
    rollups.refresh = counted  # type: ignore[assignment]
    try:
        assert (await http.get("/console/overview.json?range=24h")).json()["totals"]["requests"] == before
        assert calls == 0  # refreshed by the fixture a moment ago: read as they are
        # Stale from now on, and not stale again while the views below run (a refresh
        # slower than the threshold would make a later view refresh a second time).
        console.cfg.refresh_seconds = 1.0
        await asyncio.sleep(1.1)
        got = await asyncio.gather(*(http.get("/console/overview.json?range=24h") for _ in range(4)))
        assert calls == 1 and {r.json()["totals"]["requests"] for r in got} == {before + 1}
    finally:
        rollups.refresh = orig  # type: ignore[assignment]


async def test_rollups_refreshed_concurrently_count_once(rt: Runtime) -> None:
    """On PostgreSQL two refreshes race on separate connections: each charge counts once."""
    await rt.migrate()
    c = await rt.customers.create("Cy")
    await rt.ledger.transfer("sys_funding", c.account_id, 10_000_000)
    for i in range(5):
        await rt.ledger.transfer(c.account_id, "sys_revenue", 100_000, description=f"subscription: month {i}")
    await rt.ledger.transfer(c.account_id, "sys_revenue", 7, description="not a subscription")
    await asyncio.gather(*(rollups.refresh(rt.engine, rt.clock.now_us()) for _ in range(4)))
    await rt.ledger.transfer(c.account_id, "sys_revenue", 100_000, description="subscription: month 5")
    await asyncio.gather(*(rollups.refresh(rt.engine, rt.clock.now_us()) for _ in range(3)))
    async with rt.engine.connect() as conn:
        events, amount = (
            await conn.execute(
                select(func.sum(VH.c.events), func.sum(VH.c.amount)).where(VH.c.source == "subscriptions")
            )
        ).one()
    assert (events, amount) == (6, 600_000)


# ---------------------------------------------------------------------- docs


async def test_docs_and_redoc_serve_their_assets_locally(client: httpx.AsyncClient) -> None:
    for path, assets in (
        ("/docs", ["/console/static/docs/swagger-ui-bundle.js", "/console/static/docs/swagger-ui.css"]),
        ("/redoc", ["/console/static/docs/redoc.standalone.js"]),
    ):
        r = await client.get(path)
        assert r.status_code == 200 and "cdn." not in r.text and "fonts.googleapis" not in r.text, path
        for asset in assets:
            assert asset in r.text
            got = await client.get(asset)
            assert got.status_code == 200 and len(got.content) > 10_000, asset
    for asset in (
        "/console/static/vendor/htmx-2.0.4.min.js",
        "/console/static/vendor/uPlot-1.6.32.iife.min.js",
    ):
        assert (await client.get(asset)).status_code == 200


async def test_rollups_catch_up_a_day_at_a_time_across_gaps_and_late_rows(rt: Runtime) -> None:
    """A first roll-up of a long log runs a day per transaction, over days with no
    rows; a row written late (a long request, logged when it ends) still counts."""
    from sqlalchemy import insert

    from console_support import log_row
    from tollway.core.schema import console_customers_daily as CD
    from tollway.core.schema import console_models_hourly as MH
    from tollway.core.schema import console_requests_hourly as RH
    from tollway.core.schema import console_state as ST
    from tollway.core.storage import writer

    await rt.migrate()
    now = rt.clock.now_us()
    day = 86_400_000_000
    at = [now - 9 * day, now - 9 * day + 1, now - 2 * day, now - 5_000_000]  # a 7-day gap
    async with writer(rt.engine).begin() as conn:
        await conn.execute(insert(L), [log_row("cus_1", None, "m", t) for t in at])
    seen: list[str] = []

    real_step = rollups._step

    async def step(engine: Any, now_us: int) -> bool:
        done = await real_step(engine, now_us)
        async with engine.connect() as conn:
            seen.append(
                (await conn.execute(select(ST.c.value).where(ST.c.name == rollups.ROLLED_MARK))).scalar()
            )
        return done

    rollups._step = step  # type: ignore[assignment]
    try:
        await rollups.refresh(rt.engine, now)
    finally:
        rollups._step = real_step  # type: ignore[assignment]
    assert len(seen) >= 9  # a day (less the hours redone) per transaction
    async with rt.engine.connect() as conn:
        for t in (RH, MH, CD):
            assert (await conn.execute(select(func.sum(t.c.requests)))).scalar() == 4, t.name
    # Written 90 minutes late, dated before the mark: the next refresh still counts it.
    async with writer(rt.engine).begin() as conn:
        await conn.execute(insert(L), [log_row("cus_1", None, "m", now - 90 * 60_000_000)])
    await rollups.refresh(rt.engine, now + 1_000_000)
    async with rt.engine.connect() as conn:
        for t in (RH, MH, CD):
            assert (await conn.execute(select(func.sum(t.c.requests)))).scalar() == 5, t.name


async def test_sign_in_attempts_are_rate_limited(http: httpx.AsyncClient, seeded: Scenario) -> None:
    _app(http).state.console.cfg.signin_per_minute = 3
    for _ in range(3):
        r = await http.post("/console/login", data={"token": "sk-guess"}, headers={"origin": ORIGIN})
        assert r.status_code == 401
    r = await http.post("/console/login", data={"token": ADMIN_TOKEN}, headers={"origin": ORIGIN})
    err(r, 429, "signin_rate_limited")
    assert int(r.headers["retry-after"]) >= 1 and "set-cookie" not in r.headers
