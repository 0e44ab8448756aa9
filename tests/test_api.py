"""The HTTP API: auth, customers, keys, ledger, and one error shape for bad input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from conftest import ADMIN
from tollway.runtime import Runtime

TRANSFER = "/admin/ledger/transfers"


def err(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "code", "message", "param"}
    assert body["error"]["code"] == code, body
    e: dict[str, Any] = body["error"]
    return e


async def customer(client: httpx.AsyncClient, credit: int = 0) -> dict[str, Any]:
    r = await client.post("/admin/customers", json={"name": "Ada", "email": "ada@example.com"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    c: dict[str, Any] = r.json()
    if credit:
        body = {"debit_account_id": "sys_funding", "credit_account_id": c["account_id"], "amount": credit}
        assert (await client.post(TRANSFER, json=body, headers=ADMIN)).status_code == 200
    return c


async def balances(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/admin/ledger/accounts", headers=ADMIN)
    return {a["id"]: (a["balance"], a["debits_pending"]) for a in r.json()["data"]}


async def test_healthz_and_metrics(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    await client.get("/healthz")
    m = await client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert 'tollway_http_requests_total{method="GET",route="/healthz",status="200"}' in m.text
    assert "tollway_ledger_batch_size" in m.text


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_admin_token"),
        ({"Authorization": "Bearer wrong-token-wrong-token"}, "invalid_admin_token"),
        ({"Authorization": "Basic abc"}, "missing_admin_token"),
    ],
)
async def test_admin_requires_token(client: httpx.AsyncClient, headers: dict[str, str], code: str) -> None:
    err(await client.get("/admin/customers", headers=headers), 401, code)
    err(await client.post("/admin/customers", json={"name": "x"}, headers=headers), 401, code)


async def test_admin_disabled_without_token(rt: Runtime, client: httpx.AsyncClient) -> None:
    rt.settings.admin.token = ""
    err(await client.get("/admin/customers", headers=ADMIN), 401, "admin_disabled")


async def test_customer_and_key_lifecycle(client: httpx.AsyncClient) -> None:
    c = await customer(client, credit=5_000_000)
    r = await client.get(f"/admin/customers/{c['id']}", headers=ADMIN)
    assert r.json()["account_id"] == c["account_id"]
    assert [x["id"] for x in (await client.get("/admin/customers", headers=ADMIN)).json()["data"]] == [
        c["id"]
    ]

    r = await client.post(
        "/admin/keys", json={"customer_id": c["id"], "scopes": ["balance:read"]}, headers=ADMIN
    )
    assert r.status_code == 201
    key = r.json()
    secret = key["key"]
    assert secret.startswith("tw_") and key["prefix"] in secret

    listed = (await client.get("/admin/keys", params={"customer_id": c["id"]}, headers=ADMIN)).json()["data"]
    assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]

    r = await client.get("/v1/balance", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200 and r.json()["balance"] == 5_000_000 and r.json()["customer_id"] == c["id"]

    r = await client.post(f"/admin/keys/{key['id']}/revoke", headers=ADMIN)
    assert r.json()["revoked"] is True
    err(
        await client.get("/v1/balance", headers={"Authorization": f"Bearer {secret}"}), 401, "api_key_revoked"
    )
    err(await client.post(f"/admin/keys/{key['id']}/revoke", headers=ADMIN), 409, "api_key_revoked")


@pytest.mark.parametrize(
    ("auth", "code"),
    [
        (None, "missing_api_key"),
        ("Bearer nope", "invalid_api_key"),
        ("Bearer tw_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "invalid_api_key"),
    ],
)
async def test_bad_api_keys_get_401(client: httpx.AsyncClient, auth: str | None, code: str) -> None:
    headers = {"Authorization": auth} if auth else {}
    err(await client.get("/v1/balance", headers=headers), 401, code)


async def test_key_with_right_prefix_wrong_secret(client: httpx.AsyncClient) -> None:
    c = await customer(client)
    key = (await client.post("/admin/keys", json={"customer_id": c["id"]}, headers=ADMIN)).json()
    forged = key["key"][:-4] + "zzzz"
    err(
        await client.get("/v1/balance", headers={"Authorization": f"Bearer {forged}"}), 401, "invalid_api_key"
    )


async def test_scope_is_enforced(client: httpx.AsyncClient) -> None:
    c = await customer(client)
    body = {"customer_id": c["id"], "scopes": ["inference"]}
    key = (await client.post("/admin/keys", json=body, headers=ADMIN)).json()["key"]
    err(await client.get("/v1/balance", headers={"Authorization": f"Bearer {key}"}), 403, "missing_scope")


async def test_two_phase_over_http(client: httpx.AsyncClient) -> None:
    c = await customer(client, credit=1_000)
    acct = c["account_id"]
    body = {
        "debit_account_id": acct,
        "credit_account_id": "sys_revenue",
        "amount": 600,
        "pending": True,
        "timeout": 60,
    }
    p = (await client.post(TRANSFER, json=body, headers=ADMIN)).json()
    assert p["kind"] == "pending" and p["expires_at_us"] > p["created_at_us"]
    r = await client.post(f"{TRANSFER}/{p['id']}/post", json={"amount": 250}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["kind"] == "post_pending" and r.json()["amount"] == 250
    err(
        await client.post(f"{TRANSFER}/{p['id']}/void", headers=ADMIN), 409, "pending_transfer_already_posted"
    )
    a = (await client.get(f"/admin/ledger/accounts/{acct}", headers=ADMIN)).json()
    assert (a["balance"], a["available"], a["debits_pending"]) == (750, 750, 0)
    hist = (await client.get(f"/admin/ledger/accounts/{acct}/transfers", headers=ADMIN)).json()["data"]
    assert [t["kind"] for t in hist] == ["post_pending", "pending", "posted"]
    got = (await client.get(f"{TRANSFER}/{p['id']}", headers=ADMIN)).json()
    assert got == p
    q = (await client.post(TRANSFER, json={**body, "amount": 10}, headers=ADMIN)).json()
    assert (await client.post(f"{TRANSFER}/{q['id']}/void", headers=ADMIN)).json()["kind"] == "void_pending"
    total = sum(b for b, _ in (await balances(client)).values())
    assert total == 0


async def test_idempotency_key_header(client: httpx.AsyncClient) -> None:
    c = await customer(client, credit=1_000)
    body = {"debit_account_id": c["account_id"], "credit_account_id": "sys_revenue", "amount": 100}
    h = {**ADMIN, "Idempotency-Key": "order-42"}
    r1 = await client.post(TRANSFER, json=body, headers=h)
    r2 = await client.post(TRANSFER, json=body, headers=h)
    assert r1.status_code == r2.status_code == 200 and r1.json() == r2.json()
    err(await client.post(TRANSFER, json={**body, "amount": 101}, headers=h), 409, "idempotency_key_reused")
    assert (await balances(client))[c["account_id"]] == (900, 0)


BAD_TRANSFERS = [
    ({"debit_account_id": "nope", "credit_account_id": "sys_revenue", "amount": 1}, 404, "account_not_found"),
    ({"debit_account_id": "{acct}", "credit_account_id": "sys_revenue", "amount": 0}, 400, "invalid_amount"),
    ({"debit_account_id": "{acct}", "credit_account_id": "sys_revenue", "amount": -3}, 400, "invalid_amount"),
    (
        {"debit_account_id": "{acct}", "credit_account_id": "sys_revenue", "amount": 1.5},
        400,
        "invalid_amount",
    ),
    (
        {"debit_account_id": "{acct}", "credit_account_id": "sys_revenue", "amount": "10"},
        400,
        "invalid_amount",
    ),
    (
        {"debit_account_id": "{acct}", "credit_account_id": "sys_revenue", "amount": 10**30},
        400,
        "invalid_amount",
    ),
    (
        {"debit_account_id": "{acct}", "credit_account_id": "sys_revenue", "amount": 1001},
        402,
        "insufficient_funds",
    ),
    ({"debit_account_id": "{acct}", "credit_account_id": "{acct}", "amount": 1}, 400, "accounts_must_differ"),
    ({"debit_account_id": "{acct}", "credit_account_id": "sys_revenue"}, 400, "missing_parameter"),
    ({"debit_account_id": 5, "credit_account_id": "sys_revenue", "amount": 1}, 400, "invalid_parameter"),
    (
        {"debit_account_id": "{acct}", "credit_account_id": "sys_revenue", "amount": 1, "x": 1},
        400,
        "unknown_parameter",
    ),
    (
        {"debit_account_id": "{acct}", "credit_account_id": "sys_revenue", "amount": 1, "pending": "yes"},
        400,
        "invalid_parameter",
    ),
    (
        {
            "debit_account_id": "{acct}",
            "credit_account_id": "sys_revenue",
            "amount": 1,
            "pending": True,
            "timeout": 0,
        },
        400,
        "invalid_timeout",
    ),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_TRANSFERS)
async def test_bad_transfer_changes_nothing(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, code: str
) -> None:
    c = await customer(client, credit=1_000)
    before = await balances(client)
    body = {k: (v.replace("{acct}", c["account_id"]) if isinstance(v, str) else v) for k, v in body.items()}
    e = err(await client.post(TRANSFER, json=body, headers=ADMIN), status, code)
    assert e["message"]
    assert await balances(client) == before


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b"{bad", "invalid_json"), (b"[1,2]", "invalid_json"), (b"", "missing_body"), (b"null", "invalid_json")],
)
async def test_malformed_json(client: httpx.AsyncClient, raw: bytes, code: str) -> None:
    before = await balances(client)
    r = await client.post(TRANSFER, content=raw, headers={**ADMIN, "content-type": "application/json"})
    err(r, 400, code)
    assert await balances(client) == before


async def test_curl_style_body_is_read_as_json(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/admin/customers",
        content=b'{"name": "curl"}',
        headers={**ADMIN, "content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 201
    r = await client.post("/admin/customers", content=b'{"name": "bare"}', headers=ADMIN)  # no type at all
    assert r.status_code == 201 and r.json()["name"] == "bare"


async def test_bad_post_and_void(client: httpx.AsyncClient) -> None:
    c = await customer(client, credit=1_000)
    body = {
        "debit_account_id": c["account_id"],
        "credit_account_id": "sys_revenue",
        "amount": 100,
        "pending": True,
    }
    p = (await client.post(TRANSFER, json=body, headers=ADMIN)).json()
    before = await balances(client)
    err(
        await client.post(f"{TRANSFER}/{p['id']}/post", json={"amount": 101}, headers=ADMIN),
        400,
        "amount_exceeds_pending",
    )
    err(
        await client.post(f"{TRANSFER}/{p['id']}/post", json={"amount": 0}, headers=ADMIN),
        400,
        "invalid_amount",
    )
    err(
        await client.post(f"{TRANSFER}/{p['id']}/post", json={"amount": "1"}, headers=ADMIN),
        400,
        "invalid_amount",
    )
    err(await client.post(f"{TRANSFER}/tr_nope/post", headers=ADMIN), 404, "transfer_not_found")
    err(await client.post(f"{TRANSFER}/tr_nope/void", headers=ADMIN), 404, "transfer_not_found")
    assert await balances(client) == before
    assert (await client.post(f"{TRANSFER}/{p['id']}/void", headers=ADMIN)).status_code == 200
    err(
        await client.post(f"{TRANSFER}/{p['id']}/void", headers=ADMIN), 409, "pending_transfer_already_voided"
    )


async def test_bad_customer_and_key_input(client: httpx.AsyncClient) -> None:
    err(await client.post("/admin/customers", json={"name": ""}, headers=ADMIN), 400, "invalid_parameter")
    err(
        await client.post("/admin/customers", json={"name": "x", "email": "nope"}, headers=ADMIN),
        400,
        "invalid_email",
    )
    err(
        await client.post("/admin/keys", json={"customer_id": "cus_nope"}, headers=ADMIN),
        404,
        "customer_not_found",
    )
    c = await customer(client)
    err(
        await client.post(
            "/admin/keys", json={"customer_id": c["id"], "scopes": ["BAD SCOPE"]}, headers=ADMIN
        ),
        400,
        "invalid_scopes",
    )
    err(
        await client.post("/admin/keys", json={"customer_id": c["id"], "scopes": []}, headers=ADMIN),
        400,
        "invalid_parameter",
    )
    err(await client.get("/admin/customers/cus_nope", headers=ADMIN), 404, "customer_not_found")
    err(await client.post("/admin/keys/key_nope/revoke", headers=ADMIN), 404, "api_key_not_found")
    assert len((await client.get("/admin/customers", headers=ADMIN)).json()["data"]) == 1
    assert (await client.get("/admin/keys", headers=ADMIN)).json()["data"] == []


async def test_accounts_api(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/admin/ledger/accounts", json={"kind": "wallet", "name": "agent", "id": "w_1"}, headers=ADMIN
    )
    assert r.status_code == 201 and r.json()["debits_must_not_exceed_credits"] is True
    err(
        await client.post("/admin/ledger/accounts", json={"kind": "wallet", "id": "w_1"}, headers=ADMIN),
        409,
        "account_exists",
    )
    err(
        await client.post("/admin/ledger/accounts", json={"kind": "piggy"}, headers=ADMIN),
        400,
        "invalid_parameter",
    )
    err(await client.get("/admin/ledger/accounts/nope", headers=ADMIN), 404, "account_not_found")
    r = await client.get(
        "/admin/ledger/accounts", params=[("id", "w_1"), ("id", "sys_revenue")], headers=ADMIN
    )
    assert [a["id"] for a in r.json()["data"]] == ["sys_revenue", "w_1"]


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    err(await client.get("/nope"), 404, "route_not_found")
    err(await client.delete("/healthz"), 405, "method_not_allowed")
