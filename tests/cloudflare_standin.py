"""A strict local stand-in for the parts of Cloudflare's v4 API the
cloudflare provider uses (the official SDK's ``base_url`` points here).

Every call is checked before anything is stored: the method and path must be
one of the routes below (else 404 with Cloudflare's error shape), the
``Authorization: Bearer`` token must be the stand-in's (else 403), and each
JSON body may hold only the fields Cloudflare documents for that call, with
their types (else 400). Worker uploads must be multipart with a ``metadata``
part whose ``main_module`` names one of the uploaded parts. Every request is
recorded in :attr:`CloudflareStandIn.calls`."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

TOKEN = "cf-test-token-0123456789abcdef"
ACCOUNT = "0123456789abcdef0123456789abcdef"


def _ok(result: Any, **extra: Any) -> JSONResponse:
    return JSONResponse({"success": True, "errors": [], "messages": [], "result": result, **extra})


def _err(status: int, code: int, message: str) -> JSONResponse:
    body = {"success": False, "errors": [{"code": code, "message": message}], "messages": [], "result": None}
    return JSONResponse(body, status_code=status)


class Refused(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _fields(body: Any, allowed: dict[str, type | tuple[type, ...]], required: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Refused(400, 9207, "the request body is not a JSON object")
    for k, v in body.items():
        if k not in allowed:
            raise Refused(400, 9207, f"unexpected field {k!r}")
        if not isinstance(v, allowed[k]) or (isinstance(v, bool) and allowed[k] is int):
            raise Refused(400, 9207, f"field {k!r} has the wrong type")
    missing = required - set(body)
    if missing:
        raise Refused(400, 9207, f"missing field {sorted(missing)[0]!r}")
    return body


@dataclass
class CloudflareStandIn:
    registrable: set[str] = field(default_factory=set)  # what Registrar reports available
    zones: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> zone
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    scripts: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    registrar: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    reject_scripts: bool = False  # answer worker uploads with a 400 (a script Cloudflare refuses)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def _id(self) -> str:
        return f"{next(self._ids):032x}"

    def app(self) -> Starlette:
        a = f"/client/v4/accounts/{ACCOUNT}"
        z = "/client/v4/zones"
        return Starlette(
            routes=[
                Route(a + "/registrar/domains", self._wrap(self.list_domains), methods=["GET"]),
                Route(a + "/registrar/domains/{name}", self._wrap(self.get_domain), methods=["GET"]),
                Route(a + "/registrar/domains/{name}", self._wrap(self.update_domain), methods=["PUT"]),
                Route(z, self._wrap(self.list_zones), methods=["GET"]),
                Route(z, self._wrap(self.create_zone), methods=["POST"]),
                Route(z + "/{zid}/dns_records", self._wrap(self.create_record), methods=["POST"]),
                Route(z + "/{zid}/dns_records/{rid}", self._wrap(self.delete_record), methods=["DELETE"]),
                Route(a + "/workers/scripts/{name}", self._wrap(self.put_script), methods=["PUT"]),
                Route(a + "/workers/scripts/{name}", self._wrap(self.delete_script), methods=["DELETE"]),
                Route(z + "/{zid}/workers/routes", self._wrap(self.list_routes), methods=["GET"]),
                Route(z + "/{zid}/workers/routes", self._wrap(self.create_route), methods=["POST"]),
            ],
            exception_handlers={404: lambda r, e: _err(404, 7003, f"no route for {r.method} {r.url.path}"),
                                405: lambda r, e: _err(405, 7001, f"method {r.method} not allowed")},
        )  # fmt: skip

    def _wrap(self, fn: Any) -> Any:
        async def endpoint(request: Request) -> JSONResponse:
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                self.calls.append((request.method, request.url.path, "unauthenticated"))
                return _err(403, 10000, "Authentication error")
            try:
                out: JSONResponse = await fn(request)
            except Refused as e:
                self.calls.append((request.method, request.url.path, f"refused: {e.message}"))
                return _err(e.status, e.code, e.message)
            return out

        return endpoint

    async def _json(self, request: Request) -> Any:
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            raise Refused(400, 9207, "the body must be application/json")
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise Refused(400, 9207, "the body is not JSON") from None
        self.calls.append((request.method, request.url.path, body))
        return body

    def _zone(self, request: Request) -> dict[str, Any]:
        zone = self.zones.get(request.path_params["zid"])
        if zone is None:
            raise Refused(404, 7003, "no such zone")
        return zone

    # Registrar
    async def list_domains(self, request: Request) -> JSONResponse:
        self.calls.append(("GET", request.url.path, None))
        return _ok(
            list(self.registrar.values()),
            result_info={
                "page": 1,
                "per_page": 50,
                "count": len(self.registrar),
                "total_count": len(self.registrar),
            },
        )

    async def get_domain(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        self.calls.append(("GET", request.url.path, None))
        free = name in self.registrable and name not in self.registrar
        tld = name.rsplit(".", 1)[-1] in ("com", "net", "org", "dev", "app")
        return _ok({"id": name, "name": name, "available": free, "can_register": free, "supported_tld": tld})

    async def update_domain(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        body = _fields(
            await self._json(request), {"auto_renew": bool, "locked": bool, "privacy": bool}, set()
        )
        if name not in self.registrar and name not in self.registrable:
            raise Refused(404, 10006, "domain not found")
        self.registrar.setdefault(name, {"id": name, "name": name}).update(body)
        return _ok({})

    # Zones
    async def list_zones(self, request: Request) -> JSONResponse:
        q = dict(request.query_params)
        self.calls.append(("GET", request.url.path, q))
        if set(q) - {"name", "account.id", "page", "per_page"}:
            raise Refused(400, 9207, f"unexpected query {sorted(set(q) - {'name', 'account.id'})}")
        found = [z for z in self.zones.values() if z["name"] == q.get("name", z["name"])]
        info = {"page": 1, "per_page": 20, "count": len(found), "total_count": len(found), "total_pages": 1}
        return _ok(found, result_info=info)

    async def create_zone(self, request: Request) -> JSONResponse:
        body = _fields(
            await self._json(request), {"account": dict, "name": str, "type": str}, {"account", "name"}
        )
        if body["account"] != {"id": ACCOUNT}:
            raise Refused(400, 1001, "invalid account")
        if any(z["name"] == body["name"] for z in self.zones.values()):
            raise Refused(400, 1061, "zone already exists")
        zid = self._id()
        self.zones[zid] = {
            "id": zid,
            "name": body["name"],
            "status": "pending",
            "type": body.get("type", "full"),
        }
        return _ok(self.zones[zid])

    # DNS
    async def create_record(self, request: Request) -> JSONResponse:
        zone = self._zone(request)
        allowed: dict[str, Any] = {
            "name": str,
            "type": str,
            "content": str,
            "ttl": int,
            "priority": int,
            "proxied": bool,
            "comment": str,
        }
        body = _fields(await self._json(request), allowed, {"name", "type", "content"})
        if body["type"] not in ("A", "AAAA", "CNAME", "TXT", "MX"):
            raise Refused(400, 9004, "unsupported record type")
        if body["type"] == "MX" and "priority" not in body:
            raise Refused(400, 9005, "MX records need a priority")
        if not (body["name"] == zone["name"] or body["name"].endswith("." + zone["name"])):
            raise Refused(400, 9007, "name is outside the zone")
        rid = self._id()
        self.records[rid] = {"id": rid, "zone_id": zone["id"], **body}
        return _ok(self.records[rid])

    async def delete_record(self, request: Request) -> JSONResponse:
        self._zone(request)
        self.calls.append(("DELETE", request.url.path, None))
        if self.records.pop(request.path_params["rid"], None) is None:
            raise Refused(404, 81044, "record not found")
        return _ok({"id": request.path_params["rid"]})

    # Workers
    async def put_script(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise Refused(400, 10021, "a script upload is multipart/form-data")
        form = await request.form()
        meta_part = form.get("metadata")
        if meta_part is None:
            raise Refused(400, 10021, "no metadata part")
        raw = meta_part if isinstance(meta_part, str) else (await meta_part.read()).decode()
        meta = json.loads(raw)
        _fields(
            meta,
            {"main_module": str, "compatibility_date": str, "compatibility_flags": list},
            {"main_module"},
        )
        files = {k: v for k, v in form.multi_items() if k != "metadata"}
        self.calls.append(("PUT", request.url.path, {"metadata": meta, "parts": sorted(files)}))
        if meta["main_module"] not in files:
            raise Refused(400, 10021, f"main_module {meta['main_module']!r} is not an uploaded part")
        if self.reject_scripts:
            raise Refused(400, 10021, "Uncaught Error: the script failed to start")
        self.scripts[name] = {"id": name, "metadata": meta, "parts": sorted(files)}
        return _ok({"id": name, "etag": self._id()})

    async def delete_script(self, request: Request) -> JSONResponse:
        self.calls.append(("DELETE", request.url.path, dict(request.query_params)))
        if self.scripts.pop(request.path_params["name"], None) is None:
            raise Refused(404, 10007, "script not found")
        return _ok(None)

    async def list_routes(self, request: Request) -> JSONResponse:
        zone = self._zone(request)
        self.calls.append(("GET", request.url.path, None))
        return _ok([r for r in self.routes.values() if r["zone_id"] == zone["id"]])

    async def create_route(self, request: Request) -> JSONResponse:
        zone = self._zone(request)
        body = _fields(await self._json(request), {"pattern": str, "script": str}, {"pattern", "script"})
        if body["script"] not in self.scripts:
            raise Refused(400, 10019, "no such script")
        rid = self._id()
        self.routes[rid] = {"id": rid, "zone_id": zone["id"], **body}
        return _ok({"id": rid, **body})
