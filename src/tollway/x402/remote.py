"""An external x402 facilitator, through the official facilitator API
(``POST {url}/verify``, ``POST {url}/settle``), in place of the built-in one.

The gateway calls it exactly as it calls the built-in facilitator. A payment
it settles is recorded in tollway's ledger like an on-chain one: a transfer
from ``x402_external_inbound`` to revenue, keyed by the authorization, with
its usage event. A facilitator that does not answer, or answers other than
HTTP 200, fails the payment with ``unexpected_verify_error`` or
``unexpected_settle_error``: nothing is forwarded (verify) or recorded (settle).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tollway.core.clock import Clock
from tollway.core.lazy import aiohttp_client_error
from tollway.ledger import Ledger
from tollway.x402 import exact_evm, upto_evm, wire
from tollway.x402.config import X402Config
from tollway.x402.earnings import Credit
from tollway.x402.exact_evm import Authorization
from tollway.x402.facilitator import Checked
from tollway.x402.payments import record_received
from tollway.x402.upto_evm import Permit
from tollway.x402.wire import PaymentInvalid

if TYPE_CHECKING:  # aiohttp is imported on first use: start-up stays fast
    import aiohttp

log = logging.getLogger("tollway.x402")

INBOUND_ACCOUNT = "x402_external_inbound"


class RemoteFacilitator:
    def __init__(self, url: str, cfg: X402Config, ledger: Ledger, clock: Clock) -> None:
        self.url = url.rstrip("/")
        self.cfg = cfg
        self.ledger = ledger
        self.clock = clock
        self.network = cfg.network
        self._session: aiohttp.ClientSession | None = None
        self._address: str | None = None  # its upto facilitatorAddress, once known
        self._asked = False  # its /supported answered (with or without upto)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=90, sock_connect=10),
            )
        return self._session

    @property
    def address(self) -> str | None:
        """The external facilitator's upto address, once its ``/supported`` named it."""
        return self._address

    async def upto_address(self) -> str | None:
        """The ``facilitatorAddress`` its ``/supported`` gives for upto on
        ``network`` (asked until it answers, then kept); None: it settles no upto."""
        if self._address is None and not self._asked:
            try:
                async with self.session.get(self.url + "/supported") as r:
                    out = await r.json(content_type=None) if r.status == 200 else None
            except (aiohttp_client_error(), TimeoutError, ValueError):
                return None
            self._asked = out is not None
            kinds = out.get("kinds") if isinstance(out, dict) else None
            for k in kinds if isinstance(kinds, list) else []:
                if not isinstance(k, dict) or (k.get("scheme"), k.get("network")) != (
                    upto_evm.SCHEME,
                    self.network,
                ):
                    continue
                extra = k.get("extra")
                found = extra.get("facilitatorAddress") if isinstance(extra, dict) else None
                self._address = found if exact_evm.is_address(found) else None
        return self._address

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, path: str, payload: Any, requirements: Any, failure: str) -> dict[str, Any]:
        version = payload.get("x402Version") if isinstance(payload, dict) else None
        body = {"x402Version": version, "paymentPayload": payload, "paymentRequirements": requirements}
        try:
            async with self.session.post(self.url + path, json=body) as r:
                text = await r.text()
                if r.status != 200:
                    raise PaymentInvalid(failure, f"the facilitator answered {r.status}: {text[:200]}")
                out = await r.json(content_type=None)
        except (aiohttp_client_error(), TimeoutError, ValueError) as e:
            raise PaymentInvalid(failure, f"the facilitator did not answer: {type(e).__name__}") from None
        if not isinstance(out, dict):
            raise PaymentInvalid(failure, "the facilitator's answer is not a JSON object")
        return out

    async def check(self, payload: Any, requirements: Any) -> Checked:
        """Verify through the external facilitator (raises ``PaymentInvalid``)."""
        if not isinstance(payload, dict) or not isinstance(requirements, dict):
            raise PaymentInvalid(wire.INVALID_PAYLOAD, "payload and requirements must be objects")
        scheme = requirements.get("scheme")
        auth = (Permit if scheme == upto_evm.SCHEME else Authorization).parse(payload.get("payload"))
        out = await self._call("/verify", payload, requirements, wire.UNEXPECTED_VERIFY)
        if out.get("isValid") is not True:
            raise _refusal(out, "invalidReason", "invalidMessage", wire.INVALID_PAYLOAD, auth.payer)
        version = int(payload.get("x402Version") or 2)
        amount = wire.uint(
            requirements, "amount" if version == 2 else "maxAmountRequired", wire.INVALID_REQUIREMENTS
        )
        network = str(requirements.get("network"))
        return Checked(version, network, str(requirements.get("payTo")), amount, auth, "", None, str(scheme))

    async def settle(
        self,
        payload: Any,
        requirements: Any,
        resource: str | None = None,
        checked: Checked | None = None,
        credit: Credit | None = None,
        *,
        amount: int | None = None,
    ) -> dict[str, Any]:
        """Settle through the external facilitator, then record it in the ledger.
        ``amount``: what an upto permit settles (sent as the requirements' amount,
        as the official resource server's settlement override does)."""
        network = str(requirements.get("network") if isinstance(requirements, dict) else self.network)
        try:
            c = checked or await self.check(payload, requirements)
            if amount is not None and isinstance(c.auth, Permit):
                requirements = {**requirements, "amount": str(upto_evm.settle_amount(c.auth, amount))}
            moved = c.amount if amount is None else amount
            out = await self._call("/settle", payload, requirements, wire.UNEXPECTED_SETTLE)
            if out.get("success") is not True:
                raise _refusal(out, "errorReason", "errorMessage", wire.UNEXPECTED_SETTLE, c.auth.payer)
            tx = str(out.get("transaction") or "")
            meta = {
                "network": c.network,
                "asset": self.cfg.asset,
                "resource": resource or "",
                "x402_version": c.version,
            }
            meta["facilitator"] = self.url
            if moved:  # an upto permit settled for nothing moved nothing
                await record_received(
                    self.ledger,
                    INBOUND_ACCOUNT,
                    c.network,
                    self.cfg.asset,
                    c.auth,
                    c.pay_to,
                    tx,
                    meta,
                    credit,
                    amount=moved,
                )
        except PaymentInvalid as e:
            return wire.settle_failed(e, network)
        return wire.settled(c.auth.payer, tx, network, moved)


def _refusal(
    out: dict[str, Any], reason_key: str, message_key: str, fallback: str, payer: str
) -> PaymentInvalid:
    """The external facilitator's refusal, with its reason code (or ``fallback``)."""
    reason = out.get(reason_key)
    code = reason if isinstance(reason, str) and reason else fallback
    return PaymentInvalid(code, str(out.get(message_key) or code), payer)
