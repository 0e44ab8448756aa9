"""The AI binding's credential: one agent token per deployment, of the
deployment's wallet, limited to the ``ai_inference`` category.

It is minted on the deployment's first AI call, its secret sealed at rest with
the wallet key (``Wallets.seal``: AES-256-GCM, the deployment id as associated
data) in ``provision_ai_bindings``; without a wallet key the secret is held in
this process only, and a process that does not hold it mints a new token and
revokes the old. Deleting (or reaping) the deployment revokes the token. The
app never sees it: the binding adds it to each request it forwards.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import forbidden, not_found
from tollway.core.schema import provision_ai_bindings as B
from tollway.core.schema import provision_deployments as P
from tollway.core.storage import writer
from tollway.wallets.store import Wallets

log = logging.getLogger("tollway.provision")

CATEGORY = "ai_inference"


class BindingTokens:
    def __init__(self, engine: AsyncEngine, clock: Clock, wallets: Wallets) -> None:
        self.engine, self.clock, self.wallets = engine, clock, wallets
        self._secrets: dict[str, str] = {}  # deployment id -> its token's secret
        self._locks: dict[str, asyncio.Lock] = {}

    async def bearer(self, deployment_id: str) -> str:
        """The secret of the deployment's binding token (minted on first use):
        404 ``deployment_not_found`` once the deployment is gone, 403
        ``ai_binding_revoked`` if the wallet's owner revoked the token."""
        secret = self._secrets.get(deployment_id)
        if secret is not None:
            return secret
        lock = self._locks.setdefault(deployment_id, asyncio.Lock())
        async with lock:
            secret = self._secrets.get(deployment_id)
            if secret is None:
                secret = self._secrets[deployment_id] = await self._load_or_mint(deployment_id)
            return secret

    async def _load_or_mint(self, deployment_id: str) -> str:
        async with self.engine.connect() as conn:
            dep = (
                await conn.execute(select(P.c.wallet_id, P.c.status).where(P.c.id == deployment_id))
            ).first()
            row = (await conn.execute(select(B).where(B.c.deployment_id == deployment_id))).first()
        if dep is None or dep.status != "active":
            raise not_found("deployment_not_found", f"no deployment {deployment_id!r}")
        if row is not None:
            token = await self.wallets.token(row.token_id)
            if token.revoked_at_us is not None:
                raise forbidden("ai_binding_revoked", "the deployment's AI binding token was revoked")
            sealed = row.sealed_secret
            opened = None if sealed is None else self.wallets.unseal(deployment_id, sealed)
            if opened is not None:
                return opened.decode()
        token, secret = await self.wallets.grant(
            dep.wallet_id, name=f"ai binding of {deployment_id}", limits={"categories": [CATEGORY]},
            actor="provision",
        )  # fmt: skip
        sealed = self.wallets.seal(deployment_id, secret.encode())
        values = {"token_id": token.id, "sealed_secret": sealed, "created_at_us": self.clock.now_us()}
        if row is not None:  # minted by a process that did not seal it: this one takes over
            async with writer(self.engine).begin() as conn:
                await conn.execute(update(B).where(B.c.deployment_id == deployment_id).values(**values))
            await self._revoke_token(row.token_id)
            return secret
        try:
            async with writer(self.engine).begin() as conn:
                await conn.execute(
                    insert(B), [{"deployment_id": deployment_id, "wallet_id": dep.wallet_id, **values}]
                )
        except IntegrityError:  # another process minted one first: use it
            await self._revoke_token(token.id)
            return await self._load_or_mint(deployment_id)
        if sealed is None:
            log.warning(
                "the AI binding of %s holds its token in memory only: set $%s to seal it at rest",
                deployment_id, self.wallets.key_env,
            )  # fmt: skip
        return secret

    async def _revoke_token(self, token_id: str) -> None:
        token = await self.wallets.token(token_id)
        if token.revoked_at_us is None:
            await self.wallets.revoke(token_id, actor="provision")

    async def revoke(self, deployment_id: str) -> None:
        """The deployment is gone: its token stops working (kept, revoked, for the audit trail)."""
        self._secrets.pop(deployment_id, None)
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(B.c.token_id).where(B.c.deployment_id == deployment_id))).first()
        if row is not None:
            await self._revoke_token(row.token_id)

    async def token_id(self, deployment_id: str) -> str | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(B.c.token_id).where(B.c.deployment_id == deployment_id))).first()
        return None if row is None else str(row.token_id)
