"""The plumbing every console screen uses: pages and redirects with the console's security
headers, the session check (``signed_in``), the CSRF check of a POST (``posted``) and ``guarded``,
which turns a redirect to sign-in, a 401 from the API (signed out) or a problem into its answer."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from starlette.responses import RedirectResponse, Response

from services.gateway.api_common import Problem, authenticate
from services.gateway.console.client import Reply, SignedOut
from services.gateway.console.context import Console, console_of
from services.gateway.console.forms import Form, FormError, read_form
from services.gateway.console.sessions import COOKIE, Session
from services.gateway.policy import PolicyViolation
from services.gateway.policy.tokens import Action, Role, TokenClaims, authorise

PREFIX = "/console"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class Redirect(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def finish(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def redirect(url: str) -> Response:
    return finish(RedirectResponse(url, status_code=303))


def claims_of(session: Session) -> TokenClaims:
    """The session's token as the API sees it (checked again by `signed_in` at every request)."""
    return TokenClaims(session.token_id, session.identity, Role(session.role), session.profiles)


def page(console: Console, request: Request, template: str, session: Session | None, *, status: int = 200,
         **context: Any) -> Response:
    claims = None if session is None else claims_of(session)
    nav = {
        "connectors": claims is not None and authorise(claims, Action.CONNECTOR_READ).allowed,
        "connectors_write": claims is not None and authorise(claims, Action.CONNECTOR_WRITE).allowed,
        "profiles_write": session is not None and session.role == "admin",
        "issue": session is not None and session.role == "requester",
        "revoke": session is not None and session.role in ("requester", "admin"),
    }
    response = console.templates.TemplateResponse(request, template, {
        "session": session, "csrf": session.csrf if session else "", "nav": nav,
        "flashes": session.take_flashes() if session else [], "prefix": PREFIX, **context}, status_code=status)
    return finish(response)


async def signed_in(console: Console, request: Request) -> Session:
    """The request's session, its token checked again now (revoked or expired: signed out)."""
    session = console.sessions.get(request.cookies.get(COOKIE))
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise Redirect(f"{PREFIX}/signin?" + urlencode({"next": target}))
    try:
        claims = await asyncio.to_thread(authenticate, console.engine, f"Bearer {session.token}", console.clock())
    except PolicyViolation as violation:
        console.sessions.close(session.id)
        raise Redirect(f"{PREFIX}/signin?" + urlencode({"reason": violation.message})) from None
    session.role, session.profiles, session.identity = claims.role.value, claims.profiles, claims.identity
    return session


async def posted(console: Console, request: Request) -> tuple[Session, Form]:
    """A POST from a signed-in session with its CSRF token (403 otherwise)."""
    session = await signed_in(console, request)
    origin = request.headers.get("origin")
    if origin is not None and origin != "null" and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}":
        raise Problem("CSRF_FAILED", "the form was sent from another origin", status=403)
    try:
        form = await read_form(request)
    except FormError as error:
        raise Problem("FORM_INVALID", str(error), status=400) from None
    if not session.csrf_ok(form.get("csrf")):
        raise Problem("CSRF_FAILED", "the form's CSRF token is missing or stale: reload the page and send it again",
                      status=403)
    return session, form


def guarded(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Redirects (sign-in), 401s from the API (signed out) and problems (an error page) for every route."""

    @functools.wraps(handler)
    async def wrapper(request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(request, *args, **kwargs)
        except Redirect as go:
            return redirect(go.url)
        except SignedOut as out:
            console_of(request).sessions.close(request.cookies.get(COOKIE))
            return redirect(f"{PREFIX}/signin?" + urlencode({"reason": out.message}))
        except Problem as problem:
            console = console_of(request)
            session = console.sessions.get(request.cookies.get(COOKIE))
            return page(console, request, "error.html", session, status=problem.status, code=problem.code,
                        message=problem.message)

    return wrapper


def refused(console: Console, request: Request, session: Session, reply: Reply) -> Response:
    """The error page for a ``/v1`` answer that is not ok, with its status and code."""
    return page(console, request, "error.html", session, status=reply.status, code=reply.code, message=reply.message)
