"""Sign in (the admin token: the operator; an API key: its customer), sign out."""

from __future__ import annotations

import hmac
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tollway.console.guard import COOKIE, SignInRequired, console, form, viewer
from tollway.console.render import NO_STORE, templates
from tollway.console.sessions import CUSTOMER, OPERATOR
from tollway.core.errors import ErrorType, TollwayError, unauthenticated
from tollway.core.lazyroute import LazyRoute
from tollway.core.ratelimit import Tally
from tollway.core.responses import error_response

router = APIRouter(route_class=LazyRoute, prefix="/console", include_in_schema=False)


def _next(path: str | None, operator: bool) -> str:
    """Where to go after signing in: a console page only (no open redirect)."""
    if path and path.startswith("/console/") and not path.startswith("//") and "\\" not in path:
        return path
    return "/console/overview" if operator else "/console/me"


def _login(error: str | None = None, next_path: str = "", status: int = 200) -> HTMLResponse:
    html = templates().get_template("login.html").render(error=error, next_path=next_path)
    return HTMLResponse(html, status_code=status, headers=NO_STORE)


@router.get("")
async def home(request: Request) -> Response:
    v = await viewer(request)
    return RedirectResponse(_next(None, v.operator), status_code=303)


@router.get("/login")
async def login_page(request: Request) -> Response:
    return _login(next_path=request.query_params.get("next", ""))


@router.post("/login")
async def login(request: Request) -> Response:
    c = console(request)
    fields = await form(request, None)
    await _throttle(request)
    token = fields.get("token", "").strip()
    next_path = fields.get("next", "")
    expected = c.rt.settings.admin.token
    if expected and hmac.compare_digest(token.encode(), expected.encode()):
        sid = await c.sessions.create(OPERATOR)
        operator = True
    else:
        try:
            key = await c.rt.keys.verify(token)
        except TollwayError:
            return _login("That is neither the admin token nor a live API key.", next_path, 401)
        sid = await c.sessions.create(CUSTOMER, key.customer_id, key.id)
        operator = False
    out = RedirectResponse(_next(next_path, operator), status_code=303)
    secure = c.cfg.cookie_secure if c.cfg.cookie_secure is not None else request.url.scheme == "https"
    out.set_cookie(
        COOKIE,
        sid,
        max_age=int(c.cfg.session_hours * 3600),
        path="/console",
        secure=secure,
        httponly=True,
        samesite="lax",
    )
    return out


async def _throttle(request: Request) -> None:
    """At most ``signin_per_minute`` attempts per client address (the gateway's
    sliding windows: shared through Redis when it is configured)."""
    c = console(request)
    who = request.client.host if request.client else "?"
    tally = Tally(f"console:signin:{who}", c.cfg.signin_per_minute, 1)
    verdict = await c.rt.gateway.windows.hit([tally], int(c.rt.clock.now_us() // 1_000_000))
    if not verdict.allowed:
        raise TollwayError(
            ErrorType.RATE_LIMIT,
            "signin_rate_limited",
            f"too many sign-in attempts: try again in {verdict.retry_after_s} s",
            status=429,
            headers={"Retry-After": str(verdict.retry_after_s)},
        )


@router.post("/logout")
async def logout(request: Request) -> Response:
    v = await viewer(request)
    await form(request, v)
    sid = request.cookies.get(COOKIE)
    if sid:
        await console(request).sessions.end(sid)
    out = RedirectResponse("/console/login", status_code=303)
    out.delete_cookie(COOKIE, path="/console")
    return out


async def sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    if request.method != "GET":
        return error_response(unauthenticated("signed_out", "sign in to the console first"))
    return RedirectResponse(f"/console/login?next={quote(exc.next_path)}", status_code=303)
