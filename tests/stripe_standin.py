"""A strict local stand-in for Stripe's API, for tests (the official SDK points
its ``api_base`` here through ``STRIPE_API_BASE``).

Every request is checked the way Stripe checks it, before anything is stored:

- the method and path must be one Stripe has (unknown routes: 404 ``resource_missing``);
- ``Authorization: Bearer sk_test_…`` must carry the stand-in's key (401), or, on
  the v2 meter event stream, a live meter event session token;
- form parameters (Stripe's encoding: ``a[b][0][c]=v``) are parsed and checked
  against the parameter types the official SDK generates from Stripe's OpenAPI
  spec (``stripe.params``): an unknown parameter or a missing required one
  gets 400 in Stripe's error shape (``parameter_unknown``, ``parameter_missing``);
  integers, booleans, decimals and enums are checked too;
- ``Idempotency-Key`` is honoured: the same key with the same parameters replays
  the first answer (``Idempotent-Replayed: true``), with other parameters it is
  an ``idempotency_error``.

Objects are kept in memory and answered in the shape of Stripe's published
fixtures (``stripe_fixtures.json``, copied and overridden). Every request is
recorded (:attr:`StripeStandIn.requests`). :meth:`StripeStandIn.fail` makes
the next requests fail (500, 503, or 429 with ``Retry-After``), to test outages
and back-off. The Stripe side of a flow (a customer paying a Checkout Session,
a renewal failing, a cancellation) is played by helper methods that change the
objects and return the events Stripe would send.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
import json
import re
import secrets
import sys
import threading
import time
import types
import typing
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NotRequired, Required
from urllib.parse import parse_qsl

import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from stripe import params as P
from stripe._request_options import RequestOptions
from stripe.params import billing as PB
from stripe.params import billing_portal as PBP
from stripe.params import checkout as PC
from stripe.params import entitlements as PE
from stripe.params.v2 import billing as PV2
from typing_extensions import is_typeddict

from threaded import ThreadServer

FIXTURES: dict[str, Any] = json.loads((Path(__file__).parent / "stripe_fixtures.json").read_text())[
    "resources"
]
API_KEY = "sk_test_tollway_standin_0123456789"
DAY = 86_400
METER_EVENT_MAX_AGE = 35 * DAY  # "within the past 35 calendar days"
METER_EVENT_MAX_AHEAD = 300  # "up to 5 minutes in the future"


def fixture(kind: str, **over: Any) -> dict[str, Any]:
    obj: dict[str, Any] = copy.deepcopy(FIXTURES[kind])
    obj.update(over)
    return obj


def _token(n: int = 14) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(n))


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ------------------------------------------------------------------ errors


class StripeError(Exception):
    """An answer in Stripe's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": type, "message": message}
        if code:
            self.body["code"] = code
            self.body["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param:
            self.body["param"] = param
        self.headers = headers or {}

    def response(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        return self.status, {"error": self.body}, self.headers


def missing(kind: str, id: str, param: str = "id") -> StripeError:
    return StripeError(404, f"No such {kind}: '{id}'", code="resource_missing", param=param)


# ------------------------------------------------------- form parameters


def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``a[b][0][c]=v`` → ``{"a": {"b": {"0": {"c": "v"}}}}`` (lists stay keyed by index
    until the schema says they are lists)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        m = re.match(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$", key)
        if m is None:
            raise StripeError(400, f"Invalid parameter name: {key}", code="parameter_unknown", param=key)
        parts = [m.group(1), *re.findall(r"\[([^\[\]]*)\]", m.group(2))]
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise StripeError(400, f"Invalid parameter: {key}", param=_name(parts[: i + 1]))
            node = nxt
        if parts[-1] in node:
            raise StripeError(400, f"Duplicate parameter: {key}", param=key)
        node[parts[-1]] = value
    return out


def _name(parts: list[str]) -> str:
    return parts[0] + "".join(f"[{p}]" for p in parts[1:])


_TYPE_NS: dict[str, Any] = {**vars(typing), "Decimal": Decimal, "StripeContext": object}
_REQUEST_OPTIONS = set(RequestOptions.__annotations__)


def _resolve(tp: Any, module: str) -> Any:
    if isinstance(tp, typing.ForwardRef):
        tp = tp.__forward_arg__
    if isinstance(tp, str):
        tp = eval(tp, {**_TYPE_NS, **vars(sys.modules[module])})
    return tp


class Schema:
    """Checks parsed parameters against one of the SDK's generated TypedDicts."""

    def __init__(self, td: Any, *, json_body: bool = False) -> None:
        self.td = td
        self.json = json_body

    def check(self, data: Any) -> dict[str, Any]:
        return self._typeddict(self.td, data, [], self.td.__module__)  # type: ignore[no-any-return]

    def _typeddict(self, td: Any, data: Any, path: list[str], module: str) -> Any:
        if not isinstance(data, dict):
            raise StripeError(400, f"Invalid object: {_name(path)}", param=_name(path))
        fields = {k: v for k, v in td.__annotations__.items() if k not in _REQUEST_OPTIONS}
        required = {k for k in td.__required_keys__ if k in fields}
        out: dict[str, Any] = {}
        for k, v in data.items():
            if k not in fields:
                raise StripeError(
                    400,
                    f"Received unknown parameter: {_name([*path, k])}",
                    code="parameter_unknown",
                    param=_name([*path, k]),
                )
            out[k] = self._value(fields[k], v, [*path, k], td.__module__)
        for k in sorted(required - set(data)):
            raise StripeError(
                400,
                f"Missing required param: {_name([*path, k])}.",
                code="parameter_missing",
                param=_name([*path, k]),
            )
        return out

    def _value(self, tp: Any, v: Any, path: list[str], module: str) -> Any:
        tp = _resolve(tp, module)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        name = _name(path)
        if origin in (NotRequired, Required):
            return self._value(args[0], v, path, module)
        if origin in (typing.Union, types.UnionType):
            errors: list[StripeError] = []
            for a in args:
                try:
                    return self._value(a, v, path, module)
                except StripeError as e:
                    errors.append(e)
            # Prefer the most specific complaint (an unknown nested key over a type mismatch).
            for e in errors:
                if e.body.get("code") in ("parameter_unknown", "parameter_missing"):
                    raise e
            raise errors[0]
        if origin is typing.Literal:
            for a in args:
                if v == a or (isinstance(v, str) and str(a) == v):
                    return a
            raise StripeError(
                400,
                f"Invalid {name}: must be one of {', '.join(map(str, args))}",
                code="parameter_invalid_string",
                param=name,
            )
        if origin is list:
            if self.json and isinstance(v, list):
                items = v
            elif isinstance(v, dict) and all(k.isdigit() for k in v):
                idx = sorted(int(k) for k in v)
                if idx != list(range(len(idx))):
                    raise StripeError(400, f"Invalid array: {name}", param=name)
                items = [v[str(i)] for i in idx]
            else:
                raise StripeError(400, f"Invalid array: {name}", param=name)
            return [self._value(args[0], x, [*path, str(i)], module) for i, x in enumerate(items)]
        if origin is dict or getattr(origin, "__name__", "") == "UntypedStripeObject":
            if not isinstance(v, dict):
                if v == "":
                    return {}
                raise StripeError(400, f"Invalid hash: {name}", param=name)
            val_tp = args[-1] if args else str
            return {k: self._value(val_tp, x, [*path, k], module) for k, x in v.items()}
        if is_typeddict(tp):
            return self._typeddict(tp, v, path, tp.__module__)
        if tp is str:
            if not isinstance(v, str):
                raise StripeError(400, f"Invalid string: {name}", code="parameter_invalid_string", param=name)
            return v
        if tp is bool:
            if isinstance(v, bool):
                return v
            if v in ("true", "false"):
                return v == "true"
            raise StripeError(400, f"Invalid boolean: {v!r}", code="parameter_invalid_boolean", param=name)
        if tp is int:
            if isinstance(v, int) and not isinstance(v, bool):
                return v
            if isinstance(v, str) and re.fullmatch(r"-?\d+", v):
                return int(v)
            raise StripeError(400, f"Invalid integer: {v!r}", code="parameter_invalid_integer", param=name)
        if tp in (Decimal, float):
            try:
                d = Decimal(str(v)) if isinstance(v, (str, int, float)) and not isinstance(v, bool) else None
            except InvalidOperation:
                d = None
            if d is None or not d.is_finite():
                raise StripeError(
                    400, f"Invalid decimal: {v!r}", code="parameter_invalid_decimal", param=name
                )
            return d
        if tp in (Any, object):
            return v
        if getattr(tp, "__name__", "") == "UntypedStripeObject":
            return v
        raise AssertionError(f"stand-in: no check for {tp!r} at {name}")


def _schema(td: Any) -> Schema:
    return Schema(td)


# ------------------------------------------------------------------ records


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, Any]
    headers: dict[str, str]
    status: int = 0
    at: float = field(default_factory=time.time)


@dataclass
class Fault:
    status: int
    times: int | None  # None: until healed
    path: str = ""  # only paths starting with this
    retry_after: int | None = None
    method: str = ""
    after: int = 0  # let this many matching requests through first


@dataclass
class MeterEvent:
    identifier: str
    event_name: str
    customer: str
    value: int
    timestamp: int
    via: str  # "v1" | "v2"


Handler = Callable[[dict[str, Any], re.Match[str]], Awaitable[tuple[int, Any]] | tuple[int, Any]]


@dataclass
class Endpoint:
    method: str
    pattern: re.Pattern[str]
    schema: Schema | None
    handler: Handler
    base: str = "api"  # "api" | "meter_events"
    auth: str = "secret"  # "secret" | "session"


class StripeStandIn:
    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.lock = threading.RLock()
        self.reset()
        self.endpoints = self._endpoints()
        self.api_url = ""
        self.meter_events_url = ""
        self._servers: list[ThreadServer] = []

    def reset(self) -> None:
        """Forget every object, request, fault and session (between tests)."""
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self._idem: dict[str, tuple[str, int, Any]] = {}
        self.meter_events: dict[str, MeterEvent] = {}  # by identifier: what Stripe aggregates
        self.meter_receipts: Counter[str] = Counter()  # identifier → times received
        self.uncounted: set[str] = set()  # received, not yet in summaries (Stripe aggregates later)
        self.concurrency_violations: list[str] = []
        self._in_flight: Counter[tuple[str, str]] = Counter()
        self.max_in_flight = 0  # most v1 meter event calls at once (all customers)
        self.meter_delay_s = 0.002  # how long a v1 meter event call is "in flight"
        self.sessions: dict[str, float] = {}  # meter event session token → expires (epoch s)
        self.session_ttl_s = 15 * 60
        self._product_features: dict[str, list[str]] = {}  # product → product_feature ids
        self._line_items: dict[str, list[dict[str, Any]]] = {}  # checkout session → line items
        self._subscription_data: dict[str, dict[str, Any]] = {}  # checkout session → subscription_data
        self._seq = itertools.count(1)

    # -------------------------------------------------------------- serving

    def start(self) -> StripeStandIn:
        api = ThreadServer(self.asgi("api"), lifespan="off")
        meter = ThreadServer(self.asgi("meter_events"), lifespan="off")
        for s in (api, meter):
            s.__enter__()
            self._servers.append(s)
        self.api_url, self.meter_events_url = api.url, meter.url
        return self

    def stop(self) -> None:
        for s in self._servers:
            s.__exit__(None, None, None)
        self._servers.clear()

    def __enter__(self) -> StripeStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The environment that points tollway (and the SDK) here."""
        return {
            "STRIPE_API_KEY": self.api_key,
            "STRIPE_API_BASE": self.api_url,
            "STRIPE_METER_EVENTS_API_BASE": self.meter_events_url,
        }

    def asgi(self, base: str) -> Starlette:
        async def dispatch(request: Request) -> Response:
            return await self._dispatch(request, base)

        methods = ["GET", "POST", "DELETE", "PUT", "PATCH"]
        return Starlette(routes=[Route("/{path:path}", dispatch, methods=methods)])

    # ------------------------------------------------------------- faults

    def fail(
        self,
        status: int = 503,
        *,
        times: int | None = None,
        path: str = "",
        retry_after: int | None = None,
        method: str = "",
        after: int = 0,
    ) -> None:
        """After ``after`` matching requests, the next ``times`` (all, until
        :meth:`heal`, if None) fail with ``status``."""
        with self.lock:
            self.faults.append(Fault(status, times, path, retry_after, method, after))

    def heal(self) -> None:
        with self.lock:
            self.faults.clear()

    def _fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if path.startswith(f.path) and (not f.method or f.method == method):
                    if f.after > 0:
                        f.after -= 1
                        return None
                    if f.times is not None:
                        f.times -= 1
                        if f.times <= 0:
                            self.faults.remove(f)
                    return f
        return None

    # ----------------------------------------------------------- dispatch

    async def _dispatch(self, request: Request, base: str) -> Response:
        method, path = request.method, request.url.path
        headers = {k.lower(): v for k, v in request.headers.items()}
        raw = await request.body()
        rec = Recorded(method, path, {}, headers)
        with self.lock:
            self.requests.append(rec)
        status, body, extra = await self._answer(request, base, method, path, headers, raw, rec)
        rec.status = status
        return JSONResponse(body, status_code=status, headers={"Request-Id": f"req_{_token()}", **extra})

    async def _answer(
        self,
        request: Request,
        base: str,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
        rec: Recorded,
    ) -> tuple[int, Any, dict[str, str]]:
        try:
            ep, m = self._route(base, method, path)
            rec.params = params = self._params(ep, method, request, headers, raw)
            self._authenticate(ep, headers)
            fault = self._fault(method, path)
            if fault is not None:
                return self._fault_answer(fault)
            key = headers.get("idempotency-key")
            fp = json.dumps([method, path, params], sort_keys=True, default=str)
            if method == "POST" and key:
                with self.lock:
                    seen = self._idem.get(key)
                if seen is not None:
                    if seen[0] != fp:
                        raise StripeError(
                            400,
                            "Keys for idempotent requests can only be used with the same parameters"
                            " they were first used with. Try using a key other than"
                            f" '{key}' if you meant to execute a different request.",
                            type="idempotency_error",
                        )
                    return seen[1], copy.deepcopy(seen[2]), {"Idempotent-Replayed": "true"}
            checked = ep.schema.check(params) if ep.schema is not None else params
            try:
                r = ep.handler(checked, m)
                status, body = await r if asyncio.iscoroutine(r) else r  # type: ignore[misc]
            except StripeError as e:
                status, body, extra = e.response()
                if method == "POST" and key and status < 500 and status != 429:
                    with self.lock:
                        self._idem[key] = (fp, status, copy.deepcopy(body))
                return status, body, extra
            if method == "POST" and key:
                with self.lock:
                    self._idem[key] = (fp, status, copy.deepcopy(body))
            return status, body, {}
        except StripeError as e:
            return e.response()

    def _fault_answer(self, f: Fault) -> tuple[int, Any, dict[str, str]]:
        headers: dict[str, str] = {}
        if f.retry_after is not None:
            headers["Retry-After"] = str(f.retry_after)
        if f.status == 429:
            err = StripeError(
                429,
                "Too many requests hit the API too quickly.",
                type="invalid_request_error",
                code="rate_limit",
                headers=headers,
            )
        else:
            err = StripeError(f.status, "An unknown error occurred (injected fault).", type="api_error")
            err.headers = headers
        return err.response()

    def _route(self, base: str, method: str, path: str) -> tuple[Endpoint, re.Match[str]]:
        known_path = False
        for ep in self.endpoints:
            m = ep.pattern.fullmatch(path)
            if m is None or ep.base != base:
                continue
            known_path = True
            if ep.method == method:
                return ep, m
        if known_path:
            raise StripeError(405, f"Unrecognized request method: {method} {path}")
        raise StripeError(404, f"Unrecognized request URL ({method}: {path}).", code="resource_missing")

    def _params(
        self, ep: Endpoint, method: str, request: Request, headers: dict[str, str], raw: bytes
    ) -> dict[str, Any]:
        if ep.pattern.pattern.startswith("/v2/"):
            if method == "POST":
                if not headers.get("content-type", "").startswith("application/json"):
                    raise StripeError(400, "v2 requests must be application/json")
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    raise StripeError(400, "Invalid JSON body") from None
                if not isinstance(body, dict):
                    raise StripeError(400, "The body must be a JSON object")
                return body
            return {}
        if method == "POST":
            ctype = headers.get("content-type", "")
            if raw and not ctype.startswith("application/x-www-form-urlencoded"):
                raise StripeError(400, f"Invalid content type {ctype!r}: Stripe's v1 API takes form encoding")
            if request.url.query:
                raise StripeError(400, "POST parameters go in the body, not the query string")
            return parse_form(parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=bool(raw)))
        return parse_form(parse_qsl(request.url.query, keep_blank_values=True))

    def _authenticate(self, ep: Endpoint, headers: dict[str, str]) -> None:
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise StripeError(
                401,
                "You did not provide an API key. You need to provide your API key in the"
                " Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        if ep.auth == "session":
            with self.lock:
                expires = self.sessions.get(token)
            if expires is None:
                raise StripeError(401, "Invalid meter event session token.")
            if expires <= time.time():
                raise StripeError(
                    401,
                    "The meter event session has expired: create a new one.",
                    type="temporary_session_expired",
                    code="billing_meter_event_session_expired",
                )
            return
        if not token.startswith("sk_test_"):
            raise StripeError(401, f"Invalid API Key provided: {token[:8]}****{token[-4:]}")
        if token != self.api_key:
            raise StripeError(401, f"Invalid API Key provided: {token[:8]}****{token[-4:]}")
        if "stripe-version" not in headers:
            raise StripeError(400, "The official SDK always sends Stripe-Version")

    # ------------------------------------------------------------ storage

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{_token()}"

    def get(self, id: str, kind: str) -> dict[str, Any]:
        with self.lock:
            obj = self.objects.get(id)
        if obj is None or obj.get("object") != kind:
            raise missing(kind, id)
        return obj

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.objects[obj["id"]] = obj
        return obj

    def all(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [o for o in self.objects.values() if o.get("object") == kind]

    def listing(self, items: list[dict[str, Any]], url: str, params: dict[str, Any]) -> dict[str, Any]:
        limit = int(params.get("limit", 10))
        if not 1 <= limit <= 100:
            raise StripeError(400, "limit must be between 1 and 100", param="limit")
        after = params.get("starting_after")
        if after is not None:
            ids = [o["id"] for o in items]
            if after not in ids:
                raise missing("object", after, "starting_after")
            items = items[ids.index(after) + 1 :]
        return {"object": "list", "data": items[:limit], "has_more": len(items) > limit, "url": url}

    @property
    def now(self) -> int:
        return int(time.time())

    # --------------------------------------------------------- endpoints

    def _endpoints(self) -> list[Endpoint]:
        def ep(
            method: str,
            path: str,
            td: Any,
            handler: Handler,
            base: str = "api",
            auth: str = "secret",
            json_body: bool = False,
        ) -> Endpoint:
            pat = re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path))
            return Endpoint(method, pat, Schema(td, json_body=json_body), handler, base, auth)

        return [
            ep("POST", "/v1/products", P.ProductCreateParams, self.product_create),
            ep("GET", "/v1/products/{id}", P.ProductRetrieveParams, self.product_retrieve),
            ep("POST", "/v1/products/{id}", P.ProductUpdateParams, self.product_update),
            ep("POST", "/v1/products/{product}/features", P.ProductFeatureCreateParams, self.pf_create),
            ep("GET", "/v1/products/{product}/features", P.ProductFeatureListParams, self.pf_list),
            ep(
                "DELETE",
                "/v1/products/{product}/features/{id}",
                P.ProductFeatureDeleteParams,
                self.pf_delete,
            ),
            ep("POST", "/v1/prices", P.PriceCreateParams, self.price_create),
            ep("GET", "/v1/prices", P.PriceListParams, self.price_list),
            ep("GET", "/v1/prices/{id}", P.PriceRetrieveParams, self.price_retrieve),
            ep("POST", "/v1/prices/{id}", P.PriceUpdateParams, self.price_update),
            ep("POST", "/v1/billing/meters", PB.MeterCreateParams, self.meter_create),
            ep("GET", "/v1/billing/meters", PB.MeterListParams, self.meter_list),
            ep("GET", "/v1/billing/meters/{id}", PB.MeterRetrieveParams, self.meter_retrieve),
            ep(
                "GET",
                "/v1/billing/meters/{id}/event_summaries",
                PB.MeterEventSummaryListParams,
                self.meter_summaries,
            ),
            ep("POST", "/v1/billing/meter_events", PB.MeterEventCreateParams, self.meter_event_create),
            ep("POST", "/v1/entitlements/features", PE.FeatureCreateParams, self.feature_create),
            ep("GET", "/v1/entitlements/features", PE.FeatureListParams, self.feature_list),
            ep("POST", "/v1/entitlements/features/{id}", PE.FeatureUpdateParams, self.feature_update),
            ep(
                "GET",
                "/v1/entitlements/active_entitlements",
                PE.ActiveEntitlementListParams,
                self.active_entitlements,
            ),
            ep("POST", "/v1/customers", P.CustomerCreateParams, self.customer_create),
            ep("GET", "/v1/customers/{id}", P.CustomerRetrieveParams, self.customer_retrieve),
            ep("POST", "/v1/checkout/sessions", PC.SessionCreateParams, self.checkout_create),
            ep("GET", "/v1/checkout/sessions/{id}", PC.SessionRetrieveParams, self.checkout_retrieve),
            ep("POST", "/v1/billing_portal/sessions", PBP.SessionCreateParams, self.portal_create),
            ep("GET", "/v1/subscriptions/{id}", P.SubscriptionRetrieveParams, self.subscription_retrieve),
            ep("GET", "/v1/invoices/{id}", P.InvoiceRetrieveParams, self.invoice_retrieve),
            ep("GET", "/v1/events/{id}", P.EventRetrieveParams, self.event_retrieve),
            ep(
                "POST",
                "/v2/billing/meter_event_session",
                PV2.MeterEventSessionCreateParams,
                self.v2_session,
                json_body=True,
            ),
            ep(
                "POST",
                "/v2/billing/meter_event_stream",
                PV2.MeterEventStreamCreateParams,
                self.v2_stream,
                base="meter_events",
                auth="session",
                json_body=True,
            ),
        ]

    # ------------------------------------------------------------ products

    def product_create(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        pid = p.get("id") or self.new_id("prod")
        with self.lock:
            if pid in self.objects:
                raise StripeError(
                    400, f"Product already exists with ID {pid}.", code="resource_already_exists", param="id"
                )
            obj = fixture(
                "product",
                id=pid,
                name=p["name"],
                active=p.get("active", True),
                description=p.get("description"),
                metadata=p.get("metadata", {}),
                created=self.now,
                updated=self.now,
                default_price=None,
                package_dimensions=None,
                images=[],
                marketing_features=[],
                livemode=False,
            )
            return 200, self.put(obj)

    def product_retrieve(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        return 200, self.get(m["id"], "product")

    def product_update(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        with self.lock:
            obj = self.get(m["id"], "product")
            for k in ("name", "active", "description"):
                if k in p:
                    obj[k] = p[k]
            if "metadata" in p:
                obj["metadata"] = {**obj["metadata"], **p["metadata"]} if p["metadata"] else {}
            obj["updated"] = self.now
            return 200, obj

    def pf_create(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        with self.lock:
            self.get(m["product"], "product")
            feat = self.get(p["entitlement_feature"], "entitlements.feature")
            attached = self._product_features.setdefault(m["product"], [])
            if any(self.objects[a]["entitlement_feature"]["id"] == feat["id"] for a in attached):
                raise StripeError(
                    400,
                    f"The feature {feat['id']} is already attached to product {m['product']}.",
                    code="resource_already_exists",
                    param="entitlement_feature",
                )
            obj = fixture(
                "product_feature", id=self.new_id("prodft"), entitlement_feature=copy.deepcopy(feat)
            )
            attached.append(obj["id"])
            return 200, self.put(obj)

    def pf_list(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        with self.lock:
            self.get(m["product"], "product")
            items = [self.objects[i] for i in self._product_features.get(m["product"], [])]
        return 200, self.listing(items, m.string, p)

    def pf_delete(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        with self.lock:
            attached = self._product_features.get(m["product"], [])
            if m["id"] not in attached:
                raise missing("product_feature", m["id"])
            attached.remove(m["id"])
            del self.objects[m["id"]]
        return 200, {"id": m["id"], "object": "product_feature", "deleted": True}

    # -------------------------------------------------------------- prices

    def price_create(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        if "product" not in p:
            raise StripeError(
                400, "Missing required param: product.", code="parameter_missing", param="product"
            )
        with self.lock:
            product = self.get(p["product"], "product")
            scheme = p.get("billing_scheme", "per_unit")
            amounts = [k for k in ("unit_amount", "unit_amount_decimal") if k in p]
            if scheme == "per_unit" and len(amounts) != 1:
                raise StripeError(
                    400,
                    "Exactly one of unit_amount or unit_amount_decimal is required for a per_unit price.",
                    param="unit_amount",
                )
            dec = p["unit_amount_decimal"] if "unit_amount_decimal" in p else Decimal(p.get("unit_amount", 0))
            exp = dec.as_tuple().exponent
            if dec < 0 or (isinstance(exp, int) and -exp > 12):
                raise StripeError(
                    400, "unit_amount_decimal takes at most 12 decimal places", param="unit_amount_decimal"
                )
            rec = p.get("recurring")
            recurring = None
            if rec is not None:
                usage = rec.get("usage_type", "licensed")
                if usage == "metered":
                    if "meter" not in rec:
                        raise StripeError(
                            400,
                            "Metered prices must be backed by a meter: recurring[meter] is required.",
                            param="recurring[meter]",
                        )
                    self.get(rec["meter"], "billing.meter")
                elif "meter" in rec:
                    raise StripeError(
                        400, "recurring[meter] is only for metered prices", param="recurring[meter]"
                    )
                recurring = {
                    "interval": rec["interval"],
                    "interval_count": rec.get("interval_count", 1),
                    "meter": rec.get("meter"),
                    "usage_type": usage,
                    "trial_period_days": rec.get("trial_period_days"),
                }
            lookup_key = p.get("lookup_key")
            if lookup_key is not None:
                holder = [x for x in self.all("price") if x["lookup_key"] == lookup_key]
                if holder and not p.get("transfer_lookup_key"):
                    raise StripeError(
                        400,
                        f"A price (`{holder[0]['id']}`) already uses that lookup key.",
                        param="lookup_key",
                    )
                for x in holder:
                    x["lookup_key"] = None
            obj = fixture(
                "price",
                id=self.new_id("price"),
                active=p.get("active", True),
                billing_scheme=scheme,
                created=self.now,
                currency=p["currency"],
                custom_unit_amount=None,
                lookup_key=lookup_key,
                metadata=p.get("metadata", {}),
                nickname=p.get("nickname"),
                product=product["id"],
                recurring=recurring,
                tax_behavior=p.get("tax_behavior", "unspecified"),
                tiers_mode=p.get("tiers_mode"),
                transform_quantity=None,
                type="recurring" if recurring else "one_time",
                unit_amount=int(dec) if dec == dec.to_integral_value() else None,
                unit_amount_decimal=_decimal_str(dec),
                livemode=False,
            )
            return 200, self.put(obj)

    def price_list(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        items = self.all("price")
        if "lookup_keys" in p:
            items = [x for x in items if x["lookup_key"] in p["lookup_keys"]]
        if "active" in p:
            items = [x for x in items if x["active"] == p["active"]]
        if "product" in p:
            items = [x for x in items if x["product"] == p["product"]]
        items.sort(key=lambda x: x["created"], reverse=True)
        return 200, self.listing(items, "/v1/prices", p)

    def price_retrieve(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        return 200, self.get(m["id"], "price")

    def price_update(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        with self.lock:
            obj = self.get(m["id"], "price")
            if "lookup_key" in p:
                holder = [x for x in self.all("price") if x["lookup_key"] == p["lookup_key"] and x is not obj]
                if holder and not p.get("transfer_lookup_key"):
                    raise StripeError(
                        400,
                        f"A price (`{holder[0]['id']}`) already uses that lookup key.",
                        param="lookup_key",
                    )
                for x in holder:
                    x["lookup_key"] = None
                obj["lookup_key"] = p["lookup_key"] or None
            for k in ("active", "nickname"):
                if k in p:
                    obj[k] = p[k]
            if "metadata" in p:
                obj["metadata"] = {**obj["metadata"], **p["metadata"]} if p["metadata"] else {}
            return 200, obj

    # -------------------------------------------------------------- meters

    def meter_create(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        with self.lock:
            if any(
                x["event_name"] == p["event_name"] and x["status"] == "active"
                for x in self.all("billing.meter")
            ):
                raise StripeError(
                    400,
                    f"An active meter with event_name `{p['event_name']}` already exists.",
                    code="resource_already_exists",
                    param="event_name",
                )
            if p["default_aggregation"]["formula"] not in ("count", "sum", "last"):
                raise StripeError(400, "Invalid formula", param="default_aggregation[formula]")
            cm = p.get("customer_mapping", {"event_payload_key": "stripe_customer_id", "type": "by_id"})
            obj = fixture(
                "billing.meter",
                id=self.new_id("mtr_test"),
                created=self.now,
                updated=self.now,
                customer_mapping=cm,
                default_aggregation=p["default_aggregation"],
                display_name=p["display_name"],
                event_name=p["event_name"],
                event_time_window=p.get("event_time_window"),
                livemode=False,
                status="active",
                value_settings=p.get("value_settings", {"event_payload_key": "value"}),
            )
            return 200, self.put(obj)

    def meter_list(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        items = self.all("billing.meter")
        if "status" in p:
            items = [x for x in items if x["status"] == p["status"]]
        return 200, self.listing(items, "/v1/billing/meters", p)

    def meter_retrieve(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        return 200, self.get(m["id"], "billing.meter")

    def meter_summaries(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        meter = self.get(m["id"], "billing.meter")
        self.get(p["customer"], "customer")
        start, end = p["start_time"], p["end_time"]
        for name, t in (("start_time", start), ("end_time", end)):
            if t % 60:
                raise StripeError(400, f"{name} must be aligned with minute boundaries", param=name)
        if start >= end:
            raise StripeError(400, "start_time must be before end_time", param="start_time")
        window = p.get("value_grouping_window")
        step = {"day": DAY, "hour": 3600, None: end - start}[window]
        if window and (start % step or end % step):
            raise StripeError(400, f"times must be aligned with {window} boundaries", param="start_time")
        data = []
        for s in range(start, end, step):
            e = min(s + step, end)
            data.append(
                fixture(
                    "billing.meter_event_summary",
                    id=self.new_id("mtrusg_test"),
                    aggregated_value=self.aggregate(meter["event_name"], p["customer"], s, e),
                    start_time=s,
                    end_time=e,
                    meter=meter["id"],
                    livemode=False,
                )
            )
        data.reverse()  # newest first
        return 200, self.listing(data, m.string, p)

    def aggregate(self, event_name: str, customer: str, start: int, end: int) -> int:
        with self.lock:
            return sum(
                e.value
                for e in self.meter_events.values()
                if e.event_name == event_name
                and e.customer == customer
                and start <= e.timestamp < end
                and e.identifier not in self.uncounted
            )

    def _meter_event(
        self, event_name: str, identifier: str | None, payload: dict[str, str], ts: int, via: str
    ) -> MeterEvent:
        with self.lock:
            meter = next(
                (
                    x
                    for x in self.all("billing.meter")
                    if x["event_name"] == event_name and x["status"] == "active"
                ),
                None,
            )
            if meter is None:
                raise StripeError(400, f"No active meter with event_name `{event_name}`", param="event_name")
            ckey = meter["customer_mapping"]["event_payload_key"]
            vkey = meter["value_settings"]["event_payload_key"]
            for k in (ckey, vkey):
                if k not in payload:
                    raise StripeError(
                        400, f"payload[{k}] is required", code="parameter_missing", param=f"payload[{k}]"
                    )
            customer = payload[ckey]
            self.get(customer, "customer")
            value = payload[vkey]
            if not re.fullmatch(r"-?\d{1,15}", value):
                raise StripeError(
                    400, f"payload[{vkey}] must be a whole number, got {value!r}", param=f"payload[{vkey}]"
                )
            now = self.now
            if not now - METER_EVENT_MAX_AGE <= ts <= now + METER_EVENT_MAX_AHEAD:
                raise StripeError(
                    400,
                    "timestamp must be within the past 35 calendar days and at most 5 minutes ahead",
                    param="timestamp",
                )
            ident = identifier or f"auto_{_token(20)}"
            ev = MeterEvent(ident, event_name, customer, int(value), ts, via)
            self.meter_receipts[ident] += 1
            self.meter_events.setdefault(ident, ev)  # uniqueness by identifier
            return ev

    async def meter_event_create(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        customer = p["payload"].get("stripe_customer_id", "")
        slot = (p["event_name"], customer)
        with self.lock:
            self._in_flight[slot] += 1
            busy = self._in_flight[slot] > 1
            self.max_in_flight = max(self.max_in_flight, sum(self._in_flight.values()))
        try:
            if busy:  # "one concurrent call per customer per meter"
                self.concurrency_violations.append(customer)
                raise StripeError(
                    429,
                    "Too many concurrent requests for this customer and meter.",
                    code="rate_limit",
                )
            await asyncio.sleep(self.meter_delay_s)
            ev = self._meter_event(
                p["event_name"], p.get("identifier"), p["payload"], p.get("timestamp", self.now), "v1"
            )
        finally:
            with self.lock:
                self._in_flight[slot] -= 1
        return 200, fixture(
            "billing.meter_event",
            created=self.now,
            event_name=p["event_name"],
            identifier=ev.identifier,
            livemode=False,
            payload=p["payload"],
            timestamp=ev.timestamp,
        )

    def v2_session(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        token = f"mes_tok_{_token(24)}"
        now = time.time()
        with self.lock:
            self.sessions[token] = now + self.session_ttl_s
        return 200, {
            "id": self.new_id("mes"),
            "object": "v2.billing.meter_event_session",
            "authentication_token": token,
            "created": iso(now),
            "expires_at": iso(now + self.session_ttl_s),
            "livemode": False,
        }

    def expire_sessions(self) -> None:
        with self.lock:
            for t in self.sessions:
                self.sessions[t] = 0

    def v2_stream(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        events = p["events"]
        if not 1 <= len(events) <= 100:
            raise StripeError(400, "events takes 1 to 100 meter events", param="events")
        for e in events:
            ts = e.get("timestamp")
            if ts is None:
                t = self.now
            else:
                try:
                    t = int(dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())
                except ValueError:
                    raise StripeError(400, f"Invalid timestamp {ts!r}", param="timestamp") from None
            self._meter_event(e["event_name"], e.get("identifier"), e["payload"], t, "v2")
        return 202, {}

    # ------------------------------------------------------------ features

    def feature_create(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        with self.lock:
            if any(f["lookup_key"] == p["lookup_key"] for f in self.all("entitlements.feature")):
                raise StripeError(
                    400,
                    f"A feature with lookup_key `{p['lookup_key']}` already exists.",
                    code="resource_already_exists",
                    param="lookup_key",
                )
            obj = fixture(
                "entitlements.feature",
                id=self.new_id("feat_test"),
                active=True,
                livemode=False,
                lookup_key=p["lookup_key"],
                metadata=p.get("metadata", {}),
                name=p["name"],
            )
            return 200, self.put(obj)

    def feature_list(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        items = self.all("entitlements.feature")
        if "lookup_key" in p:
            items = [f for f in items if f["lookup_key"] == p["lookup_key"]]
        if "archived" in p:
            items = [f for f in items if f["active"] != p["archived"]]
        return 200, self.listing(items, "/v1/entitlements/features", p)

    def feature_update(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        with self.lock:
            obj = self.get(m["id"], "entitlements.feature")
            if "name" in p:
                obj["name"] = p["name"]
            if "active" in p:
                obj["active"] = p["active"]
            if "metadata" in p:
                obj["metadata"] = {**obj["metadata"], **p["metadata"]} if p["metadata"] else {}
            return 200, obj

    def active_entitlements(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        self.get(p["customer"], "customer")
        return 200, self.listing(
            self.entitlements_of(p["customer"]), "/v1/entitlements/active_entitlements", p
        )

    def entitlements_of(self, customer: str) -> list[dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        with self.lock:
            for sub in self.all("subscription"):
                if sub["customer"] != customer or sub["status"] not in ("active", "trialing", "past_due"):
                    continue
                for item in sub["items"]["data"]:
                    for pf in self._product_features.get(item["price"]["product"], []):
                        feat = self.objects[pf]["entitlement_feature"]
                        out[feat["id"]] = fixture(
                            "entitlements.active_entitlement",
                            id=f"ent_test_{feat['id'][-10:]}{customer[-6:]}",
                            feature=feat["id"],
                            lookup_key=feat["lookup_key"],
                            livemode=False,
                        )
        return list(out.values())

    # ----------------------------------------------------------- customers

    def customer_create(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        obj = fixture(
            "customer",
            id=self.new_id("cus"),
            created=self.now,
            name=p.get("name"),
            email=p.get("email"),
            description=p.get("description"),
            metadata=p.get("metadata", {}),
            discount=None,
            currency=None,
            livemode=False,
        )
        return 200, self.put(obj)

    def customer_retrieve(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        return 200, self.get(m["id"], "customer")

    # ------------------------------------------------------------ checkout

    def checkout_create(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        mode = p.get("mode")
        if mode is None:
            raise StripeError(400, "Missing required param: mode.", code="parameter_missing", param="mode")
        if "customer" in p:
            self.get(p["customer"], "customer")
        items = p.get("line_items", [])
        if mode == "subscription":
            if not items:
                raise StripeError(400, "line_items is required in subscription mode", param="line_items")
            for i, li in enumerate(items):
                if "price" not in li:
                    raise StripeError(
                        400, "line_items[].price is required here", param=f"line_items[{i}][price]"
                    )
                price = self.get(li["price"], "price")
                if not price["active"]:
                    raise StripeError(
                        400, f"The price {price['id']} is not active", param=f"line_items[{i}][price]"
                    )
                if price["recurring"] is None:
                    raise StripeError(
                        400, "subscription mode takes recurring prices", param=f"line_items[{i}][price]"
                    )
                metered = price["recurring"]["usage_type"] == "metered"
                if metered and "quantity" in li:
                    raise StripeError(
                        400,
                        "Quantity should not be specified where usage_type is `metered`. Remove quantity"
                        f" from `line_items[{i}]`",
                        param=f"line_items[{i}][quantity]",
                    )
                if not metered and "quantity" not in li:
                    raise StripeError(
                        400,
                        f"line_items[{i}][quantity] is required",
                        code="parameter_missing",
                        param=f"line_items[{i}][quantity]",
                    )
        elif mode == "setup" and items:
            raise StripeError(400, "line_items is not allowed in setup mode", param="line_items")
        sid = f"cs_test_{_token(58)}"
        total = sum(
            int(self.objects[li["price"]]["unit_amount"] or 0) * li.get("quantity", 0) for li in items
        )
        obj = fixture(
            "checkout.session",
            id=sid,
            created=self.now,
            expires_at=self.now + DAY,
            mode=mode,
            customer=p.get("customer"),
            customer_email=p.get("customer_email"),
            client_reference_id=p.get("client_reference_id"),
            metadata=p.get("metadata", {}),
            success_url=p.get("success_url"),
            cancel_url=p.get("cancel_url"),
            url=f"https://checkout.stripe.com/c/pay/{sid}",
            status="open",
            payment_status="unpaid",
            payment_intent=None,
            subscription=None,
            invoice=None,
            currency="usd",
            amount_subtotal=total,
            amount_total=total,
            livemode=False,
            shipping_address_collection=None,
            shipping_cost=None,
            after_expiration=None,
            custom_text={
                "after_submit": None,
                "shipping_address": None,
                "submit": None,
                "terms_of_service_acceptance": None,
            },
        )
        with self.lock:
            self._line_items[sid] = items
            self._subscription_data[sid] = p.get("subscription_data", {})
        return 200, self.put(obj)

    def checkout_retrieve(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        return 200, self.get(m["id"], "checkout.session")

    def portal_create(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        if "customer" not in p:
            raise StripeError(
                400, "Missing required param: customer.", code="parameter_missing", param="customer"
            )
        self.get(p["customer"], "customer")
        sid = self.new_id("bps")
        obj = fixture(
            "billing_portal.session",
            id=sid,
            created=self.now,
            customer=p["customer"],
            return_url=p.get("return_url"),
            flow=None,
            livemode=False,
            configuration=p.get("configuration", "bpc_standin_default"),
            url=f"https://billing.stripe.com/p/session/test_{_token(32)}",
        )
        return 200, self.put(obj)

    def subscription_retrieve(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        return 200, self.get(m["id"], "subscription")

    def invoice_retrieve(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        return 200, self.get(m["id"], "invoice")

    def event_retrieve(self, p: dict[str, Any], m: re.Match[str]) -> tuple[int, Any]:
        return 200, self.get(m["id"], "event")

    # ============================================================ Stripe's side

    def event(self, type: str, obj: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
        """An event as Stripe sends it (and keeps, for GET /v1/events/{id})."""
        data: dict[str, Any] = {"object": copy.deepcopy(obj)}
        if previous is not None:
            data["previous_attributes"] = previous
        ev = fixture(
            "event",
            id=f"evt_{_token(24)}",
            api_version=stripe.api_version,
            created=self.now,
            data=data,
            livemode=False,
            pending_webhooks=1,
            request={"id": f"req_{_token()}", "idempotency_key": None},
            type=type,
        )
        return self.put(ev)

    def complete_checkout(self, session_id: str, *, status: str | None = None) -> list[dict[str, Any]]:
        """The customer pays: a subscription and its first invoice are made.
        Returns the events, in the order Stripe usually sends them."""
        with self.lock:
            cs = self.get(session_id, "checkout.session")
            items = self._line_items[session_id]
            sdata = self._subscription_data.get(session_id, {})
            customer = cs["customer"]
            if customer is None:
                customer = self.customer_create({"email": "checkout@example.com"}, None)[1]["id"]  # type: ignore[arg-type]
                cs["customer"] = customer
            trial_days = sdata.get("trial_period_days")
            now = self.now
            sub_status = status or ("trialing" if trial_days else "active")
            end = now + (trial_days * DAY if trial_days else 30 * DAY)
            sub = self._subscription(
                customer,
                [(self.objects[li["price"]], li.get("quantity")) for li in items],
                status=sub_status,
                start=now,
                end=end,
                trial_end=end if trial_days else None,
                metadata=sdata.get("metadata", {}),
            )
            inv = self._invoice(sub, paid=True)
            cs.update(status="complete", payment_status="paid", subscription=sub["id"], invoice=inv["id"])
            return [
                self.event("checkout.session.completed", cs),
                self.event("customer.subscription.created", sub),
                self.event("invoice.paid", inv),
            ]

    def _subscription(
        self,
        customer: str,
        prices: list[tuple[dict[str, Any], int | None]],
        *,
        status: str,
        start: int,
        end: int,
        trial_end: int | None,
        metadata: dict[str, str],
    ) -> dict[str, Any]:
        sid = self.new_id("sub")
        item_tpl = FIXTURES["subscription_item"]
        items = []
        for price, qty in prices:
            item = copy.deepcopy(item_tpl)
            item.update(
                id=self.new_id("si"),
                created=start,
                price=copy.deepcopy(price),
                subscription=sid,
                current_period_start=start,
                current_period_end=end,
                metadata={},
                plan=None,
            )
            if qty is None:
                item.pop("quantity", None)
            else:
                item["quantity"] = qty
            items.append(item)
        sub = fixture(
            "subscription",
            id=sid,
            customer=customer,
            status=status,
            created=start,
            start_date=start,
            billing_cycle_anchor=end if trial_end else start,
            cancel_at=None,
            canceled_at=None,
            ended_at=None,
            cancel_at_period_end=False,
            trial_start=start if trial_end else None,
            trial_end=trial_end,
            metadata=metadata,
            items={
                "object": "list",
                "data": items,
                "has_more": False,
                "url": f"/v1/subscription_items?subscription={sid}",
            },
            latest_invoice=None,
            livemode=False,
            pending_update=None,
            pending_setup_intent=None,
            schedule=None,
            transfer_data=None,
            pause_collection=None,
            next_pending_invoice_item_invoice=None,
            billing_schedules=[],
        )
        return self.put(sub)

    def _invoice(self, sub: dict[str, Any], *, paid: bool) -> dict[str, Any]:
        amount = sum(int(i["price"]["unit_amount"] or 0) * i.get("quantity", 0) for i in sub["items"]["data"])
        inv = fixture(
            "invoice",
            id=self.new_id("in"),
            customer=sub["customer"],
            created=self.now,
            amount_due=amount,
            amount_paid=amount if paid else 0,
            amount_remaining=0 if paid else amount,
            status="paid" if paid else "open",
            billing_reason="subscription_create",
            lines={"object": "list", "data": [], "has_more": False, "url": "/v1/invoices/lines"},
            parent={
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"metadata": sub["metadata"], "subscription": sub["id"]},
            },
            livemode=False,
            subtotal=amount,
            total=amount,
            period_start=sub["items"]["data"][0]["current_period_start"],
            period_end=sub["items"]["data"][0]["current_period_end"],
            attempted=True,
            attempt_count=1,
        )
        inv["lines"]["url"] = f"/v1/invoices/{inv['id']}/lines"
        sub["latest_invoice"] = inv["id"]
        return self.put(inv)

    def update_subscription(self, sub_id: str, **changes: Any) -> dict[str, Any]:
        """Change a subscription (``price=`` swaps its first item's price) → the updated event."""
        with self.lock:
            sub = self.get(sub_id, "subscription")
            previous: dict[str, Any] = {}
            price = changes.pop("price", None)
            if price is not None:
                item = sub["items"]["data"][0]
                previous["items"] = copy.deepcopy(sub["items"])
                item["price"] = copy.deepcopy(self.get(price, "price"))
            period = changes.pop("period", None)
            if period is not None:
                for item in sub["items"]["data"]:
                    item["current_period_start"], item["current_period_end"] = period
            for k, v in changes.items():
                previous[k] = sub.get(k)
                sub[k] = v
            return self.event("customer.subscription.updated", sub, previous)

    def fail_renewal(self, sub_id: str) -> list[dict[str, Any]]:
        with self.lock:
            sub = self.get(sub_id, "subscription")
            inv = self._invoice(sub, paid=False)
            inv["billing_reason"] = "subscription_cycle"
            sub["status"] = "past_due"
            return [
                self.event("invoice.payment_failed", inv),
                self.event("customer.subscription.updated", sub, {"status": "active"}),
            ]

    def pay_invoice(self, invoice_id: str) -> list[dict[str, Any]]:
        with self.lock:
            inv = self.get(invoice_id, "invoice")
            inv.update(status="paid", amount_paid=inv["amount_due"], amount_remaining=0)
            sub = self.get(inv["parent"]["subscription_details"]["subscription"], "subscription")
            sub["status"] = "active"
            return [
                self.event("invoice.paid", inv),
                self.event("customer.subscription.updated", sub, {"status": "past_due"}),
            ]

    def cancel_subscription(self, sub_id: str) -> dict[str, Any]:
        with self.lock:
            sub = self.get(sub_id, "subscription")
            sub.update(status="canceled", canceled_at=self.now, ended_at=self.now)
            return self.event("customer.subscription.deleted", sub)

    def entitlement_summary_event(self, customer: str) -> dict[str, Any]:
        summary = fixture(
            "entitlements.active_entitlement_summary",
            customer=customer,
            livemode=False,
            entitlements={
                "object": "list",
                "data": self.entitlements_of(customer),
                "has_more": False,
                "url": "/v1/customer/entitlements",
            },
        )
        return self.event("entitlements.active_entitlement_summary.updated", summary)

    # ------------------------------------------------------------- queries

    def calls(self, method: str, path: str) -> list[Recorded]:
        """Recorded requests with this method whose path matches (``{x}`` is a wildcard segment)."""
        pat = re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)))
        with self.lock:
            return [r for r in self.requests if r.method == method and pat.fullmatch(r.path)]

    def writes(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.method in ("POST", "DELETE")]

    def by_kind(self, kind: str) -> Iterator[dict[str, Any]]:
        yield from self.all(kind)


def _decimal_str(d: Decimal) -> str:
    s = format(d, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s or "0"
