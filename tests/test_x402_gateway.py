"""The monetization gateway: paid routes in front of an origin, x402 v2 and v1,
every bad payment refused with its reason before the origin is called, and
settlement only after the origin answered below 400."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from conftest import ADMIN, settings_for
from tollway.api.app import create_app
from tollway.runtime import Runtime
from tollway.settings import Settings
from x402_gateway_support import Origin, funded, header, required, revenue
from x402_helpers import PAY_TO, Payer

PRICE = 1000  # $0.001 in micro-USD units


@pytest.fixture
async def gw(db_url: str, origin: tuple[Origin, str]) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    _, url = origin
    rules = [
        {"name": "demo", "path": "/demo/weather", "origin": "demo", "price": "$0.001"},
        {"name": "api", "methods": ["GET", "POST"], "path": "/api/*", "origin": url, "price": "$0.001"},
        {
            "name": "members",
            "path": "/members/:id",
            "origin": url,
            "price": "1000",
            "unauthenticated_only": True,
        },
        {
            "name": "per-item",
            "path": "/bulk",
            "origin": url,
            "price": "$0.0005",
            "price_by": "query",
            "price_field": "n",
        },
    ]
    settings = settings_for(db_url, x402={"pay_to": PAY_TO, "rules": rules})
    rt = Runtime.build(settings)
    app = create_app(rt=rt)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tollway.test") as c:
        yield c, rt
    await rt.close()


async def test_unpaid_gets_402_for_both_versions_and_browsers_a_page(gw: Any) -> None:
    c, _ = gw
    r = await c.get("/demo/weather")
    assert r.status_code == 402
    req = required(r)
    assert req["x402Version"] == 2 and req["error"] == "Payment required"
    [accept] = req["accepts"]
    assert (accept["amount"], accept["payTo"], accept["network"]) == ("1000", PAY_TO, "eip155:31337")
    assert accept["extra"] == {"name": "USD Coin", "version": "2"}
    v1 = r.json()
    assert v1["x402Version"] == 1 and v1["accepts"][0]["maxAmountRequired"] == "1000"
    page = await c.get("/demo/weather", headers={"accept": "text/html"})
    assert page.status_code == 402 and "$0.001000" in page.text and "x402HttpxClient" in page.text
    assert "payment-required" in page.headers


async def test_v2_payment_is_served_settled_and_receipted(gw: Any) -> None:
    c, rt = gw
    p = await funded(rt)
    accept = required(await c.get("/demo/weather?city=Porto"))["accepts"][0]
    r = await c.get("/demo/weather?city=Porto", headers={"payment-signature": header(p.v2(accept))})
    assert r.status_code == 200 and r.json()["city"] == "Porto"
    receipt = json.loads(base64.b64decode(r.headers["payment-response"]))
    assert receipt["success"] is True and receipt["payer"] == p.address
    assert await revenue(rt) == PRICE and await rt.devnet.balance(p.address) == 10_000 - PRICE


async def test_v1_x_payment_is_served_and_receipted(gw: Any, origin: tuple[Origin, str]) -> None:
    c, rt = gw
    p = await funded(rt)
    accept = (await c.post("/api/thing", json={"a": 1})).json()["accepts"][0]
    r = await c.post("/api/thing", json={"a": 1}, headers={"x-payment": header(p.v1(accept))})
    assert r.status_code == 200 and r.json()["echo"] == "api/thing"
    assert json.loads(base64.b64decode(r.headers["x-payment-response"]))["success"] is True
    o, _ = origin
    [call] = o.calls
    assert call["body"] == b'{"a":1}' and "x-payment" not in call["headers"]


def _bad(p: Payer, broke: Payer, accept: dict[str, Any]) -> dict[str, tuple[dict[str, str], str]]:
    now = int(time.time())
    v2 = {"payment-signature": ""}

    def sig(payload: Any) -> dict[str, str]:
        return {"payment-signature": header(payload)}

    return {
        "garbage base64": ({**v2, "payment-signature": "%%%not-base64%%%"}, "invalid_payload"),
        "garbage JSON": ({"payment-signature": base64.b64encode(b"{nope").decode()}, "invalid_payload"),
        "wrong version": (sig({**p.v2(accept), "x402Version": 1}), "invalid_x402_version"),
        "unsupported scheme": (sig(p.v2({**accept, "scheme": "upto"})), "unsupported_scheme"),
        "unsupported network": (sig(p.v2({**accept, "network": "eip155:1"})), "invalid_network"),
        "wrong payTo": (
            sig(p.v2(accept, to="0x" + "33" * 20)),
            "invalid_exact_evm_payload_recipient_mismatch",
        ),
        "amount too low": (
            sig(p.v2(accept, value=PRICE - 1)),
            "invalid_exact_evm_payload_authorization_value",
        ),
        "expired": (
            sig(p.v2(accept, valid_before=now - 1)),
            "invalid_exact_evm_payload_authorization_valid_before",
        ),
        "not yet valid": (
            sig(p.v2(accept, valid_after=now + 600)),
            "invalid_exact_evm_payload_authorization_valid_after",
        ),
        "bad signature": (sig(p.v2(accept, key=broke.account.key)), "invalid_exact_evm_payload_signature"),
        "insufficient balance": (sig(broke.v2(accept)), "insufficient_funds"),
    }


@pytest.mark.parametrize("case", list(_bad(Payer(), Payer(), {"amount": "1", "payTo": PAY_TO})))
async def test_bad_payments_get_402_with_the_reason_and_reach_nothing(
    gw: Any, origin: tuple[Origin, str], case: str
) -> None:
    c, rt = gw
    p = await funded(rt)
    accept = required(await c.get("/api/x"))["accepts"][0]
    headers, reason = _bad(p, Payer(), accept)[case]
    r = await c.get("/api/x", headers=headers)
    assert r.status_code == 402
    assert required(r)["error"] == reason and r.json()["error"] == reason
    assert origin[0].calls == [] and await revenue(rt) == 0 and await rt.devnet.balance(p.address) == 10_000


async def test_a_reused_nonce_is_refused(gw: Any, origin: tuple[Origin, str]) -> None:
    c, rt = gw
    p = await funded(rt)
    accept = required(await c.get("/api/x"))["accepts"][0]
    h = {"payment-signature": header(p.v2(accept))}
    assert (await c.get("/api/x", headers=h)).status_code == 200
    r = await c.get("/api/x", headers=h)
    assert r.status_code == 402 and required(r)["error"] == "invalid_exact_evm_nonce_already_used"
    assert len(origin[0].calls) == 1 and await revenue(rt) == PRICE


async def test_origin_failure_settles_nothing(gw: Any) -> None:
    c, rt = gw
    p = await funded(rt)
    accept = required(await c.get("/api/fail"))["accepts"][0]
    r = await c.get("/api/fail", headers={"payment-signature": header(p.v2(accept))})
    assert r.status_code == 500 and "payment-response" not in r.headers
    assert await revenue(rt) == 0 and await rt.devnet.balance(p.address) == 10_000


async def test_one_payment_sent_concurrently_settles_once(gw: Any) -> None:
    c, rt = gw
    p = await funded(rt)
    accept = required(await c.get("/api/x"))["accepts"][0]
    h = {"payment-signature": header(p.v2(accept))}
    rs = await asyncio.gather(*(c.get("/api/x", headers=h) for _ in range(10)))
    assert sorted(r.status_code for r in rs) == [200] + [402] * 9
    assert await revenue(rt) == PRICE and await rt.devnet.balance(p.address) == 10_000 - PRICE


async def test_unmatched_routes_are_free_and_api_keys_pass_unauthenticated_only(gw: Any) -> None:
    c, _ = gw
    assert (await c.get("/healthz")).status_code == 200
    assert (await c.get("/members/7")).status_code == 402
    cust = (await c.post("/admin/customers", json={"name": "m"}, headers=ADMIN)).json()
    key = (await c.post("/admin/keys", json={"customer_id": cust["id"]}, headers=ADMIN)).json()["key"]
    r = await c.get("/members/7", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.json()["echo"] == "members/7"
    assert (await c.get("/members/7", headers={"authorization": "Bearer tw_bogus"})).status_code == 402


async def test_variable_price_by_query_field(gw: Any) -> None:
    c, _ = gw
    assert required(await c.get("/bulk?n=7"))["accepts"][0]["amount"] == "3500"
    assert required(await c.get("/bulk"))["accepts"][0]["amount"] == "500"


def test_bad_rules_are_config_errors(db_url: str) -> None:
    base = {"name": "r", "path": "/x", "origin": "demo", "price": "$0.001"}
    for bad in (
        {**base, "origin": "ftp://x"},
        {**base, "price": "one dollar"},
        {**base, "price": "$0.0000001"},  # not a whole number of units
        {**base, "price_by": "query"},
        {**base, "methods": ["FETCH"]},
    ):
        with pytest.raises(ValueError):
            settings_for(db_url, x402={"pay_to": PAY_TO, "rules": [bad]})
    with pytest.raises(ValueError, match="pay_to"):
        settings_for(db_url, x402={"rules": [base]})
    assert isinstance(settings_for(db_url, x402={"pay_to": PAY_TO, "rules": [base]}), Settings)


async def test_discovery_lists_the_paid_routes(gw: Any) -> None:
    c, _ = gw
    d = (await c.get("/x402/discovery/resources")).json()
    assert d["x402Version"] == 2 and d["pagination"]["total"] == 4
    first = d["items"][0]
    assert first["resource"] == "http://tollway.test/demo/weather" and first["type"] == "http"
    assert first["accepts"][0]["amount"] == "1000" and first["accepts"][0]["payTo"] == PAY_TO
    page = (await c.get("/x402/discovery/resources", params={"limit": 1, "offset": 3})).json()
    assert [i["resource"] for i in page["items"]] == ["http://tollway.test/bulk"]
    none = (await c.get("/x402/discovery/resources", params={"payTo": "0x" + "00" * 20})).json()
    assert none["items"] == [] and none["pagination"]["total"] == 0


async def test_admin_sees_payments_revenue_and_rules_and_funds_devnet(gw: Any) -> None:
    c, _ = gw
    p = Payer()
    r = await c.post("/admin/x402/devnet/fund", json={"address": p.address, "amount": "$0.01"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["balance"] == 10_000
    bad = await c.post("/admin/x402/devnet/fund", json={"address": "0x1", "amount": "$1"}, headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_address"
    accept = required(await c.get("/demo/weather"))["accepts"][0]
    assert (
        await c.get("/demo/weather", headers={"payment-signature": header(p.v2(accept))})
    ).status_code == 200
    pays = (await c.get("/admin/x402/payments", headers=ADMIN)).json()
    [pay] = pays["data"]
    assert (pay["amount"], pay["payer"], pay["pay_to"]) == (PRICE, p.address, PAY_TO)
    assert pay["resource"] == "http://tollway.test/demo/weather"
    rev = (await c.get("/admin/x402/revenue", headers=ADMIN)).json()
    assert (rev["payments"], rev["amount"]) == (1, PRICE)
    rules = (await c.get("/admin/x402/rules", headers=ADMIN)).json()["data"]
    assert [x["name"] for x in rules] == ["demo", "api", "members", "per-item"]
    assert (await c.get("/admin/x402/payments")).status_code == 401


async def test_rules_import_replaces_the_config_everywhere_and_reset_restores_it(
    gw: Any, db_url: str
) -> None:
    c, rt = gw
    new = [{"name": "only", "path": "/only/:x", "origin": "demo", "price": "$0.002"}]
    r = await c.put("/admin/x402/rules", json={"rules": new}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["source"] == "imported"
    assert [x["name"] for x in r.json()["data"]] == ["only"]
    assert required(await c.get("/only/1"))["accepts"][0]["amount"] == "2000"
    assert (await c.get("/demo/weather")).status_code == 404  # the config's rules no longer apply
    other = Runtime.build(rt.settings)  # another process on the same database
    try:
        await other.paywall.refresh()
        assert other.paywall.source == "imported" and [r.name for r in other.paywall.rules.rules] == ["only"]
    finally:
        await other.close()
    for bad, why in (
        ([{"name": "x", "path": "nope", "origin": "demo", "price": "$1"}], "path"),
        ([{"name": "x", "path": "/x", "origin": "demo", "price": "$0.0000001"}], "whole number"),
        ([new[0], new[0]], "duplicate"),
    ):
        r = await c.put("/admin/x402/rules", json={"rules": bad}, headers=ADMIN)
        assert (
            r.status_code == 400
            and r.json()["error"]["code"] == "invalid_rules"
            and why in r.json()["error"]["message"]
        )
    assert (await c.get("/admin/x402/rules", headers=ADMIN)).json()["data"][0]["name"] == "only"  # unchanged
    r = await c.delete("/admin/x402/rules", headers=ADMIN)
    assert r.json()["source"] == "config" and len(r.json()["data"]) == 4
    assert (await c.get("/demo/weather")).status_code == 402


async def test_ai_route_priced_at_its_maximum_cost_runs_without_a_key(
    db_url: str, origin: tuple[Origin, str]
) -> None:
    """A rule with origin "self" and price_by "ai_max_cost": the price is the
    request's most possible cost; once paid, it runs with no API key and no
    customer is charged (the payment was the charge)."""
    from fake_upstream import FakeUpstream, model

    with FakeUpstream() as up:
        rule = {"name": "ai", "methods": ["POST"], "path": "/v1/chat/completions", "origin": "self"}
        rule["price_by"], rule["unauthenticated_only"] = "ai_max_cost", True
        settings = settings_for(db_url, x402={"pay_to": PAY_TO, "rules": [rule]}, models=[model("m", up.url)])
        rt = Runtime.build(settings)
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t.test")
        try:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
            r = await c.post("/v1/chat/completions", json=body)
            assert r.status_code == 402
            accept = required(r)["accepts"][0]
            small = required(await c.post("/v1/chat/completions", json={**body, "max_tokens": 1}))
            assert 0 < int(small["accepts"][0]["amount"]) < int(accept["amount"])
            bad = await c.post("/v1/chat/completions", json={**body, "model": "nope"})
            assert bad.status_code == 404 and bad.json()["error"]["code"] == "model_not_found"
            p = await funded(rt, 1_000_000)
            ok = {"method": "POST", "route": "/v1/chat/completions", "status": "200"}
            counted = REGISTRY.get_sample_value("tollway_http_requests_total", ok) or 0.0
            paid = await c.post(
                "/v1/chat/completions", json=body, headers={"payment-signature": header(p.v2(accept))}
            )
            assert paid.status_code == 200, paid.text
            # Paid, then served by the AI route inside: one request in the metrics.
            assert REGISTRY.get_sample_value("tollway_http_requests_total", ok) == counted + 1
            assert paid.json()["choices"][0]["message"]["content"] and "payment-response" in paid.headers
            assert await revenue(rt) == int(accept["amount"])
            assert await rt.devnet.balance(p.address) == 1_000_000 - int(accept["amount"])
            streamed = await c.post(
                "/v1/chat/completions",
                json={**body, "stream": True},
                headers={"payment-signature": header(p.v2(accept))},
            )
            assert streamed.status_code == 200 and "[DONE]" in streamed.text
            # An API key passes this unauthenticated_only rule, and its own customer pays.
            cust = (await c.post("/admin/customers", json={"name": "k"}, headers=ADMIN)).json()
            fund = {
                "debit_account_id": "sys_funding",
                "credit_account_id": cust["account_id"],
                "amount": 10**6,
            }
            await c.post("/admin/ledger/transfers", json=fund, headers=ADMIN)
            key = (await c.post("/admin/keys", json={"customer_id": cust["id"]}, headers=ADMIN)).json()["key"]
            keyed = await c.post(
                "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
            )
            assert keyed.status_code == 200 and "payment-response" not in keyed.headers
            charged = int(keyed.headers["x-tollway-charged"])  # from the key's customer, not a payment
            usage = (await c.get("/v1/usage", headers={"authorization": f"Bearer {key}"})).json()
            assert charged > 0 and usage["today"]["requests"] == 1 and usage["today"]["charged"] == charged
        finally:
            await c.aclose()
            await rt.close()


async def test_a_paid_upload_streams_to_the_origin_byte_for_byte(gw: Any, origin: tuple[Origin, str]) -> None:
    c, rt = gw
    p = await funded(rt)
    blob = bytes(range(256)) * 4096  # 1 MiB
    accept = required(await c.post("/api/upload", content=blob))["accepts"][0]
    r = await c.post("/api/upload", content=blob, headers={"payment-signature": header(p.v2(accept))})
    assert r.status_code == 200
    [call] = origin[0].calls
    assert call["body"] == blob and await revenue(rt) == PRICE


async def test_per_rule_network_and_asset_need_an_external_facilitator(db_url: str) -> None:
    base = {"name": "r", "path": "/x", "origin": "demo", "price": "$0.001"}
    usdc = {
        "network": "eip155:84532",
        "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "asset_name": "USDC",
    }
    with pytest.raises(ValueError, match="facilitator_url"):
        settings_for(db_url, x402={"pay_to": PAY_TO, "rules": [{**base, **usdc}]})
    s = settings_for(
        db_url,
        x402={"pay_to": PAY_TO, "rules": [{**base, **usdc}], "facilitator_url": "http://127.0.0.1:9/x402"},
    )
    rt = Runtime.build(s)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t"
        ) as c:
            r = await c.get("/x")
            [accept] = required(r)["accepts"]
            assert (accept["network"], accept["asset"], accept["extra"]["name"]) == (
                "eip155:84532",
                usdc["asset"],
                "USDC",
            )
            assert r.json()["accepts"][0]["network"] == "base-sepolia"  # v1 names the chain
    finally:
        await rt.close()


async def test_unauthenticated_only_can_require_a_plan_feature(
    db_url: str, origin: tuple[Origin, str]
) -> None:
    """A key whose plan lacks the rule's feature pays like anyone; a plan change lets it through at once."""
    _, url = origin
    rule = {
        "name": "members",
        "path": "/members/:id",
        "origin": url,
        "price": "1000",
        "unauthenticated_only": True,
        "feature": "members.area",
    }
    plans = [
        {"lookup_key": "free", "features": ["ai.chat"]},
        {"lookup_key": "club", "features": ["members.area"]},
    ]
    settings = settings_for(db_url, x402={"pay_to": PAY_TO, "rules": [rule]}, billing={"plans": plans})
    rt = Runtime.build(settings)
    app = create_app(rt=rt)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tollway.test") as c:
        cust = (await c.post("/admin/customers", json={"name": "m"}, headers=ADMIN)).json()
        key = (await c.post("/admin/keys", json={"customer_id": cust["id"]}, headers=ADMIN)).json()["key"]
        auth = {"authorization": f"Bearer {key}"}
        assert (await c.get("/members/7", headers=auth)).status_code == 402
        r = await c.put(f"/admin/customers/{cust['id']}/subscription", json={"plan": "club"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert (await c.get("/members/7", headers=auth)).status_code == 200
    await rt.close()


async def test_rules_get_output_puts_back_as_is(gw: Any) -> None:
    c, _ = gw
    got = (await c.get("/admin/x402/rules", headers=ADMIN)).json()
    r = await c.put("/admin/x402/rules", json=got, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "imported" and r.json()["data"] == got["data"]
    again = (await c.get("/admin/x402/rules", headers=ADMIN)).json()
    assert (await c.put("/admin/x402/rules", json=again, headers=ADMIN)).json()["data"] == got["data"]


async def test_a_paid_stream_cut_after_output_ends_in_the_cancellation(
    db_url: str, origin: tuple[Origin, str]
) -> None:
    """An x402-paid streamed chat (no hold: the payment was the charge) whose
    client goes away after some output ends in the cancellation, not in an
    error of the charge path."""
    from fake_upstream import FakeUpstream, model

    with FakeUpstream() as up:
        up.chunk_delay_s = 0.05
        rule = {"name": "ai", "methods": ["POST"], "path": "/v1/chat/completions", "origin": "self"}
        rule["price_by"] = "ai_max_cost"
        settings = settings_for(db_url, x402={"pay_to": PAY_TO, "rules": [rule]}, models=[model("m", up.url)])
        rt = Runtime.build(settings)
        app = create_app(rt=rt)
        assert app.paywall is not None
        ended: list[BaseException | None] = []
        served = app.paywall.inner
        assert served is not None

        async def inner(scope: Any, receive: Any, send: Any) -> None:
            try:
                await served(scope, receive, send)
            except BaseException as e:
                ended.append(e)
                raise
            ended.append(None)

        app.paywall.inner = inner
        try:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t.test"
            ) as c:
                accept = required(await c.post("/v1/chat/completions", json=body))["accepts"][0]
            p = await funded(rt, 1_000_000)
            raw = json.dumps(body).encode()
            headers = [
                (b"host", b"t.test"),
                (b"content-type", b"application/json"),
                (b"payment-signature", header(p.v2(accept)).encode()),
            ]
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/v1/chat/completions",
                "raw_path": b"/v1/chat/completions",
                "query_string": b"",
                "root_path": "",
                "headers": headers,
                "client": ("127.0.0.1", 50000),
                "server": ("t.test", 80),
            }
            sent = False

            async def receive() -> dict[str, Any]:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": raw, "more_body": False}
                await asyncio.Event().wait()
                return {}

            chunks: list[bytes] = []
            task: asyncio.Task[None]

            async def send(msg: dict[str, Any]) -> None:
                if msg["type"] == "http.response.body" and msg.get("body"):
                    chunks.append(msg["body"])
                    if b"Hello" in msg["body"]:  # output reached the client: it goes away
                        task.cancel()

            task = asyncio.ensure_future(app(scope, receive, send))
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(100):
                if ended:
                    break
                await asyncio.sleep(0.01)
            assert any(b"Hello" in ch for ch in chunks)
            assert len(ended) == 1 and isinstance(ended[0], asyncio.CancelledError), ended
        finally:
            await rt.close()
