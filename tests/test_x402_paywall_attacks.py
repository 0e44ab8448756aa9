"""Paid routes can't be tricked (issue 18 §4): the path a rule prices is the path
the origin gets; a price field given twice, or not a number, is refused; the
caller's tollway credentials never reach an origin; NaN, Infinity and 100,000
levels of JSON are 400s, never 500s. The origin records what reaches it."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ADMIN, err, settings_for
from tollway.api.app import create_app
from tollway.runtime import Runtime
from tollway.x402.paths import canonical
from x402_gateway_support import Origin, funded, header, required, send_raw
from x402_helpers import PAY_TO, requirements

PREMIUM = 5_000_000  # $5
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture
async def shop(
    db_url: str, origin: tuple[Origin, str]
) -> AsyncIterator[tuple[Any, httpx.AsyncClient, Runtime]]:
    """$5 premium reports next to a $0.000001 catch-all on the same origin."""
    _, url = origin
    rules = [
        {"name": "premium", "path": "/shop/premium/*", "origin": url, "price": "$5"},
        {"name": "cheap", "methods": ["GET", "POST"], "path": "/shop/*", "origin": url, "price": "1"},
        {
            "name": "bulk",
            "path": "/bulk",
            "origin": url,
            "price": "1",
            "price_by": "query",
            "price_field": "n",
        },
        {
            "name": "count",
            "methods": ["POST"],
            "path": "/count",
            "origin": url,
            "price": "1",
            "price_by": "body",
            "price_field": "n",
        },
        {"name": "members", "path": "/members/*", "origin": url, "price": "1", "unauthenticated_only": True},
    ]
    rt = Runtime.build(settings_for(db_url, x402={"pay_to": PAY_TO, "rules": rules}))
    app = create_app(rt=rt)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://tollway.test") as c:
        yield app, c, rt
    await rt.close()


# ---------------------------------------------------------------- path confusion

# (request target as sent, the path the origin must get) — each priced at $5.
PRICED_AS_PREMIUM = [
    (b"/shop/cheap/%2e%2e/premium/report", "/shop/premium/report"),
    (b"/shop/cheap/%2E%2E/premium/report", "/shop/premium/report"),
    (b"/shop/cheap/../premium/report", "/shop/premium/report"),
    (b"/shop/cheap/./../premium/report", "/shop/premium/report"),
    (b"/shop/cheap/.%2e/premium/report", "/shop/premium/report"),
    (b"/shop//premium/report", "/shop/premium/report"),
    (b"//shop/premium//report", "/shop/premium/report"),
    (b"/SHOP/PREMIUM/report", "/SHOP/PREMIUM/report"),
    (b"/shop/Premium/report", "/shop/Premium/report"),
    (b"/shop/premium/report/.", "/shop/premium/report/"),
    (b"/shop/%70remium/report", "/shop/premium/report"),
    (b"/shop/cheap/../../../shop/premium/report", "/shop/premium/report"),
]
# Origins read these as /shop/premium/...: refused outright.
REFUSED = [
    b"/shop/cheap/%2E%2E%2Fpremium/report",
    b"/shop/cheap/..%2fpremium",
    b"/shop/cheap/..%2Fpremium/report",
    b"/shop/cheap/..%5cpremium/report",
    b"/shop/cheap/..\\premium/report",
    b"/shop/cheap/..;/premium/report",
    b"/shop/premium;x=1/report",
    b"/shop/cheap/%252e%252e/premium/report",
    b"/shop/cheap/%2e%2e%252fpremium/report",
    b"/shop/cheap/%zz/../premium",
]


@pytest.mark.parametrize(
    ("target", "forwarded"), PRICED_AS_PREMIUM, ids=[t.decode() for t, _ in PRICED_AS_PREMIUM]
)
async def test_a_path_that_reaches_premium_pays_premium_and_the_origin_gets_the_path_priced(
    shop: Any, origin: tuple[Origin, str], target: bytes, forwarded: str
) -> None:
    app, _, rt = shop
    r = await send_raw(app, "GET", target)
    assert r.status_code == 402
    accept = required(r)["accepts"][0]
    assert int(accept["amount"]) == PREMIUM
    p = await funded(rt, PREMIUM)
    paid = await send_raw(app, "GET", target, {"payment-signature": header(p.v2(accept))})
    assert paid.status_code == 200, paid.text
    [call] = origin[0].calls
    assert call["raw_path"] == forwarded  # byte for byte the path the rule matched


@pytest.mark.parametrize("target", REFUSED, ids=[t.decode() for t in REFUSED])
async def test_an_ambiguous_path_on_a_paid_route_is_refused(
    shop: Any, origin: tuple[Origin, str], target: bytes
) -> None:
    app, _, rt = shop
    p = await funded(rt, 10)
    cheap = {"payment-signature": header(p.v2(requirements(1)))}
    for headers in ({}, cheap):
        r = await send_raw(app, "GET", target, headers)
        err(r, 400, "invalid_path", "path")
    assert origin[0].calls == [] and await rt.devnet.balance(p.address) == 10


async def test_the_cheap_route_still_forwards_its_own_path_and_query_as_sent(
    shop: Any, origin: tuple[Origin, str]
) -> None:
    app, _, rt = shop
    target = b"/shop/cheap/item%20one/%C3%A9?q=a%2Fb&x=1&x=2"
    accept = required(await send_raw(app, "GET", target))["accepts"][0]
    assert accept["amount"] == "1"
    p = await funded(rt, 1)
    r = await send_raw(app, "GET", target, {"payment-signature": header(p.v2(accept))})
    assert r.status_code == 200
    [call] = origin[0].calls
    assert (call["raw_path"], call["query"]) == ("/shop/cheap/item%20one/%C3%A9", "q=a%2Fb&x=1&x=2")


async def test_an_ambiguous_path_no_rule_matches_is_not_the_paywalls(shop: Any) -> None:
    app, _, _ = shop
    r = await send_raw(app, "GET", b"/v1/nothing%2Fhere")
    assert r.status_code == 404 and r.json()["error"]["code"] != "invalid_path"


def test_a_rule_path_must_be_canonical(db_url: str) -> None:
    for path in ("/a/../b", "/a//b", "/a/%2e%2e/b", "/a;x", "/a\\b", "/a/%2F", "/a/./b"):
        rule = {"name": "r", "path": path, "origin": "demo", "price": "1"}
        with pytest.raises(ValueError, match="canonical"):
            settings_for(db_url, x402={"pay_to": PAY_TO, "rules": [rule]})


# -------------------------------------------------------- duplicate price fields


@pytest.mark.parametrize("query", ["n=1000&n=1", "n=1&n=1000", "n=1&N=1000", "%6E=1000&n=1", "n=1&n="])
async def test_a_query_price_field_given_twice_is_refused(
    shop: Any, origin: tuple[Origin, str], query: str
) -> None:
    _, c, rt = shop
    p = await funded(rt, 10)
    for headers in ({}, {"payment-signature": header(p.v2(requirements(1)))}):
        err(await c.get(f"/bulk?{query}", headers=headers), 400, "duplicate_parameter", "n")
    assert origin[0].calls == [] and await rt.devnet.balance(p.address) == 10


async def test_other_duplicate_query_parameters_are_the_origins(shop: Any) -> None:
    _, c, _ = shop
    assert required(await c.get("/bulk?n=7&tag=a&tag=b"))["accepts"][0]["amount"] == "7"


@pytest.mark.parametrize(
    "body", [b'{"n": 1, "n": 1000}', b'{"n": 1000, "N": 1}', b'{"x": {"a": 1, "a": 2}, "n": 1}']
)
async def test_a_json_body_with_a_key_twice_is_refused(
    shop: Any, origin: tuple[Origin, str], body: bytes
) -> None:
    _, c, _ = shop
    r = await c.post("/count", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "duplicate_parameter"
    assert origin[0].calls == []


@pytest.mark.parametrize(
    "query",
    ["n=NaN", "n=Infinity", "n=-Infinity", "n=1e309", "n=1e999999999", "n=-5", "n=0x10", "n=" + "9" * 40],
)
async def test_a_query_price_field_that_is_not_a_number_is_refused(shop: Any, query: str) -> None:
    _, c, _ = shop
    err(await c.get(f"/bulk?{query}"), 400, "invalid_parameter", "n")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"n": NaN}', "invalid_json"),
        (b'{"n": Infinity}', "invalid_json"),
        (b'{"n": 1e309}', "invalid_json"),
        (b'{"n": -1}', "invalid_parameter"),
        (b'{"n": "lots"}', "invalid_parameter"),
        (b'{"n": 1e300}', "price_too_large"),
        (DEEP, "invalid_json"),
        (b'{"n": ' + b"[" * 100_000, "invalid_json"),
    ],
)
async def test_a_body_price_that_is_not_a_number_or_too_deep_is_a_400(
    shop: Any, origin: tuple[Origin, str], body: bytes, code: str
) -> None:
    _, c, _ = shop
    r = await c.post("/count", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
    assert origin[0].calls == []


async def test_a_price_field_counts_its_units(shop: Any) -> None:
    _, c, _ = shop
    assert required(await c.get("/bulk?n=2.5"))["accepts"][0]["amount"] == "3"
    assert required(await c.get("/bulk"))["accepts"][0]["amount"] == "1"
    assert required(await c.post("/count", json={"n": 12}))["accepts"][0]["amount"] == "12"


# ------------------------------------------------------- credentials to origins


async def test_tollway_credentials_never_reach_the_origin(shop: Any, origin: tuple[Origin, str]) -> None:
    """An API key passes an unauthenticated_only rule, but the key stays with tollway."""
    _, c, rt = shop
    cust = (await c.post("/admin/customers", json={"name": "m"}, headers=ADMIN)).json()
    key = (await c.post("/admin/keys", json={"customer_id": cust["id"]}, headers=ADMIN)).json()["key"]
    cookie = f"tw_session=s3cret; theme=dark; tollway_key={key}"
    for creds in ({"authorization": f"Bearer {key}"}, {"x-api-key": key}):
        r = await c.get(
            "/members/7", headers={**creds, "cookie": cookie, "proxy-authorization": "Basic eA=="}
        )
        assert r.status_code == 200
    p = await funded(rt, 10)
    accept = required(await c.get("/shop/cheap/x"))["accepts"][0]
    paid = {
        "payment-signature": header(p.v2(accept)),
        "authorization": "Bearer tw_not_a_key",
        "cookie": cookie,
    }
    assert (await c.get("/shop/cheap/x", headers=paid)).status_code == 200
    assert len(origin[0].calls) == 3
    for call in origin[0].calls:
        h = call["headers"]
        for name in ("authorization", "x-api-key", "proxy-authorization", "payment-signature", "x-payment"):
            assert name not in h
        assert h["cookie"] == "theme=dark"
        assert key not in json.dumps(h)


# ------------------------------------------- NaN, Infinity, deep JSON at x402/*


@pytest.mark.parametrize(
    "body",
    [
        DEEP,
        b'{"paymentPayload": ' + b"[" * 100_000 + b"]" * 100_000 + b', "paymentRequirements": {}}',
        b'{"x402Version": NaN, "paymentPayload": {}, "paymentRequirements": {}}',
        b'{"paymentPayload": {"x402Version": Infinity}, "paymentRequirements": {"amount": 1e309}}',
        b'{"paymentPayload": {}, "paymentRequirements": {"amount": -Infinity}}',
    ],
)
async def test_the_facilitator_answers_bad_json_with_a_400(shop: Any, body: bytes) -> None:
    _, c, _ = shop
    for path in ("/x402/verify", "/x402/settle"):
        r = await c.post(path, content=body, headers={"content-type": "application/json"})
        err(r, 400, "invalid_json")


async def test_a_deep_or_nan_payment_header_is_invalid_payload(shop: Any, origin: tuple[Origin, str]) -> None:
    _, c, _ = shop
    for raw in (DEEP, b'{"x402Version": 2, "payload": NaN}'):
        r = await c.get("/shop/cheap/x", headers={"payment-signature": base64.b64encode(raw).decode()})
        assert r.status_code == 402 and required(r)["error"] == "invalid_payload"
    assert origin[0].calls == []


@pytest.mark.parametrize(
    "price",
    [
        "$NaN",
        "$Infinity",
        "$-Infinity",
        "$sNaN",
        "$1e309",
        "$1e999999999",
        "NaN",
        "$-1",
        "1" * 80,
        "$1" + "0" * 80,
    ],
)
async def test_a_rule_price_that_is_not_an_amount_is_a_400_naming_it(shop: Any, price: str) -> None:
    _, c, _ = shop
    rules = [{"name": "x", "path": "/x", "origin": "demo", "price": price}]
    r = await c.put("/admin/x402/rules", json={"rules": rules}, headers=ADMIN)
    err(r, 400, "invalid_rules", "rules.0.price")
    assert (await c.get("/admin/x402/rules", headers=ADMIN)).json()["source"] == "config"


async def test_devnet_funding_refuses_nan_and_huge_amounts(shop: Any) -> None:
    _, c, _ = shop
    for amount in ("$NaN", "$Infinity", "$1e999999999"):
        body = {"address": PAY_TO, "amount": amount}
        err(
            await c.post("/admin/x402/devnet/fund", json=body, headers=ADMIN), 400, "invalid_amount", "amount"
        )


@pytest.mark.parametrize("body", [b"null", b"true", b"3", b'"x"', b"[]", b"[1, [2]]"])
async def test_the_facilitator_reads_any_json_value_without_a_500(shop: Any, body: bytes) -> None:
    _, c, _ = shop
    r = await c.post("/x402/verify", content=body, headers={"content-type": "application/json"})
    err(r, 400, "invalid_json")


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"/",
                b".",
                b"..",
                b"%2e",
                b"%2E",
                b"%2f",
                b"%5c",
                b"\\",
                b";",
                b"%25",
                b"%",
                b"a",
                b"B",
                b"%41",
                b"~",
                b" ",
                b"\xc3\xa9",
                b"%zz",
            ]
        ),
        max_size=12,
    )
)
def test_the_canonical_path_is_a_fixpoint_with_no_dot_or_empty_segments(parts: list[bytes]) -> None:
    """Whatever is sent, the path forwarded reads the same when canonicalized
    again (an origin that normalizes gets the path that was priced)."""
    path, _ = canonical(b"".join(parts))
    assert canonical(path.encode())[0] == path
    segments = path.split("/")[1:-1]
    assert path.startswith("/") and "" not in segments and "." not in segments and ".." not in segments
    assert path.isascii() and " " not in path


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (DEEP, "invalid_json"),
        (b'{"rules": [{"name": "x", "path": "/x", "origin": "demo", "price": NaN}]}', "invalid_json"),
        (b'{"rules": [], "rules": [{"name": "x"}]}', "duplicate_parameter"),
        (b'{"rules": 3}', "invalid_rules"),
    ],
)
async def test_the_rules_import_reads_its_body_strictly(shop: Any, body: bytes, code: str) -> None:
    _, c, _ = shop
    r = await c.put("/admin/x402/rules", content=body, headers={**ADMIN, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
    assert (await c.get("/admin/x402/rules", headers=ADMIN)).json()["source"] == "config"


async def test_deep_json_is_refused_before_parsing_even_with_a_raised_recursion_limit(shop: Any) -> None:
    """``json`` recurses on the C stack: with the limit raised (some libraries
    do), 100,000 levels would crash the process instead of raising."""
    _, c, _ = shop
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1_000_000)
    try:
        for path in ("/x402/verify", "/x402/settle"):
            err(
                await c.post(path, content=DEEP, headers={"content-type": "application/json"}),
                400,
                "invalid_json",
            )
        r = await c.post(
            "/count", content=b'{"n": ' + b"[" * 100_000, headers={"content-type": "application/json"}
        )
        err(r, 400, "invalid_json")
        h = {"payment-signature": base64.b64encode(DEEP).decode()}
        assert required(await c.get("/shop/cheap/x", headers=h))["error"] == "invalid_payload"
    finally:
        sys.setrecursionlimit(limit)
