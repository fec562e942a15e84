"""Sign-in with an API token (a server-side session; the sign-in form's own double-submit
token, as no session exists yet; failed sign-ins throttled with the API's) and sign-out."""

from __future__ import annotations

import asyncio
import secrets
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.gateway.api_common import Problem, authenticate
from services.gateway.api_throttle import Throttled, client_address, presented_token_id
from services.gateway.console.context import Console, ConsoleDep
from services.gateway.console.forms import Form, FormError, read_form
from services.gateway.console.pages import PREFIX, guarded, page, posted, redirect, secure
from services.gateway.console.sessions import COOKIE, IDLE_S, PRE_COOKIE
from services.gateway.policy import PolicyViolation

router = APIRouter(prefix=PREFIX)


def safe_next(value: str | None) -> str:
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/certificates"


def _set_pre_cookie(response: Response, request: Request, pre: str) -> None:
    response.set_cookie(PRE_COOKIE, pre, max_age=900, path=f"{PREFIX}/signin", httponly=True, samesite="strict",
                        secure=secure(request))


@router.get("/signin")
async def signin_form(request: Request, console: ConsoleDep) -> Response:
    pre = secrets.token_urlsafe(24)
    response = page(console, request, "signin.html", None, pre=pre, next=safe_next(request.query_params.get("next")),
                    reason=request.query_params.get("reason", "")[:300], error=None)
    _set_pre_cookie(response, request, pre)
    return response


@router.post("/signin")
async def signin(request: Request, console: ConsoleDep) -> Response:
    try:
        form = await read_form(request)
    except (FormError, Problem):
        form = Form()
    pre, target = form.get("pre"), safe_next(form.get("next"))
    cookie = request.cookies.get(PRE_COOKIE, "")
    if not pre or not cookie or not secrets.compare_digest(pre.encode(), cookie.encode()):
        return page(console, request, "signin.html", None, status=403, pre="", next=target, reason="",
                    error="The sign-in form expired: load it again and paste the token once more.")
    token = form.get("token").strip()
    try:
        claims = await asyncio.to_thread(authenticate, console.engine, f"Bearer {token}", console.clock())
    except PolicyViolation as failed:  # 401, or 429 AUTH_THROTTLED past the limit of failed sign-ins
        return _failed(console, request, token, target, failed)
    console.sessions.close(request.cookies.get(COOKIE))  # a new id at every sign-in (no fixation)
    session = console.sessions.open(token=token, token_id=claims.token_id, identity=claims.identity,
                                    role=claims.role.value, profiles=claims.profiles)
    session.flash("ok", f"Signed in as {claims.identity} ({claims.role.value}).")
    response = redirect(target)
    response.set_cookie(COOKIE, session.id, max_age=IDLE_S * 24, path=PREFIX, httponly=True, samesite="strict",
                        secure=secure(request))
    response.delete_cookie(PRE_COOKIE, path=f"{PREFIX}/signin", httponly=True, samesite="strict", secure=secure(request))
    return response


def _failed(console: Console, request: Request, token: str, target: str, failed: PolicyViolation) -> Response:
    """The sign-in page again after a refused token: 401, or 429 with Retry-After once throttled."""
    violation = console.throttle.failed("console", client_address(request), presented_token_id(f"Bearer {token}"), failed)
    fresh = secrets.token_urlsafe(24)
    throttled = isinstance(violation, Throttled)
    response = page(console, request, "signin.html", None, status=429 if throttled else 401, pre=fresh, next=target,
                    reason="", error=f"{violation.code.value}: {violation.message}")
    if isinstance(violation, Throttled):
        response.headers["Retry-After"] = str(violation.retry_after_s)
    _set_pre_cookie(response, request, fresh)
    return response


@router.post("/signout")
@guarded
async def signout(request: Request, console: ConsoleDep) -> Response:
    session, _ = await posted(console, request)
    console.sessions.close(session.id)
    response = redirect(f"{PREFIX}/signin?" + urlencode({"reason": "Signed out."}))
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict", secure=secure(request))
    return response
