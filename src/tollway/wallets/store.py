"""Wallets and their delegated agent tokens.

A wallet is owned by a principal (a customer, or a human named by the
operator) and holds micro-USD in a ``wallet`` ledger account, funded by
top-up transfers. It may hold an EVM signing key, encrypted at rest
(:mod:`tollway.wallets.keys`), used by the broker to pay x402 resources.

An agent token (``tw_agt_<prefix>_<secret>``) is shown once and stored as a
SHA-256 hash; it carries a subset of the wallet's policy
(:class:`~tollway.wallets.policy.TokenLimits`) and can be revoked, frozen
(by the runaway-loop guard) and unfrozen (only by a human).
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import TollwayError, conflict, invalid, not_found, unauthenticated
from tollway.core.ids import new_id
from tollway.core.money import parse_amount
from tollway.core.pointread import PointReader
from tollway.core.schema import agent_tokens as T
from tollway.core.schema import customers as C
from tollway.core.schema import wallets as W
from tollway.core.storage import writer
from tollway.identity.keys import random_string, sha256_hex
from tollway.ledger import Ledger
from tollway.wallets import keys
from tollway.wallets.audit import Audit
from tollway.wallets.policy import Policy, TokenLimits

_TOKEN = re.compile(r"^tw_agt_([a-z0-9]{12})_([a-z0-9]{32})$")


def policy_error(e: ValidationError, param: str) -> Exception:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return invalid(f"invalid_{param}", f"{param}.{where}: {msg}" if where else f"{param}: {msg}", param)


@dataclass(frozen=True, slots=True)
class Wallet:
    id: str
    owner: str
    customer_id: str | None
    account_id: str
    policy: Policy
    evm_address: str | None
    created_at_us: int
    # Its autopilot settings (JSON) as read with a token (``verify``): "" for
    # none; None where not read (the autopilot reads them itself).
    autopilot: str | None = None

    def to_dict(self, balance: int | None = None, available: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "object": "wallet",
            "id": self.id,
            "owner": self.owner,
            "customer_id": self.customer_id,
            "account_id": self.account_id,
            "policy": self.policy.model_dump(),
            "evm_address": self.evm_address,
            "currency": self.policy.currency,
            "created_at_us": self.created_at_us,
        }
        if balance is not None:
            d["balance"], d["available"] = balance, available
        return d


@dataclass(frozen=True, slots=True)
class AgentToken:
    id: str
    wallet_id: str
    prefix: str
    name: str
    limits: TokenLimits
    created_at_us: int
    revoked_at_us: int | None
    frozen_at_us: int | None
    frozen_reason: str | None
    used_at_us: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "agent_token",
            "id": self.id,
            "wallet_id": self.wallet_id,
            "prefix": self.prefix,
            "name": self.name,
            "limits": self.limits.model_dump(),
            "created_at_us": self.created_at_us,
            "revoked": self.revoked_at_us is not None,
            "frozen": self.frozen_at_us is not None,
            "frozen_reason": self.frozen_reason,
            "used": self.used_at_us is not None,
        }


_WCOLS = (W.c.id, W.c.owner, W.c.customer_id, W.c.account_id, W.c.policy, W.c.evm_address, W.c.created_at_us)
_TCOLS = (
    T.c.id,
    T.c.wallet_id,
    T.c.prefix,
    T.c.name,
    T.c.limits,
    T.c.created_at_us,
    T.c.revoked_at_us,
    T.c.frozen_at_us,
    T.c.frozen_reason,
    T.c.used_at_us,
)


def _wallet(r: Any) -> Wallet:
    return Wallet(r[0], r[1], r[2], r[3], Policy.model_validate_json(r[4]), r[5], r[6])


def _token(r: Any) -> AgentToken:
    return AgentToken(r[0], r[1], r[2], r[3], TokenLimits.model_validate_json(r[4]), *r[5:10])


# The authorization path's one point read: the token and its wallet.
_VERIFY = (
    "SELECT t.id, t.wallet_id, t.prefix, t.name, t.limits, t.created_at_us, t.revoked_at_us,"
    " t.frozen_at_us, t.frozen_reason, t.used_at_us, t.secret_hash,"
    " w.id, w.owner, w.customer_id, w.account_id, w.policy, w.evm_address, w.created_at_us, a.settings"
    " FROM agent_tokens t JOIN wallets w ON w.id = t.wallet_id"
    " LEFT JOIN wallet_autopilot a ON a.wallet_id = w.id WHERE t.prefix = ?"
)


def allowance_account(token_id: str) -> str:
    """The ``budget`` account holding a token's total allowance: a limit for
    the token's lifetime, funded when it is granted (see wallets/caps.py)."""
    return f"wt_{token_id}"


class Wallets:
    def __init__(self, engine: AsyncEngine, ledger: Ledger, clock: Clock, audit: Audit, key_env: str) -> None:
        self.engine = engine
        self.ledger = ledger
        self.clock = clock
        self.audit = audit
        self.key_env = key_env
        self.reads = PointReader(engine)
        self._policies: dict[str, Policy] = {}  # policy JSON → parsed (the request path)
        self._limits: dict[str, TokenLimits] = {}

    # ------------------------------------------------------------------ wallets

    async def create(
        self,
        *,
        customer_id: str | None = None,
        owner: str | None = None,
        policy: dict[str, Any] | None = None,
        with_key: bool = False,
        actor: str = "admin",
    ) -> Wallet:
        if (customer_id is None) == (owner is None):
            raise invalid("invalid_owner", "a wallet is owned by a customer_id or by a named owner", "owner")
        if owner is not None and (not isinstance(owner, str) or not owner.strip() or len(owner) > 200):
            raise invalid("invalid_owner", "owner is 1-200 characters", "owner")
        try:
            pol = Policy.model_validate(policy or {})
        except ValidationError as e:
            raise policy_error(e, "policy") from None
        wid = new_id("wal")
        address = sealed = None
        if with_key:
            from eth_account import Account

            master = keys.master_key(self.key_env)
            acct = Account.create()
            address, sealed = acct.address, keys.seal(master, wid, bytes(acct.key))
        if customer_id is not None:
            async with self.engine.connect() as conn:
                if (await conn.execute(select(C.c.id).where(C.c.id == customer_id))).first() is None:
                    raise not_found("customer_not_found", f"no customer {customer_id!r}", "customer_id")
        account = await self.ledger.create_account(
            "wallet", id=f"wallet_{wid}", customer_id=customer_id, name=f"wallet {wid}"
        )
        now = self.clock.now_us()
        row = {
            "id": wid,
            "owner": owner or customer_id,
            "customer_id": customer_id,
            "account_id": account.id,
            "policy": pol.model_dump_json(),
            "evm_address": address,
            "evm_key": sealed,
            "created_at_us": now,
            "updated_at_us": now,
        }
        async with writer(self.engine).begin() as conn:
            await conn.execute(insert(W), [row])
        await self.audit.write([self.audit.row(wid, "wallet_created", actor=actor, owner=row["owner"])])
        return Wallet(wid, str(row["owner"]), customer_id, account.id, pol, address, now)

    async def get(self, wallet_id: str) -> Wallet:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(*_WCOLS).where(W.c.id == wallet_id))).first()
        if r is None:
            raise not_found("wallet_not_found", f"no wallet {wallet_id!r}", "wallet_id")
        return _wallet(r)

    async def all(self, customer_id: str | None = None) -> list[Wallet]:
        q = select(*_WCOLS).order_by(W.c.id)
        if customer_id is not None:
            q = q.where(W.c.customer_id == customer_id)
        async with self.engine.connect() as conn:
            return [_wallet(r) for r in await conn.execute(q)]

    async def balance(self, w: Wallet) -> tuple[int, int]:
        a = await self.ledger.get_account(w.account_id)
        return a.balance, a.available

    async def topup(
        self, wallet_id: str, amount: object, *, source: str | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Fund a wallet: from its customer's prepaid account by default, or from
        ``source`` (e.g. ``sys_funding`` for money arriving from outside)."""
        micros = parse_amount(amount)
        w = await self.get(wallet_id)
        if source is None:
            if w.customer_id is None:
                source = "sys_funding"
            else:
                async with self.engine.connect() as conn:
                    r = (await conn.execute(select(C.c.account_id).where(C.c.id == w.customer_id))).first()
                assert r is not None
                source = str(r[0])
        t = await self.ledger.transfer(
            source, w.account_id, micros, description=f"wallet {w.id} top-up", idempotency_key=idempotency_key
        )
        await self.audit.write([self.audit.row(w.id, "topup", amount=micros, source=source, transfer=t.id)])
        bal, _ = await self.balance(w)
        return {
            "object": "wallet_topup",
            "wallet_id": w.id,
            "amount": micros,
            "transfer_id": t.id,
            "balance": bal,
        }

    async def set_policy(self, wallet_id: str, policy: dict[str, Any], actor: str = "admin") -> Wallet:
        try:
            pol = Policy.model_validate(policy)
        except ValidationError as e:
            raise policy_error(e, "policy") from None
        await self.get(wallet_id)
        async with writer(self.engine).begin() as conn:
            await conn.execute(
                update(W)
                .where(W.c.id == wallet_id)
                .values(policy=pol.model_dump_json(), updated_at_us=self.clock.now_us())
            )
        await self.audit.write(
            [self.audit.row(wallet_id, "policy_updated", actor=actor, policy=pol.model_dump())]
        )
        return await self.get(wallet_id)

    async def ensure_address(self, wallet_id: str) -> str:
        """The wallet's EVM address (where its x402 earnings are paid), made with
        its signing key, sealed as for ``with_key``, the first time it is asked;
        concurrent first asks agree on one."""
        w = await self.get(wallet_id)
        if w.evm_address is not None:
            return w.evm_address
        from eth_account import Account

        acct = Account.create()
        sealed = keys.seal(keys.master_key(self.key_env), wallet_id, bytes(acct.key))
        async with writer(self.engine).begin() as conn:
            made = await conn.execute(
                update(W)
                .where(W.c.id == wallet_id, W.c.evm_address.is_(None))
                .values(evm_address=acct.address, evm_key=sealed, updated_at_us=self.clock.now_us())
            )
        if made.rowcount:
            await self.audit.write([self.audit.row(wallet_id, "address_created", address=acct.address)])
        address = (await self.get(wallet_id)).evm_address
        assert address is not None
        return address

    async def signing_key(self, wallet_id: str) -> bytes:
        """The wallet's EVM private key, decrypted (the broker's use only)."""
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(W.c.evm_key).where(W.c.id == wallet_id))).first()
        if r is None:
            raise not_found("wallet_not_found", f"no wallet {wallet_id!r}", "wallet_id")
        if r[0] is None:
            raise conflict("wallet_has_no_key", "this wallet holds no signing key (create it with_key)", None)
        return keys.open_sealed(keys.master_key(self.key_env), wallet_id, r[0])

    def seal(self, bound_to: str, secret: bytes) -> str | None:
        """``secret`` encrypted with the wallet key, bound to ``bound_to`` (it opens only
        with that name); None when no wallet key is configured."""
        try:
            master = keys.master_key(self.key_env)
        except TollwayError:
            return None
        return keys.seal(master, bound_to, secret)

    def unseal(self, bound_to: str, sealed: str) -> bytes | None:
        """What :meth:`seal` sealed; None when no wallet key is configured."""
        try:
            master = keys.master_key(self.key_env)
        except TollwayError:
            return None
        return keys.open_sealed(master, bound_to, sealed)

    # ------------------------------------------------------------------- tokens

    async def grant(
        self, wallet_id: str, *, name: str = "", limits: dict[str, Any] | None = None, actor: str = "admin"
    ) -> tuple[AgentToken, str]:
        """Issue a token for one agent; returns it and its secret (shown once)."""
        lim = self.check_limits(limits or {}, name)
        issued = await self.issue(wallet_id, name=name, limits=lim, token_id=new_id("agt"), actor=actor)
        assert issued is not None  # no claim: always issued
        return issued

    def check_limits(self, limits: dict[str, Any], name: str = "") -> TokenLimits:
        """A token's limits, validated (400 ``invalid_limits``, ``invalid_name``)."""
        try:
            lim = TokenLimits.model_validate(limits)
        except ValidationError as e:
            raise policy_error(e, "limits") from None
        if not isinstance(name, str) or len(name) > 200:
            raise invalid("invalid_name", "name is at most 200 characters", "name")
        if lim.expires_at_us is not None and lim.expires_at_us <= self.clock.now_us():
            raise invalid("invalid_limits", "limits.expires_at_us is in the past", "limits")
        return lim

    async def issue(
        self,
        wallet_id: str,
        *,
        name: str,
        limits: TokenLimits,
        token_id: str,
        actor: str,
        claim: Callable[[AsyncConnection], Awaitable[bool]] | None = None,
        **audit: Any,
    ) -> tuple[AgentToken, str] | None:
        """Issue token ``token_id``. With ``claim``, the token's row is written in
        the transaction where ``claim`` runs, and only if it returns True (one
        issue of a budget request, however many read it at once): None if not.
        The allowance account is funded first, idempotently (by the token id)."""
        w = await self.get(wallet_id)
        lim = limits
        prefix = random_string(12)
        secret = f"tw_agt_{prefix}_{random_string(32)}"
        tid = token_id
        now = self.clock.now_us()
        if lim.total_allowance is not None:
            acct = allowance_account(tid)
            if await self.ledger.find_account(acct) is None:
                try:
                    await self.ledger.create_account("budget", id=acct, name=f"agent token {tid} allowance")
                except TollwayError as e:  # created meanwhile (a concurrent issue of the same token)
                    if e.code != "account_exists":
                        raise
            await self.ledger.transfer(
                "sys_wallet_limits",
                acct,
                lim.total_allowance,
                description="allowance",
                idempotency_key=f"allowance:{tid}",
            )
        row = {
            "id": tid,
            "wallet_id": w.id,
            "prefix": prefix,
            "secret_hash": sha256_hex(secret),
            "name": name,
            "limits": lim.model_dump_json(),
            "created_at_us": now,
            "revoked_at_us": None,
            "frozen_at_us": None,
            "frozen_reason": None,
            "used_at_us": None,
        }
        async with writer(self.engine).begin() as conn:
            if claim is not None and not await claim(conn):
                return None
            await conn.execute(insert(T), [row])
        await self.audit.write(
            [
                self.audit.row(
                    w.id, "token_granted", token_id=tid, actor=actor, limits=lim.model_dump(), **audit
                )
            ]
        )
        return AgentToken(tid, w.id, prefix, name, lim, now, None, None, None, None), secret

    async def tokens(self, wallet_id: str) -> list[AgentToken]:
        async with self.engine.connect() as conn:
            return [_token(r) for r in await conn.execute(select(*_TCOLS).where(T.c.wallet_id == wallet_id))]

    async def token(self, token_id: str) -> AgentToken:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(*_TCOLS).where(T.c.id == token_id))).first()
        if r is None:
            raise not_found("agent_token_not_found", f"no agent token {token_id!r}", "token_id")
        return _token(r)

    async def _set(self, token_id: str, event: str, actor: str, **values: Any) -> AgentToken:
        t = await self.token(token_id)
        async with writer(self.engine).begin() as conn:
            await conn.execute(update(T).where(T.c.id == token_id).values(**values))
        await self.audit.write([self.audit.row(t.wallet_id, event, token_id=token_id, actor=actor)])
        return await self.token(token_id)

    async def revoke(self, token_id: str, actor: str = "admin") -> AgentToken:
        t = await self.token(token_id)
        if t.revoked_at_us is not None:
            raise conflict("agent_token_revoked", f"agent token {token_id!r} is already revoked", "token_id")
        return await self._set(token_id, "token_revoked", actor, revoked_at_us=self.clock.now_us())

    async def freeze(self, token_id: str, reason: str) -> None:
        """Freeze a token at once (the runaway-loop guard): only a human unfreezes it."""
        t = await self.token(token_id)
        async with writer(self.engine).begin() as conn:
            await conn.execute(
                update(T)
                .where(T.c.id == token_id, T.c.frozen_at_us.is_(None))
                .values(frozen_at_us=self.clock.now_us(), frozen_reason=reason[:500])
            )
        await self.audit.write(
            [self.audit.row(t.wallet_id, "token_frozen", token_id=token_id, reason=reason)]
        )

    async def unfreeze(self, token_id: str, actor: str = "admin") -> AgentToken:
        t = await self.token(token_id)
        if t.frozen_at_us is None:
            raise conflict("agent_token_not_frozen", f"agent token {token_id!r} is not frozen", "token_id")
        return await self._set(token_id, "token_unfrozen", actor, frozen_at_us=None, frozen_reason=None)

    async def claim_single_use(self, token_id: str) -> bool:
        """Mark a single-use token used; False if another authorization took it first."""
        async with writer(self.engine).begin() as conn:
            r = await conn.execute(
                update(T)
                .where(T.c.id == token_id, T.c.used_at_us.is_(None))
                .values(used_at_us=self.clock.now_us())
            )
        return bool(r.rowcount)

    async def unclaim(self, token_id: str) -> None:
        async with writer(self.engine).begin() as conn:
            await conn.execute(update(T).where(T.c.id == token_id).values(used_at_us=None))

    async def verify(self, presented: str) -> tuple[AgentToken, Wallet]:
        """The token and its wallet, or 401 ``invalid_agent_token``. One point read;
        a revoked, frozen or expired token is returned for the caller to decline."""
        m = _TOKEN.match(presented or "") if isinstance(presented, str) else None
        if m is None:
            raise unauthenticated("invalid_agent_token", "invalid agent token (tw_agt_…)")
        r = await self.reads.one(_VERIFY, m.group(1))
        if r is None or not hmac.compare_digest(r[10], sha256_hex(presented)):
            raise unauthenticated("invalid_agent_token", "invalid agent token (tw_agt_…)")
        lim = self._limits.get(r[4])
        if lim is None:
            lim = self._limits[r[4]] = TokenLimits.model_validate_json(r[4])
        pol = self._policies.get(r[15])
        if pol is None:
            if len(self._policies) > 10_000:
                self._policies.clear()
            pol = self._policies[r[15]] = Policy.model_validate_json(r[15])
        token = AgentToken(r[0], r[1], r[2], r[3], lim, r[5], r[6], r[7], r[8], r[9])
        return token, Wallet(r[11], r[12], r[13], r[14], pol, r[16], r[17], r[18] or "")


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
