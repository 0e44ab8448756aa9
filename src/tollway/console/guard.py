"""Who is asking, on every console view and action.

- No live session: a page redirects to the sign-in page (:class:`SignInRequired`).
- An operator's page asked by a customer, or another customer's object: 404,
  as if it did not exist (:func:`operator`, :func:`own`).
- Every POST: the ``Origin`` (or, without one, the ``Referer``) must be this
  server's, and, once signed in, the session's CSRF token must come in the
  form's ``csrf`` field or the ``X-CSRF-Token`` header (:func:`form`).
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from fastapi import Request

from tollway.console.sessions import Viewer
from tollway.core.errors import forbidden, invalid, not_found

if TYPE_CHECKING:
    from tollway.console.service import Console

COOKIE = "tollway_console"
MAX_FORM = 64 * 1024


class SignInRequired(Exception):
    """No live session: the page redirects to the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def console(request: Request) -> Console:
    c: Console = request.app.state.console
    return c


async def viewer(request: Request) -> Viewer:
    c = console(request)
    v = await c.sessions.load(request.cookies.get(COOKIE))
    if v is None:
        raise SignInRequired(request.url.path)
    request.state.viewer = v
    await c.fresh()  # the rollups at most refresh_seconds old for whoever looks
    return v


def hidden() -> Exception:
    return not_found("page_not_found", "no such page")


async def operator(request: Request) -> Viewer:
    v = await viewer(request)
    if not v.operator:
        raise hidden()
    return v


def own(v: Viewer, customer_id: str | None) -> None:
    """A customer sees only their own objects; another's is not found."""
    if not v.operator and (customer_id is None or customer_id != v.customer_id):
        raise hidden()


def same_origin(request: Request) -> None:
    here = f"{request.url.scheme}://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is None:
        ref = request.headers.get("referer")
        if ref is None:
            raise forbidden("origin_missing", "a console form is sent by the browser, with its Origin")
        parts = urlsplit(ref)
        origin = f"{parts.scheme}://{parts.netloc}"
    if not hmac.compare_digest(origin.encode(), here.encode()):
        raise forbidden("cross_origin", "this form was sent from another site")


async def form(request: Request, v: Viewer | None) -> dict[str, str]:
    """The POSTed form's fields, after the Origin and CSRF checks."""
    same_origin(request)
    body = await request.body()
    if len(body) > MAX_FORM:
        raise invalid("form_too_large", f"a console form is at most {MAX_FORM} bytes")
    try:
        fields = {k: vs[-1] for k, vs in parse_qs(body.decode(), keep_blank_values=True).items()}
    except UnicodeDecodeError:
        raise invalid("invalid_form", "the form is not UTF-8") from None
    if v is not None:
        sent = request.headers.get("x-csrf-token") or fields.get("csrf") or ""
        if not hmac.compare_digest(sent.encode(), v.csrf.encode()):
            raise forbidden("csrf_failed", "the form's CSRF token is missing or wrong: reload the page")
    return fields
