"""An agent token as the bearer of an AI request (chat, embeddings, responses,
messages, agent turns): the request is charged to the token's wallet through
the normal charge path, under category ``ai_inference``, payee ``tollway``.

The token must be live (a revoked, expired or frozen one is a 401), and the
wallet's policy must allow the category and the payee (the same screening an
authorization meets, else 403). Who pays is a :class:`Payer` whose source is
the wallet's account and whose caps are the wallet's limits for this
category and payee (each spending limit, the provider cap for ``tollway``,
the token's total allowance: :mod:`tollway.wallets.caps`), so the call's
reservation is refused before anything is served when any would be
exceeded, in any number of processes. The money goes where every AI charge
goes (the charger's revenue account).

No wallet authorization record is written per request (it would add a write
to every call): the charge's usage event, committed with its ledger
transfer, carries ``category``, ``wallet_id`` and ``token_id``, so every
figure is still read from ledger transfers."""

from __future__ import annotations

from tollway.charge.hold import Payer, Source
from tollway.core.errors import forbidden, payment, unauthenticated
from tollway.identity.keys import ApiKey
from tollway.wallets.authorize import Authorizer
from tollway.wallets.decision import Decision
from tollway.wallets.screening import screen, token_state

PREFIX = "tw_agt_"  # how an agent token starts: API keys never do
CATEGORY = "ai_inference"
PAYEE = "tollway"
SCOPES = ["inference", "agents"]


def is_agent_token(presented: str) -> bool:
    return presented.startswith(PREFIX)


async def agent_key(authorizer: Authorizer, presented: str) -> ApiKey:
    """The request's identity for an agent token, with its wallet as the payer."""
    token, wallet = await authorizer.wallets.verify(presented)
    now = authorizer.clock.now_us()
    dead = token_state(token, wallet, now)
    if dead is not None:
        code = "token_frozen" if dead[0] == "velocity_limit" else dead[0]
        raise unauthenticated(code, dead[1])
    if token.limits.single_use:  # made for one payment: not a standing line of credit for calls
        raise forbidden("single_use_token", "a single-use agent token cannot pay for AI requests")
    probe = Decision(
        "", wallet.id, token.id, "", "", 1, "usd", PAYEE, CATEGORY, "declined", None, [], 0, 0, "", now, now
    )
    reason, message = screen(token, wallet, probe, now)
    if reason is not None:
        raise forbidden(reason, message)
    floor, why = await authorizer.autopilot.floor_refusal(wallet, 1)  # the owner's spend floor
    if floor is not None:
        raise payment(floor, why)
    caps = await authorizer.caps.caps(token, wallet, PAYEE, CATEGORY)
    payer = Payer(wallet.account_id, wallet.customer_id, (Source(wallet.account_id),), caps)
    return ApiKey(
        token.id,
        wallet.customer_id or wallet.id,
        token.prefix,
        f"agent token {token.name}".strip(),
        SCOPES,
        token.created_at_us,
        None,
        account_id=wallet.account_id,
        payer=payer,
        tags=(("category", CATEGORY), ("payee", PAYEE), ("wallet_id", wallet.id), ("token_id", token.id)),
    )
