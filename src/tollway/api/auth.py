"""Who is calling: the admin token for /admin/*, an API key for /v1/*."""

from __future__ import annotations

import hmac

from fastapi import Request

from tollway.core.errors import forbidden, unauthenticated
from tollway.identity.keys import ApiKey, has_scope, presented_key, x402_caller
from tollway.runtime import Runtime
from tollway.wallets.ai_caller import agent_key, is_agent_token


def bearer(request: Request) -> str | None:
    return presented_key(request.headers)


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def require_admin(request: Request) -> None:
    expected = runtime(request).settings.admin.token
    if not expected:
        raise unauthenticated(
            "admin_disabled", "the admin API is disabled: set [admin] token in tollway.toml"
        )
    token = bearer(request)
    if token is None:
        raise unauthenticated("missing_admin_token", "send Authorization: Bearer <admin token>")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise unauthenticated("invalid_admin_token", "invalid admin token")


async def require_key(request: Request) -> ApiKey:
    payer = request.scope.get("x402_payer")
    if payer is not None:  # an AI route paid in full over x402 (tollway.x402.paywall)
        key = x402_caller(payer)
        request.state.api_key = key
        return key
    token = bearer(request)
    if token is None:
        raise unauthenticated("missing_api_key", "send Authorization: Bearer <API key>")
    if is_agent_token(token):  # an agent token: its wallet pays (tollway.wallets.ai_caller)
        key = await agent_key(runtime(request).authorizer, token)
    else:
        key = await runtime(request).keys.verify(token)
    request.state.api_key = key
    return key


def require_scope(key: ApiKey, scope: str) -> None:
    if not has_scope(key.scopes, scope):
        raise forbidden("missing_scope", f"this API key lacks the {scope!r} scope")
