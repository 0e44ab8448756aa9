"""The limits an authorization must fit, named as ledger limits
(:mod:`tollway.charge.limits`): each spending limit of the wallet's policy
per period (daily, weekly, monthly, yearly, all-time; per category when it
says so), the monthly cap of each provider it pays, and the token's total
allowance and its own spending limits (a budget request's). Each is a
``budget`` account funded from ``sys_wallet_limits``, so the ledger decides
every limit in the same batch as the money."""

from __future__ import annotations

from dataclasses import dataclass, field

from tollway.charge.hold import Cap
from tollway.charge.limits import Limit, LimitAccounts
from tollway.core.clock import Clock
from tollway.ledger import Ledger
from tollway.wallets.decision import request_hash
from tollway.wallets.policy import Policy, SpendingLimit
from tollway.wallets.screening import applies
from tollway.wallets.store import AgentToken, Wallet, allowance_account

LIMITS = "sys_wallet_limits"
REFUSED = "spending_limit_exceeded"
_DAY_US = 86_400_000_000


@dataclass
class WalletCaps:
    ledger: Ledger
    clock: Clock
    limits: LimitAccounts = field(init=False)
    # The caps by wallet, token, payee, category and UTC day (every period's
    # name follows from the day), with the policy they were made for: funded
    # once, then no work per decision.
    _caps: dict[tuple[str, str, str, str, int], tuple[Policy, tuple[Cap, ...]]] = field(
        init=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        self.limits = LimitAccounts(self.ledger, self.clock)

    async def caps(
        self, token: AgentToken, wallet: Wallet, payee: str, category: str, also: tuple[str, ...] = ()
    ) -> tuple[Cap, ...]:
        """The limit accounts an authorization must also fit, funded and ready:
        each spending limit, the provider cap of each payee, the token's allowance."""
        now = self.clock.now_us()
        own = token.limits.total_allowance is not None or token.limits.spending_limits
        allowance = token.id if own else ""
        payees = " ".join((payee, *also))
        key = (wallet.id, allowance, payees, category, now // _DAY_US)
        hit = self._caps.get(key)
        if hit is not None and hit[0] is wallet.policy:
            return hit[1]
        caps = await self._make(token, wallet, (payee, *also), category)
        if len(self._caps) > 10_000:
            self._caps.clear()
        self._caps[key] = (wallet.policy, caps)
        return caps

    async def _make(
        self, token: AgentToken, wallet: Wallet, payees: tuple[str, ...], category: str
    ) -> tuple[Cap, ...]:
        periods = self.limits.periods()
        out = await self._periodic(
            wallet, wallet.policy.spending_limits, category, f"wl_{wallet.id}", "wallet"
        )
        for payee in dict.fromkeys(payees):
            acct = f"wp_{wallet.id}_{request_hash(payee)[:8]}_{periods['monthly']}"
            name = f"monthly cap for provider {payee}"
            cap = wallet.policy.cap_for(payee)
            out.append(
                await self.limits.cap(Limit(acct, cap, name, LIMITS, wallet.customer_id, code=REFUSED))
            )
        out += await self._periodic(
            wallet, token.limits.spending_limits, category, f"wtl_{token.id}", "agent token's"
        )
        if token.limits.total_allowance is not None:
            # A lifetime limit, funded once when the token was granted (Wallets.grant).
            name = "agent token's total allowance"
            out.append(
                Limit(
                    allowance_account(token.id), token.limits.total_allowance, name, LIMITS, code=REFUSED
                ).cap()
            )
        return tuple(out)

    async def _periodic(
        self, wallet: Wallet, limits: list[SpendingLimit], category: str, scope: str, whose: str
    ) -> list[Cap]:
        """The caps of spending limits per period (the wallet's, or a token's own)."""
        periods = self.limits.periods()
        out = []
        for sl in limits:
            if sl.interval == "per_authorization" or not applies(sl, category):
                continue
            tag = request_hash(sl.interval, sl.categories)[:8]
            acct = f"{scope}_{tag}_{periods[sl.interval]}"
            name = f"{whose} {sl.interval} spending limit"
            out.append(
                await self.limits.cap(Limit(acct, sl.amount, name, LIMITS, wallet.customer_id, code=REFUSED))
            )
        return out
