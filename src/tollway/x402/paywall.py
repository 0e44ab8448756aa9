"""The monetization gateway: paid routes in front of any HTTP origin.

For a request a rule matches:

1. a caller with a valid API key passes free when the rule is
   ``unauthenticated_only``;
2. no payment: ``402`` with the requirements, for both protocol versions at
   once (v2 in the ``PAYMENT-REQUIRED`` header, v1 as the JSON body), or a
   paywall page for a browser (``Accept: text/html``);
3. a payment (v2 ``PAYMENT-SIGNATURE`` or v1 ``X-PAYMENT``) is verified by the
   facilitator, in-process; a bad one is a ``402`` naming the reason, and the
   request goes nowhere;
4. the request is forwarded to the origin (connections kept alive);
5. only if the origin answered below 400 is the payment settled; the
   response then streams back with the receipt (``PAYMENT-RESPONSE`` or
   ``X-PAYMENT-RESPONSE``). An origin failure settles nothing.

A rule may also offer ``upto`` (v2; AI routes do by default): the payer
authorizes the price as a maximum, and what was used is settled: an AI
request's metered cost (the calls book it on a :class:`~tollway.charge.prepaid.Tab`),
or the amount an origin names in a ``Settlement-Overrides`` response header
(the official SDK's convention), else the maximum. A streamed answer's cost is
known only at its end: it is settled after the last byte, and its receipt is
not in the headers (they left first).
"""

from __future__ import annotations

import asyncio
import contextvars
import html
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote

from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from tollway.charge import prepaid
from tollway.core.errors import TollwayError, invalid
from tollway.core.lazy import aiohttp_client_error
from tollway.core.responses import error_response
from tollway.identity.keys import ApiKey, ApiKeys, presented_key
from tollway.observe import tracing
from tollway.x402 import paths, upto_evm, wire
from tollway.x402.claims import Claims
from tollway.x402.config import X402Config
from tollway.x402.devnet import authorization_key
from tollway.x402.earnings import Credit
from tollway.x402.facilitator import V1_NAMES, Checked, Verifier
from tollway.x402.owned import Hosted, OwnedRule, OwnedRuleStore
from tollway.x402.paths import canonical
from tollway.x402.rules import Rule, Rules, atomic, price_of
from tollway.x402.rulestore import RuleStore
from tollway.x402.wire import PaymentInvalid

if TYPE_CHECKING:  # aiohttp is imported on first use: start-up stays fast
    import aiohttp

log = logging.getLogger("tollway.x402")

# Not forwarded either way: hop-by-hop headers, the payment itself, and the
# host (the origin gets its own).
_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    wire.PAYMENT_SIGNATURE,
    wire.X_PAYMENT,
}
SETTLEMENT_OVERRIDES = "settlement-overrides"  # an origin's amount to settle an upto payment for
# Never sent to an external origin: the caller's credentials for tollway (an API
# key in Authorization or x-api-key would reach a third party on an
# unauthenticated_only rule). Cookies: see _cookies.
_CREDENTIALS = {"authorization", "x-api-key"}
# Cookie names tollway reserves (it sets none today); other cookies are the origin's.
_OUR_COOKIES = ("tollway", "tw_")
Chunks = AsyncIterable[bytes]
_R = TypeVar("_R")
_READS_BODY = {"body", "body_kib", "ai_max_cost"}  # prices that depend on the request body


def _outgoing(request: Request, body: bytes | None) -> bytes | AsyncIterator[bytes] | None:
    """The body to send the origin: what was read, or the client's stream."""
    if body is not None:
        return body or None
    if request.method in ("GET", "HEAD") and "transfer-encoding" not in request.headers:
        if request.headers.get("content-length", "0") == "0":
            return None
    return request.stream()


class Paywall:
    def __init__(
        self,
        cfg: X402Config,
        rules: Rules,
        facilitator: Verifier,
        keys: ApiKeys,
        claims: Claims,
        store: RuleStore | None = None,
        owned: OwnedRuleStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_rules = rules
        self.rules = rules
        self.source = "config"  # or "imported": rules from the admin API replace the config's
        # Set by the runtime: does an API key's plan include a feature (tollway.billing)?
        self.entitled: Callable[[ApiKey, str], bool] | None = None
        self.store = store
        self.claims = claims
        self._version: tuple[int, int] | None = None
        # Agents' rules for hosts they own (the edge's; see owned.py).
        self.owned = owned
        self.hosted = Hosted([])
        self._owned_version: tuple[int, int] | None = None
        # Set by the app: the inference service's quote of an AI request's maximum
        # cost (micro-USD), and the app without its paywall, for origin = "self".
        self.quote: Callable[[str, Any], Awaitable[int]] | None = None
        self.inner: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None
        self.facilitator = facilitator
        self.keys = keys
        self._session: aiohttp.ClientSession | None = None
        self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
                auto_decompress=False,  # pass bodies through byte for byte
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def refresh(self) -> None:
        """Pick up rules imported through the admin API, and agents' rules (by any process)."""
        if self.owned is not None:
            ov = await self.owned.version()
            if ov != self._owned_version:
                self.hosted, self._owned_version = Hosted(await self.owned.load() if ov[0] else []), ov
        if self.store is None:
            return
        v = await self.store.version()
        if v == self._version:
            return
        imported = await self.store.load() if v[0] else []
        self.rules, self.source = (Rules(imported), "imported") if imported else (self.config_rules, "config")
        self._version = v
        self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        log.info("x402 rules: %d from %s", len(self.rules.rules), self.source)

    async def watch(self, interval_s: float = 2.0) -> None:
        """Refresh forever (the server runs this as a task)."""
        while True:
            try:
                await self.refresh()
            except Exception:  # keep serving the last good rules through a database blip
                log.exception("x402 rules refresh failed")
            await asyncio.sleep(interval_s)

    def match(self, scope: Scope) -> Rule | None:
        """The rule for this request, matched on its canonical path (``paths.py``),
        which is kept in ``scope["x402_path"]``: the path the origin gets. Raises
        ``invalid_path`` for an ambiguous path that a rule matches under either
        reading."""
        if not self.rules.rules:
            return None
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        return _matched(scope, lambda path: self.rules.match(scope["method"], path, host))

    def match_hosted(self, scope: Scope, host: str, wallet_id: str) -> OwnedRule | None:
        """:meth:`match` for the edge: the rule of ``wallet_id`` (the host's owner
        now) for ``host`` (normalized by the caller)."""
        return _matched(scope, lambda path: self.hosted.match(scope["method"], path, host, wallet_id))

    # ------------------------------------------------------------ requirements

    def requirements(self, rule: Rule, url: str, amount: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """(v2 PaymentRequirements, v1 PaymentRequirements) for this request."""
        pay_to = rule.pay_to or self.cfg.pay_to
        timeout = rule.max_timeout_seconds or self.cfg.max_timeout_seconds
        extra = {
            "name": rule.asset_name or self.cfg.asset_name,
            "version": rule.asset_version or self.cfg.asset_version,
        }
        network, asset = rule.network or self.cfg.network, rule.asset or self.cfg.asset
        v2 = {
            "scheme": "exact",
            "network": network,
            "asset": asset,
            "amount": str(amount),
            "payTo": pay_to,
            "maxTimeoutSeconds": timeout,
            "extra": extra,
        }
        v1 = {
            "scheme": "exact",
            "network": V1_NAMES.get(network, network),
            "maxAmountRequired": str(amount),
            "resource": url,
            "description": rule.description,
            "mimeType": rule.mime_type,
            "payTo": pay_to,
            "maxTimeoutSeconds": timeout,
            "asset": asset,
            "extra": extra,
        }
        return v2, v1

    def accepts(self, rule: Rule, v2: dict[str, Any], address: str | None) -> list[dict[str, Any]]:
        """The v2 offers of a request: ``exact`` at the price, ``upto`` with the
        price as its maximum (Permit2, naming ``address``, the facilitator that
        settles it; none without one), as the rule offers them."""
        out = []
        for scheme in rule.offered():
            if scheme == "exact":
                out.append(v2)
            elif address is not None:
                extra = {**v2["extra"], "assetTransferMethod": "permit2", "facilitatorAddress": address}
                out.append({**v2, "scheme": upto_evm.SCHEME, "extra": extra})
        return out

    def discovery(self, base_url: str, *, offset: int, limit: int, **filters: str | None) -> dict[str, Any]:
        """The paid routes in the bazaar's ``/discovery/resources`` format (a
        variable price lists its unit price)."""
        items = []
        for rule in self.rules.rules:
            unit = 0 if rule.price_by == "ai_max_cost" else atomic(rule.price, self.cfg.asset_decimals)
            v2, _ = self.requirements(rule, base_url + rule.path, unit)
            accepts = [
                a
                for a in self.accepts(rule, v2, self.facilitator.address)
                if not any(v and a.get(k) != v for k, v in filters.items())
            ]
            if not accepts:
                continue
            items.append(
                {
                    "resource": base_url + rule.path,
                    "type": "http",
                    "x402Version": 2,
                    "accepts": accepts,
                    "lastUpdated": self.loaded_at,
                    "description": rule.description,
                    "mimeType": rule.mime_type,
                    "metadata": {"methods": rule.methods, "priceBy": rule.price_by},
                }
            )
        page = items[offset : offset + limit]
        return {
            "x402Version": 2,
            "items": page,
            "pagination": {"limit": limit, "offset": offset, "total": len(items)},
        }

    # ------------------------------------------------------------------ serve

    async def proxy(self, scope: Scope, receive: Receive, send: Send, origin: str) -> None:
        """A request no rule prices, relayed to ``origin`` as it came (the edge's free routes)."""
        raw = scope.get("raw_path") or quote(scope["path"]).encode()
        scope["x402_path"] = raw.split(b"?", 1)[0].decode("latin-1")
        request = Request(scope, receive)
        await self._relay(send, *await self._to_url(origin, request, None))

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, rule: Rule, credit: Credit | None = None
    ) -> None:
        """Serve a request ``rule`` matched; ``credit``: an agent-owned rule, whose
        payment is the wallet's earnings (``earnings.py``)."""
        request = Request(scope, receive)
        # Only a price that depends on the body reads it first; otherwise the
        # body streams to the origin once the payment is verified.
        body = await request.body() if rule.price_by in _READS_BODY or rule.origin == "self" else None
        if rule.unauthenticated_only and await self._has_valid_key(request, rule.feature):
            await self._relay(send, *await self._forward(rule, request, body))
            return
        try:
            amount = await self._price(rule, scope, body)
        except TollwayError as e:  # a bad request (or AI request): its own error, before any payment
            await error_response(e)(scope, receive, send)
            return
        v2, v1 = self.requirements(rule, str(request.url), amount)
        upto = await self.facilitator.upto_address() if upto_evm.SCHEME in rule.offered() else None
        offers = Offers(self.accepts(rule, v2, upto), v1 if "exact" in rule.offered() else None)
        sig, xpay = request.headers.get(wire.PAYMENT_SIGNATURE), request.headers.get(wire.X_PAYMENT)
        if sig is None and xpay is None:
            await self._required(send, request, rule, offers, "Payment required")
            return
        version = 2 if sig is not None else 1
        try:
            payload = wire.decode(sig if sig is not None else xpay or "")
            if payload.get("x402Version") != version:
                raise PaymentInvalid(wire.INVALID_VERSION, f"this header carries x402 version {version}")
            reqs = offers.chosen(payload, version)
            with tracing.span("x402.verify") as sp:
                checked = await self.facilitator.check(payload, reqs)
                if sp is not None:
                    sp.set_attribute("tollway.x402.network", str(v2["network"]))
                    sp.set_attribute("tollway.x402.value", str(checked.auth.value))
        except PaymentInvalid as e:
            await self._required(send, request, rule, offers, e.reason)
            return
        # One payment, one execution: claim the authorization before the origin runs.
        key = authorization_key(v2["network"], v2["asset"], checked.auth.payer, checked.auth.nonce)
        try:
            token = await self.claims.claim(key, checked.auth.payer, checked.auth.value, checked.spendable)
        except PaymentInvalid as e:
            await self._required(send, request, rule, offers, e.reason)
            return
        tab = prepaid.Tab() if checked.scheme == upto_evm.SCHEME else None
        ran, later = False, False
        try:
            status, headers, chunks = await self._forward(rule, request, body, checked.auth.payer, tab)
            if status < 400:
                ran = True
                if tab is not None and rule.origin == "self" and _streamed(headers):
                    later = True  # its cost is known at its end: settled after the last byte
                else:
                    used = self._used(rule, checked, tab, headers)
                    with tracing.span("x402.settle") as sp:
                        receipt = await self.facilitator.settle(
                            payload, reqs, str(request.url), checked, credit, amount=used
                        )
                        if sp is not None:
                            sp.set_attribute("tollway.x402.success", bool(receipt["success"]))
                            sp.set_attribute("tollway.charge_micros", int(used or checked.auth.value))
        except BaseException:  # before the origin answered (the client left): give it back
            done = self.claims.spend(key, token) if ran else self.claims.release(key, token)
            await asyncio.shield(done)
            raise
        if status >= 400:  # the origin failed: nothing is settled, the payment may be retried
            await self.claims.release(key, token)
            await self._relay(send, status, headers, chunks)
            return
        await self.claims.spend(key, token)  # the origin ran: this authorization never runs it again
        if later:
            assert tab is not None
            await self._relay_then_settle(
                send, status, headers, chunks, payload, reqs, checked, tab, request, credit
            )
            return
        receipt_header = (wire.PAYMENT_RESPONSE if version == 2 else wire.X_PAYMENT_RESPONSE).encode()
        if not receipt["success"]:
            await _close(chunks)
            await self._required(
                send,
                request,
                rule,
                offers,
                receipt["errorReason"],
                [(receipt_header, wire.encode(receipt).encode())],
            )
            return
        headers.append((receipt_header, wire.encode(receipt).encode()))
        headers.append((b"access-control-expose-headers", b"PAYMENT-RESPONSE, X-PAYMENT-RESPONSE"))
        await self._relay(send, status, headers, chunks)

    def _used(
        self, rule: Rule, checked: Checked, tab: prepaid.Tab | None, headers: list[tuple[bytes, bytes]]
    ) -> int | None:
        """What an upto payment settles: the AI request's metered cost, or the
        origin's ``Settlement-Overrides`` amount (taken out of the response),
        at most the maximum; None for exact (the price)."""
        if tab is None:
            return None
        if rule.origin == "self":
            return min(self._units(tab.amount), checked.amount)
        named = [v for k, v in headers if k.lower() == SETTLEMENT_OVERRIDES.encode()]
        headers[:] = [(k, v) for k, v in headers if k.lower() != SETTLEMENT_OVERRIDES.encode()]
        if not named:
            return checked.amount
        try:
            amount = wire.uint(wire.loads(named[-1]), "amount")
        except (wire.BadJSON, PaymentInvalid):
            log.warning("x402: origin %s sent a Settlement-Overrides without an atomic amount", rule.origin)
            return checked.amount
        return min(amount, checked.amount)

    async def _relay_then_settle(
        self,
        send: Send,
        status: int,
        headers: list[tuple[bytes, bytes]],
        chunks: Chunks,
        payload: dict[str, Any],
        reqs: dict[str, Any],
        checked: Checked,
        tab: prepaid.Tab,
        request: Request,
        credit: Credit | None,
    ) -> None:
        """A streamed AI answer paid with upto: relayed, then settled for what
        its calls were metered at (also when the client left mid-stream: what
        was produced)."""
        try:
            await self._relay(send, status, headers, chunks)
        finally:
            used = min(self._units(tab.amount), checked.amount)
            done = self.facilitator.settle(payload, reqs, str(request.url), checked, credit, amount=used)
            receipt = await asyncio.shield(done)
            if not receipt["success"]:
                log.error("x402 upto settlement after a stream failed: %s", receipt.get("errorMessage"))

    async def _price(self, rule: Rule, scope: Scope, body: bytes | None) -> int:
        """What this request costs, in the asset's units; a 400 (TollwayError) for
        a request whose price is ambiguous: a body priced by its JSON that is not
        strict JSON (``NaN``, 100,000 levels, a key twice), a price field given
        twice or not a number."""
        json_body = None
        if body and rule.price_by in ("body", "ai_max_cost"):
            try:
                json_body = wire.loads(body)
            except wire.BadJSON as e:
                raise invalid(e.code, f"request body: {e.message}", e.param) from None
        if rule.price_by == "ai_max_cost":
            return await self._ai_price(unquote(scope["x402_path"]), json_body)
        query = scope.get("query_string", b"").decode("latin-1")
        return price_of(rule, self.cfg.asset_decimals, body or b"", query, json_body)

    async def _has_valid_key(self, request: Request, feature: str) -> bool:
        """A valid API key (whose plan includes ``feature``, when one is named)."""
        token = presented_key(request.headers)
        if token is None:
            return False
        try:
            key = await self.keys.verify(token)
        except TollwayError:
            return False
        return not feature or self.entitled is None or self.entitled(key, feature)

    async def _required(
        self,
        send: Send,
        request: Request,
        rule: Rule,
        offers: Offers,
        error: str,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """A 402 that both protocol versions read: v2's header, v1's JSON body;
        a browser gets a page saying what to pay and how."""
        required = {
            "x402Version": 2,
            "error": error,
            "resource": {
                "url": str(request.url),
                "description": rule.description,
                "mimeType": rule.mime_type,
            },
            "accepts": offers.v2,
        }
        headers = [
            (wire.PAYMENT_REQUIRED.encode(), wire.encode(required).encode()),
            (b"cache-control", b"no-store"),
            (b"access-control-expose-headers", b"PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE"),
            *(extra_headers or []),
        ]
        if "text/html" in request.headers.get("accept", "") and offers.v2:
            body = _paywall_page(rule, offers.v2[0], self.cfg.asset_decimals, str(request.url)).encode()
            headers.append((b"content-type", b"text/html; charset=utf-8"))
        else:
            v1 = [offers.v1] if offers.v1 is not None else []
            body = json.dumps({"x402Version": 1, "error": error, "accepts": v1}).encode()
            headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": 402, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # --------------------------------------------------------------- the origin

    async def _forward(
        self,
        rule: Rule,
        request: Request,
        body: bytes | None,
        payer: str = "",
        tab: prepaid.Tab | None = None,
    ) -> tuple[int, list[tuple[bytes, bytes]], Chunks]:
        if rule.origin == "demo":
            return _demo(request)
        if rule.origin == "self":
            return await self._self(request, body, payer, tab)
        return await self._to_url(rule.origin, request, body)

    async def _to_url(
        self, origin: str, request: Request, body: bytes | None
    ) -> tuple[int, list[tuple[bytes, bytes]], Chunks]:
        # The canonical path the rule matched, byte for byte (yarl must not re-quote
        # it), and the query as the client sent it.
        query = request.scope.get("query_string", b"").decode("latin-1")
        url = URL(origin + request.scope["x402_path"] + (f"?{query}" if query else ""), encoded=True)
        # At the edge the origin is the host's own deployment: its callers' credentials are its own.
        withheld = () if request.scope.get("x402_edge") else _CREDENTIALS
        headers = []
        for k, v in request.headers.items():
            name = k.lower()
            if name in _HOP or name in withheld:
                continue
            if name == "cookie" and not (v := _cookies(v)):
                continue
            headers.append((k, v))
        headers.append(("x-forwarded-host", request.headers.get("host", "")))
        try:
            r = await self.session.request(
                request.method, url, headers=headers, data=_outgoing(request, body)
            )
        except (aiohttp_client_error(), TimeoutError) as e:
            log.warning("x402 origin %s failed: %s", url, e)
            msg = json.dumps(
                {
                    "error": {
                        "type": "api_error",
                        "code": "origin_unreachable",
                        "message": f"the origin did not answer: {type(e).__name__}",
                        "param": None,
                    }
                }
            )
            return 502, [(b"content-type", b"application/json")], _once(msg.encode())
        out = [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in r.headers.items() if k.lower() not in _HOP
        ]
        if "Content-Length" in r.headers:
            out.append((b"content-length", r.headers["Content-Length"].encode()))
        return r.status, out, _Body(r)

    async def _ai_price(self, path: str, json_body: Any) -> int:
        """An AI request's maximum cost, in the asset's units."""
        assert self.quote is not None, "the app sets Paywall.quote"
        return self._units(await self.quote(path, json_body))

    def _units(self, micros: int) -> int:
        """Micro-USD in the asset's units (rounded up)."""
        d = self.cfg.asset_decimals  # 6 for a USD stablecoin: 1 unit = 1 micro-USD
        scale: int = 10 ** abs(d - 6)
        return micros * scale if d >= 6 else -(-micros // scale)

    async def _self(
        self, request: Request, body: bytes | None, payer: str, tab: prepaid.Tab | None = None
    ) -> tuple[int, list[tuple[bytes, bytes]], Chunks]:
        """Run a paid AI request through tollway's own routes, as the payer
        (``x402_payer``: no account is charged, the payment was the charge),
        streaming its response back. With ``tab`` (an upto payment), the
        request's calls book their metered cost on it."""
        assert self.inner is not None, "the app sets Paywall.inner"
        scope = dict(request.scope)
        scope["path"] = unquote(scope["x402_path"])  # what the rule matched, decoded as ASGI has it
        scope["raw_path"] = scope["x402_path"].encode()
        if payer:  # paid: runs as the payer, no account charged
            scope["x402_payer"] = payer
        # else an API key passed an unauthenticated_only rule: its own key is charged
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.decode("latin-1") not in _HOP]
        scope.pop("x402_rule", None)
        given = False

        async def receive() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body or b"", "more_body": False}
            return await request.receive()  # the client's disconnect, when it comes

        out: asyncio.Queue[Message] = asyncio.Queue()
        ctx = contextvars.copy_context()
        if tab is not None:
            ctx.run(prepaid.use, tab)
        task = ctx.run(asyncio.ensure_future, self.inner(scope, receive, out.put))  # in ctx: its tab
        start = await _next(out, task)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    try:
                        msg = await _next(out, task)
                    except _Ended:  # it stopped mid-body: its client went away
                        break
                    if msg.get("body"):
                        yield msg["body"]
                    if not msg.get("more_body"):
                        break
                await task
            finally:
                if not task.done():
                    task.cancel()
                    # Its calls book what they used (an upto tab) as they end: wait for them.
                    await asyncio.gather(task, return_exceptions=True)

        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        return int(start["status"]), list(headers), chunks()

    @staticmethod
    async def _relay(send: Send, status: int, headers: list[tuple[bytes, bytes]], chunks: Chunks) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        try:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            await _close(chunks)
        await send({"type": "http.response.body", "body": b""})


class Offers:
    """What a 402 offers: the v2 ``accepts`` and, where ``exact`` is offered, v1's."""

    __slots__ = ("v1", "v2")

    def __init__(self, v2: list[dict[str, Any]], v1: dict[str, Any] | None) -> None:
        self.v2, self.v1 = v2, v1

    def chosen(self, payload: dict[str, Any], version: int) -> dict[str, Any]:
        """The requirements a payment pays: v1's, or the v2 offer of the scheme
        its ``accepted`` names (the first offer when it names none)."""
        if version == 1:
            if self.v1 is None:
                raise PaymentInvalid(wire.UNSUPPORTED_SCHEME, "this route takes no v1 (exact) payment")
            return self.v1
        said = payload.get("accepted")
        scheme = said.get("scheme") if isinstance(said, dict) else None
        for offer in self.v2:
            if scheme is None or offer["scheme"] == scheme:
                return offer
        raise PaymentInvalid(wire.UNSUPPORTED_SCHEME, f"scheme {scheme!r} is not offered for this route")


def _streamed(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)


class _Body:
    """An origin's response body, streamed; closing releases the connection
    (also when it was never read)."""

    def __init__(self, r: aiohttp.ClientResponse) -> None:
        self.r = r

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.r.content.iter_any():
            yield chunk

    async def aclose(self) -> None:
        self.r.release()


class _Ended(RuntimeError):
    """The inner app returned without (the rest of) its response."""


async def _next(q: asyncio.Queue[Message], task: asyncio.Future[None]) -> Message:
    """The next message the inner app sends (or its failure)."""
    if q.empty() and task.done():
        task.result()
        raise _Ended("the app ended without a response")
    get = asyncio.ensure_future(q.get())
    waiting: set[asyncio.Future[Any]] = {get, task}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if get.done():
        return get.result()
    get.cancel()
    task.result()
    raise _Ended("the app ended without a response")


def _matched(scope: Scope, match: Callable[[str], _R | None]) -> _R | None:
    """``match`` on the request's canonical path (kept in ``scope["x402_path"]``
    when it matches); ``invalid_path`` for an ambiguous path a rule matches
    under either reading."""
    raw = scope.get("raw_path") or quote(scope["path"]).encode()
    path, lenient = canonical(raw.split(b"?", 1)[0])
    rule = match(path)
    if lenient is not None and (rule or match(lenient)):
        raise paths.refused()
    if rule is not None:
        scope["x402_path"] = path
    return rule


def _cookies(header: str) -> str:
    """A Cookie header without tollway's cookies (names starting ``tollway`` or ``tw_``)."""
    kept = [
        c.strip()
        for c in header.split(";")
        if c.strip() and not c.strip().split("=", 1)[0].strip().lower().startswith(_OUR_COOKIES)
    ]
    return "; ".join(kept)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _close(chunks: Chunks) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


def _demo(request: Request) -> tuple[int, list[tuple[bytes, bytes]], Chunks]:
    """The built-in demo origin: a small weather report."""
    city = request.query_params.get("city", "Lisbon")
    body = json.dumps({"city": city, "forecast": "sunny", "temperature_c": 21, "source": "tollway demo"})
    return 200, [(b"content-type", b"application/json")], _once(body.encode())


def _paywall_page(rule: Rule, v2: dict[str, Any], decimals: int, url: str) -> str:
    usd = int(v2["amount"]) / 10**decimals
    e = html.escape
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Payment required</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:42rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}
code,pre{{background:#f4f4f4;padding:.1rem .3rem;border-radius:4px}}
pre{{padding:1rem;overflow:auto}}
</style></head>
<body>
<h1>402 · Payment required</h1>
<p>{e(rule.description or "This resource")} costs <strong>${usd:,.6f}</strong>
({e(v2["amount"])} units of {e(v2["extra"]["name"])} <code>{e(v2["asset"])}</code>
on <code>{e(v2["network"])}</code>),
paid to <code>{e(v2["payTo"])}</code> with the x402 protocol.</p>
<p>Pay it with any x402 client, for example the official Python SDK:</p>
<pre>pip install "x402[evm,clients]"

import asyncio
from eth_account import Account
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.exact import register_exact_evm_client

client = x402Client()
register_exact_evm_client(client, Account.from_key(KEY))
allowed = {{"network": "{e(v2["network"])}", "asset": "{e(v2["asset"])}"}}
client.set_spend_controls({{"allowed_assets": [allowed]}})

async def main():
    async with x402HttpxClient(client) as http:
        print((await http.get("{e(url)}")).json())

asyncio.run(main())</pre>
</body></html>
"""
