"""The AI binding's credential: one agent token per deployment, of its wallet,
limited to ai_inference, minted once even when processes race, its secret
sealed at rest (bound to the deployment), refused once the owner revokes it
or the deployment is gone."""

from __future__ import annotations

import asyncio
import base64
import secrets
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy import insert, select, update

from conftest import settings_for
from tollway.core.errors import TollwayError
from tollway.core.schema import provision_ai_bindings as B
from tollway.core.schema import provision_deployments as P
from tollway.core.storage import writer
from tollway.provision.ai_tokens import CATEGORY, BindingTokens
from tollway.runtime import Runtime
from tollway.wallets import keys

MASTER = secrets.token_bytes(32)


@pytest.fixture
def sealed(monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setenv("TOLLWAY_WALLET_KEY", base64.b64encode(MASTER).decode())
    return MASTER


@pytest.fixture
def unsealed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOLLWAY_WALLET_KEY", raising=False)


async def _deployment(rt: Runtime, name: str = "app") -> tuple[str, str]:
    w = await rt.wallets.create(owner="ops")
    dep = f"dep_{name}"
    row: dict[str, Any] = {
        "id": dep, "name": name, "wallet_id": w.id, "provider": "local", "live_version": 1,
        "hostnames": "[]", "status": "active", "last_request_at_us": 0, "created_at_us": 0,
        "updated_at_us": 0,
    }  # fmt: skip
    async with writer(rt.engine).begin() as conn:
        await conn.execute(insert(P), [row])
    return w.id, dep


def _tokens(rt: Runtime) -> BindingTokens:
    return BindingTokens(rt.engine, rt.clock, rt.wallets)


async def _row(rt: Runtime, dep: str) -> Any:
    async with rt.engine.connect() as conn:
        return (await conn.execute(select(B).where(B.c.deployment_id == dep))).first()


async def test_one_token_of_the_wallet_for_ai_inference_sealed_at_rest(rt: Runtime, sealed: bytes) -> None:
    wallet, dep = await _deployment(rt)
    t = _tokens(rt)
    got = await asyncio.gather(*[t.bearer(dep) for _ in range(5)])
    assert len(set(got)) == 1
    secret = got[0]
    token, w = await rt.wallets.verify(secret)
    assert w.id == wallet and token.limits.categories == [CATEGORY] and token.revoked_at_us is None
    row = await _row(rt, dep)
    assert row.token_id == token.id and secret not in row.sealed_secret
    assert keys.open_sealed(sealed, dep, row.sealed_secret).decode() == secret
    with pytest.raises(InvalidTag):  # bound to its deployment: copied onto another row, it does not open
        keys.open_sealed(sealed, "dep_other", row.sealed_secret)
    assert await _tokens(rt).bearer(dep) == secret  # another process: the same token, unsealed
    assert [x.id for x in await rt.wallets.tokens(wallet)] == [token.id]


async def test_without_a_wallet_key_the_secret_stays_in_memory(rt: Runtime, unsealed: None) -> None:
    _, dep = await _deployment(rt)
    first = await _tokens(rt).bearer(dep)
    row = await _row(rt, dep)
    assert row.sealed_secret is None
    second = await _tokens(rt).bearer(dep)  # a process that does not hold it mints anew
    assert second != first
    old, _ = await rt.wallets.verify(first)
    new, _ = await rt.wallets.verify(second)
    assert old.revoked_at_us is not None and new.revoked_at_us is None
    assert (await _row(rt, dep)).token_id == new.id


async def test_a_token_the_owner_revoked_is_not_replaced(rt: Runtime, sealed: bytes) -> None:
    _, dep = await _deployment(rt)
    t = _tokens(rt)
    token, _ = await rt.wallets.verify(await t.bearer(dep))
    await rt.wallets.revoke(token.id)
    with pytest.raises(TollwayError) as e:
        await _tokens(rt).bearer(dep)
    assert (e.value.status, e.value.code) == (403, "ai_binding_revoked")


async def test_revoked_with_its_deployment_and_none_for_a_gone_one(rt: Runtime, sealed: bytes) -> None:
    _, dep = await _deployment(rt)
    t = _tokens(rt)
    token, _ = await rt.wallets.verify(await t.bearer(dep))
    async with writer(rt.engine).begin() as conn:
        await conn.execute(update(P).where(P.c.id == dep).values(status="deleted"))
    await t.revoke(dep)
    assert (await rt.wallets.token(token.id)).revoked_at_us is not None
    await t.revoke(dep)  # twice: nothing more
    for d in (dep, "dep_never"):
        with pytest.raises(TollwayError) as e:
            await t.bearer(d)
        assert (e.value.status, e.value.code) == (404, "deployment_not_found")


async def test_processes_racing_mint_one_token(db_url: str, sealed: bytes) -> None:
    """Two runtimes (as two processes) on one database ask at once: one token lives."""
    rts = [Runtime.build(settings_for(db_url)) for _ in range(2)]
    try:
        wallet, dep = await _deployment(rts[0])
        got = await asyncio.gather(*[_tokens(r).bearer(dep) for r in rts for _ in range(3)])
        assert len(set(got)) == 1
        live = [x for x in await rts[0].wallets.tokens(wallet) if x.revoked_at_us is None]
        assert [x.id for x in live] == [(await _row(rts[0], dep)).token_id]
    finally:
        for r in rts:
            await r.close()
