"""``tollway stripe sync`` against the stand-in: the catalog made from the plans,
idempotently (a second run writes nothing), and kept in step when plans change."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from stripe_standin import StripeStandIn
from stripe_support import PLANS, stripe_settings
from tollway.core.schema import stripe_objects as O
from tollway.runtime import Runtime


async def stored(rt: Runtime) -> dict[tuple[str, str], str]:
    async with rt.engine.connect() as conn:
        return {
            (k, lid): sid for k, lid, sid in await conn.execute(select(O.c.kind, O.c.local_id, O.c.stripe_id))
        }


def actions(report: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {(r["kind"], r["local_id"]): r["action"] for r in report}


async def test_sync_makes_the_catalog_from_the_plans(srt: Runtime, standin: StripeStandIn) -> None:
    assert srt.stripe is not None
    report = await srt.stripe.sync()
    ids = await stored(srt)

    products = {p["id"]: p for p in standin.by_kind("product")}
    assert set(products) == {"tollway_free", "tollway_pro", "tollway_team", "tollway_payg"}
    assert products["tollway_pro"]["name"] == "Pro"
    assert products["tollway_pro"]["metadata"] == {"tollway_plan": "pro"}

    prices = {p["lookup_key"]: p for p in standin.by_kind("price")}
    assert set(prices) == {"pro", "team", "pro:neurons", "payg:neurons"}  # free has neither
    assert prices["pro"]["unit_amount"] == 2000 and prices["pro"]["recurring"]["usage_type"] == "licensed"
    assert prices["pro"]["recurring"]["interval"] == "month" and prices["pro"]["product"] == "tollway_pro"
    # $99.999 is not whole cents: unit_amount_decimal carries it exactly.
    assert prices["team"]["unit_amount"] is None and prices["team"]["unit_amount_decimal"] == "9999.9"
    meter = next(standin.by_kind("billing.meter"))
    assert meter["event_name"] == "tollway_neurons" and meter["default_aggregation"] == {"formula": "sum"}
    # $0.011 per 1,000 neurons is 0.0000011 cents per milli-neuron; payg's $0.02 is 0.000002.
    metered = prices["pro:neurons"]
    assert metered["recurring"] == {
        "interval": "month",
        "interval_count": 1,
        "meter": meter["id"],
        "usage_type": "metered",
        "trial_period_days": None,
    }
    assert Decimal(metered["unit_amount_decimal"]) == Decimal("0.0000011")
    assert Decimal(prices["payg:neurons"]["unit_amount_decimal"]) == Decimal("0.000002")

    features = {f["lookup_key"]: f["id"] for f in standin.by_kind("entitlements.feature")}
    assert set(features) == {"ai.chat", "ai.embeddings", "support.email"}  # "*" is skipped
    attached = {
        pid: {
            pf["entitlement_feature"]["lookup_key"]
            for pf in standin.by_kind("product_feature")
            if pf["id"] in standin._product_features.get(pid, [])
        }
        for pid in products
    }
    assert attached["tollway_pro"] == {"ai.chat", "ai.embeddings", "support.email"}
    assert attached["tollway_free"] == {"ai.chat"} and attached["tollway_team"] == set()

    assert ids[("meter", "tollway_neurons")] == meter["id"]
    assert ids[("product", "pro")] == "tollway_pro"
    assert ids[("price", "pro")] == prices["pro"]["id"]
    assert ids[("price", "pro:neurons")] == metered["id"]
    assert ids[("feature", "support.email")] == features["support.email"]
    assert all(r["action"] in ("created", "attached") for r in report)


async def test_a_second_sync_changes_nothing(srt: Runtime, standin: StripeStandIn) -> None:
    assert srt.stripe is not None
    await srt.stripe.sync()
    before_ids = await stored(srt)
    writes = len(standin.writes())
    report = await srt.stripe.sync()
    assert len(standin.writes()) == writes  # no POST, no DELETE
    assert {r["action"] for r in report} == {"unchanged"}
    assert await stored(srt) == before_ids


async def test_a_fresh_database_finds_what_stripe_has(
    srt: Runtime, standin: StripeStandIn, db_url: str
) -> None:
    """A new database (or a lost stripe_objects row) does not duplicate the catalog."""
    assert srt.stripe is not None
    await srt.stripe.sync()
    async with srt.engine.begin() as conn:
        await conn.execute(O.delete())
    counts = {
        k: len(list(standin.by_kind(k)))
        for k in ("product", "price", "billing.meter", "entitlements.feature")
    }
    writes = len(standin.writes())
    await srt.stripe.sync()
    assert {k: len(list(standin.by_kind(k))) for k in counts} == counts
    assert len(standin.writes()) == writes
    assert len(await stored(srt)) == 1 + 4 + 4 + 3  # meter, products, prices, features


async def test_changed_plans_update_stripe(db_url: str, standin: StripeStandIn) -> None:
    rt = Runtime.build(stripe_settings(db_url))
    assert rt.stripe is not None
    await rt.stripe.sync()
    old = {p["lookup_key"]: p["id"] for p in standin.by_kind("price")}
    await rt.close()

    plans = [dict(p) for p in PLANS]
    plans[1] = {**plans[1], "name": "Pro+", "price": "$25", "overage": False, "features": ["ai.chat"]}
    rt = Runtime.build(stripe_settings(db_url, plans))
    assert rt.stripe is not None
    try:
        got = actions(await rt.stripe.sync())
    finally:
        await rt.close()
    prices = {p["id"]: p for p in standin.by_kind("price")}
    assert got[("product", "pro")] == "updated"
    assert next(standin.by_kind("product")) and standin.objects["tollway_pro"]["name"] == "Pro+"
    # A price's amount cannot change: a new price takes the lookup key, the old one is archived.
    new_pro = next(p for p in prices.values() if p["lookup_key"] == "pro")
    assert new_pro["unit_amount"] == 2500 and new_pro["id"] != old["pro"]
    assert prices[old["pro"]]["active"] is False and prices[old["pro"]]["lookup_key"] is None
    # No more overage: the metered price is archived; dropped features are detached.
    assert prices[old["pro:neurons"]]["active"] is False
    assert got[("product_feature", "pro")] == "detached"
    left = {
        standin.objects[i]["entitlement_feature"]["lookup_key"]
        for i in standin._product_features["tollway_pro"]
    }
    assert left == {"ai.chat"}


def test_cli_sync_json(
    db_url: str, standin: StripeStandIn, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tollway.cli.main import app

    cfg = tmp_path / "tollway.toml"
    plans = "\n".join(
        f'[[billing.plans]]\nlookup_key = "{p["lookup_key"]}"\nprice = "{p.get("price", "$0")}"\n'
        f"overage = {'true' if p.get('overage') else 'false'}\n"
        f"features = {json.dumps(p.get('features', ['*']))}\n"
        for p in PLANS
    )
    cfg.write_text(
        f'[database]\nurl = "{db_url}"\nsqlite_synchronous = "NORMAL"\n'
        f'[billing]\ndefault_plan = "free"\n{plans}'
    )
    runner = CliRunner()
    r = runner.invoke(app, ["--config", str(cfg), "stripe", "sync", "--json"])
    assert r.exit_code == 0, r.output
    first = json.loads(r.output)
    assert first["object"] == "stripe_sync" and first["changed"] > 0
    r = runner.invoke(app, ["--config", str(cfg), "stripe", "sync", "--json"])
    assert json.loads(r.output)["changed"] == 0


def test_cli_without_stripe_says_so(db_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tollway.cli.main import app

    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    cfg = tmp_path / "tollway.toml"
    cfg.write_text(f'[database]\nurl = "{db_url}"\n')
    r = CliRunner().invoke(app, ["--config", str(cfg), "stripe", "sync", "--json"])
    assert r.exit_code == 1
    assert json.loads(r.output)["error"]["code"] == "stripe_not_configured"
