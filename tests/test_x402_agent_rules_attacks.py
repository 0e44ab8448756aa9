"""Agents price only what they own (issue 22 §2): a host of another wallet,
the same host spelled otherwise (case, IDNA look-alikes, a trailing dot, a
port, a wildcard, a parent name), another wallet's rules, fields an agent may
not set, ambiguous paths, and tokens that may not act are all refused with
the one error shape, and change nothing. A rule left on a host that changed
hands prices nothing at the edge and credits no one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ADMIN, err
from earnings_support import HOST, balance, deploy, edge, rule, shop, wallet_key
from provision_support import Agent
from tollway.x402.owned import DEPLOYMENT_ORIGIN
from tollway.x402.rules import Rule
from x402_gateway_support import required
from x402_helpers import PAY_TO

pytestmark = pytest.mark.slow
OTHER = "other.tollway.localhost"


@pytest.fixture
async def two(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Agent, Agent]]:
    """Agent A deployed ``shop``; agent B, another wallet, deployed ``other``."""
    wallet_key(monkeypatch)
    async with shop(db_url, tmp_path / "prov") as a:
        b = await Agent(a.rt, a.http).setup()
        await deploy(b, "other")
        yield a, b


async def rules_of(a: Agent) -> list[dict[str, Any]]:
    r = await a.http.get("/v1/x402/rules", headers=a.auth)
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()["data"]
    return out


@pytest.mark.parametrize(
    "host",
    [
        OTHER,
        "OTHER.tollway.localhost",
        "other.tollway.localhost.",
        "Other.Tollway.Localhost.",
        "\u043ether.tollway.localhost",  # a Cyrillic o: another name (xn--), owned by no one
        "other.tollway.localhost:80",
        "shop.tollway.localhost:80",
        "*.tollway.localhost",
        "tollway.localhost",
        "localhost",
        "",
        " ",
        "shop.tollway.localhost/x",
        "shop.tollway.localhost@other.tollway.localhost",
        "x.shop.tollway.localhost",  # a name under a deployment's host is not the deployment's
    ],
)
async def test_a_host_the_wallet_does_not_own_is_refused(two: tuple[Agent, Agent], host: str) -> None:
    a, _ = two
    r = await rule(a, name="steal", host=host, path="/*", price="$1")
    assert r.status_code in (400, 403), r.text
    assert r.json()["error"]["code"] in ("host_not_owned", "invalid_name", "invalid_host")
    assert await rules_of(a) == []


async def test_the_host_is_stored_as_its_a_label_and_case_and_dots_do_not_matter(
    two: tuple[Agent, Agent],
) -> None:
    a, _ = two
    r = await rule(a, name="ok", host="SHOP.tollway.localhost.", path="/p", price="$1")
    assert r.status_code == 201 and r.json()["host"] == HOST
    assert (await edge(a, "/p", host="Shop.Tollway.Localhost.")).status_code == 402


async def test_another_wallets_rule_is_not_found_and_stays_as_it_was(two: tuple[Agent, Agent]) -> None:
    a, b = two
    made = (await rule(a, name="paid", host=HOST, path="/paid", price="$0.01")).json()
    rid = made["id"]
    err(await b.http.get(f"/v1/x402/rules/{rid}", headers=b.auth), 404, "rule_not_found")
    err(
        await b.http.patch(f"/v1/x402/rules/{rid}", json={"price": "1"}, headers=b.auth),
        404,
        "rule_not_found",
    )
    body = {"name": "paid", "host": OTHER, "path": "/", "price": "1"}
    err(await b.http.put(f"/v1/x402/rules/{rid}", json=body, headers=b.auth), 404, "rule_not_found")
    err(await b.http.delete(f"/v1/x402/rules/{rid}", headers=b.auth), 404, "rule_not_found")
    assert await rules_of(b) == []
    # Nor can its owner move it onto someone else's host.
    r = await a.http.patch(f"/v1/x402/rules/{rid}", json={"host": OTHER}, headers=a.auth)
    err(r, 403, "host_not_owned")
    assert (await rules_of(a))[0]["host"] == HOST and (await rules_of(a))[0]["price"] == "$0.01"
    assert (await edge(a, "/paid", host=OTHER)).text == "hello v1 /paid"  # B's host: free, untouched


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"origin": "http://169.254.169.254"}, "origin_not_allowed"),
        ({"origin": "self"}, "origin_not_allowed"),
        ({"pay_to": PAY_TO}, "pay_to_not_allowed"),
        ({"unauthenticated_only": True}, "invalid_rule"),
        ({"network": "eip155:8453"}, "invalid_rule"),
        ({"asset": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"}, "invalid_rule"),
        ({"price_by": "ai_max_cost", "price": ""}, "invalid_rule"),
        ({"path": "/paid/../admin"}, "invalid_rule"),
        ({"path": "/paid/%2e%2e/x"}, "invalid_rule"),
        ({"path": "paid"}, "invalid_rule"),
        ({"price": "-1"}, "invalid_rule"),
        ({"price": "NaN"}, "invalid_rule"),
        ({"methods": ["TRACE"]}, "invalid_rule"),
        ({"extra": 1}, "invalid_rule"),
    ],
)
async def test_fields_an_agent_may_not_set_are_refused(
    two: tuple[Agent, Agent], body: dict[str, Any], code: str
) -> None:
    a, _ = two
    r = await rule(a, **{"name": "r", "host": HOST, "path": "/paid", "price": "$0.01", **body})
    err(r, 400, code)
    assert await rules_of(a) == []


async def test_bad_json_and_a_name_twice(two: tuple[Agent, Agent]) -> None:
    a, _ = two
    for raw in (b'{"name": "r", "price": NaN}', b"[1]", b'{"name": "a", "name": "b"}', b"{"):
        r = await a.http.post(
            "/v1/x402/rules", content=raw, headers={**a.auth, "content-type": "application/json"}
        )
        assert r.status_code == 400, r.text
    assert (await rule(a, name="r", host=HOST, path="/a", price="1")).status_code == 201
    err(await rule(a, name="r", host=HOST, path="/b", price="1"), 409, "rule_exists")
    assert len(await rules_of(a)) == 1


async def test_tokens_that_may_not_act_price_nothing(two: tuple[Agent, Agent]) -> None:
    a, _ = two
    http = a.http
    wid = a.wallet["id"]
    body = {"name": "r", "host": HOST, "path": "/p", "price": "1"}
    # A token limited to other categories.
    narrow = (
        await http.post(
            f"/admin/wallets/{wid}/tokens", json={"limits": {"categories": ["domains"]}}, headers=ADMIN
        )
    ).json()
    r = await http.post("/v1/x402/rules", json=body, headers={"authorization": f"Bearer {narrow['token']}"})
    err(r, 403, "category_blocked")
    # A revoked token, and no token.
    assert (await http.post(f"/admin/agent-tokens/{narrow['id']}/revoke", headers=ADMIN)).status_code == 200
    r = await http.post("/v1/x402/rules", json=body, headers={"authorization": f"Bearer {narrow['token']}"})
    err(r, 403, "token_revoked")
    err(
        await http.get("/v1/x402/rules", headers={"authorization": f"Bearer {narrow['token']}"}),
        403,
        "token_revoked",
    )
    err(await http.post("/v1/x402/rules", json=body), 401, "missing_agent_token")
    err(
        await http.post("/v1/x402/rules", json=body, headers={"authorization": "Bearer tw_agt_x_y"}),
        401,
        "invalid_agent_token",
    )
    # A frozen token.
    made = (await rule(a, **body)).json()
    tok = (await http.get(f"/admin/wallets/{wid}/tokens", headers=ADMIN)).json()["data"][0]
    await a.rt.wallets.freeze(tok["id"], "test")
    err(await a.http.delete(f"/v1/x402/rules/{made['id']}", headers=a.auth), 403, "token_frozen")
    assert len(await rules_of_admin(a)) == 1


async def rules_of_admin(a: Agent) -> list[Any]:
    assert a.rt.paywall.owned is not None
    return await a.rt.paywall.owned.all(a.wallet["id"])


async def test_a_rule_left_on_a_host_that_changed_hands_prices_nothing(two: tuple[Agent, Agent]) -> None:
    """A stale rule (A's, on the host B's deployment now serves): the edge
    serves the host free, and nothing is credited to A."""
    a, b = two
    store = a.rt.paywall.owned
    assert store is not None
    address = await a.rt.wallets.ensure_address(a.wallet["id"])
    stale = Rule(name="stale", host=OTHER, path="/*", origin=DEPLOYMENT_ORIGIN, price="$1", pay_to=address)
    await store.create(a.wallet["id"], stale)
    await a.rt.paywall.refresh()
    before = await balance(a, a.wallet["account_id"])
    r = await edge(a, "/anything", host=OTHER)
    assert r.status_code == 200 and r.text == "hello v1 /anything"
    assert await balance(a, a.wallet["account_id"]) == before
    # Nor does it hide the owner's own rule, made after it.
    assert (await rule(b, name="mine", host=OTHER, path="/paid", price="$0.01")).status_code == 201
    r = await edge(a, "/paid", host=OTHER)
    assert r.status_code == 402 and required(r)["accepts"][0]["payTo"] != address
    # A deleted deployment: its host answers nothing, priced or not.
    assert (await rule(a, name="mine", host=HOST, path="/*", price="$1")).status_code == 201
    assert (await a.delete("/deployments/shop")).status_code == 200
    assert (await edge(a, "/x")).status_code == 404


async def raw_get(port: int, target: str, host: str = HOST) -> tuple[int, bytes]:
    """One request with its target exactly as written (an HTTP client would normalize it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_an_ambiguous_path_is_refused_at_the_edge(two: tuple[Agent, Agent]) -> None:
    a, _ = two
    assert (await rule(a, name="p", host=HOST, path="/paid/*", price="$1")).status_code == 201
    port = a.rt.provision.edge_port
    assert port is not None
    for target in (
        "/paid%2fx",
        "/x/..%2fpaid/y",
        "/PAID/x",
        "//paid/x",
        "/x/../paid/y",
        "/./paid/x",
        "/paid;x/y",
    ):
        status, body = await raw_get(port, target)
        assert status in (400, 402), (target, status, body)
    assert (await raw_get(port, "/free"))[0] == 200
