"""The web console under ``/console``: server-rendered pages (Jinja2), served by the gateway.

It is a client of the ``/v1`` API (services/gateway/console/client.py calls the API app
in-process with the signed-in user's token), so that roles, scopes, validation, dedupe and admin
events are exactly the API's. Sign-in takes an API token and opens a server-side session
(services/gateway/console/sessions.py); every form carries the session's CSRF token, checked on
every POST. docs/console.md describes the screens.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.templating import Jinja2Templates
from starlette.responses import FileResponse, RedirectResponse, Response

from services.common.db import read_session
from services.gateway.api_common import Problem, authenticate
from services.gateway.api_throttle import AuthThrottle, Throttled, client_address, presented_token_id, throttle_from
from services.gateway.console import views
from services.gateway.console.client import ApiClient, Reply, SignedOut, seg
from services.gateway.console.forms import Form, FormError, read_form
from services.gateway.console.sessions import COOKIE, IDLE_S, PRE_COOKIE, Session, Sessions
from services.gateway.policy import PolicyViolation
from services.gateway.policy.tokens import Action, Role, TokenClaims, authorise

log = logging.getLogger(__name__)

PREFIX = "/console"
HERE = Path(__file__).parent
STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Redirect(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def console_router(runtime: Any, api_app: Any, *, clock: Callable[[], datetime] = _utc_now,
                   sessions: Sessions | None = None, throttle: AuthThrottle | None = None) -> APIRouter:
    """The console's routes. ``api_app`` is the FastAPI app that serves ``/v1`` (the console calls it);
    ``throttle`` counts failed sign-ins (shared with the API's bearer tokens)."""
    if throttle is None:
        throttle = throttle_from(runtime.settings, None)
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(seg=seg, short_type=views.short_type, connector_status=views.connector_status)
    api = ApiClient(api_app)
    sessions = sessions if sessions is not None else Sessions()
    engine = runtime.engine

    # -- plumbing ----------------------------------------------------------------------------------------------------

    def secure(request: Request) -> bool:
        return request.url.scheme == "https"

    def finish(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def page(request: Request, template: str, session: Session | None, *, status: int = 200, **context: Any) -> Response:
        claims = None if session is None else TokenClaims(session.token_id, session.identity, Role(session.role),
                                                          session.profiles)
        nav = {
            "connectors": claims is not None and authorise(claims, Action.CONNECTOR_READ).allowed,
            "connectors_write": claims is not None and authorise(claims, Action.CONNECTOR_WRITE).allowed,
            "profiles_write": session is not None and session.role == "admin",
            "issue": session is not None and session.role == "requester",
            "revoke": session is not None and session.role in ("requester", "admin"),
        }
        response = templates.TemplateResponse(request, template, {
            "session": session, "csrf": session.csrf if session else "", "nav": nav,
            "flashes": session.take_flashes() if session else [], "prefix": PREFIX, **context}, status_code=status)
        return finish(response)

    def redirect(url: str) -> Response:
        return finish(RedirectResponse(url, status_code=303))

    async def signed_in(request: Request) -> Session:
        """The request's session, its token checked again now (revoked or expired: signed out)."""
        session = sessions.get(request.cookies.get(COOKIE))
        if session is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise Redirect(f"{PREFIX}/signin?" + urlencode({"next": target}))
        try:
            claims = await asyncio.to_thread(authenticate, engine, f"Bearer {session.token}", clock())
        except PolicyViolation as violation:
            sessions.close(session.id)
            raise Redirect(f"{PREFIX}/signin?" + urlencode({"reason": violation.message})) from None
        session.role, session.profiles, session.identity = claims.role.value, claims.profiles, claims.identity
        return session

    async def posted(request: Request) -> tuple[Session, Form]:
        """A POST from a signed-in session with its CSRF token (403 otherwise)."""
        session = await signed_in(request)
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

    async def call(session: Session, method: str, path: str, **kwargs: Any) -> Reply:
        return await api.call(session.token, method, path, **kwargs)

    def guarded(handler: Callable[..., Any]) -> Callable[..., Any]:
        """Redirects (sign-in), 401s from the API (signed out) and problems (an error page) for every route."""

        @functools.wraps(handler)
        async def wrapper(request: Request, *args: Any, **kwargs: Any) -> Response:
            try:
                return await handler(request, *args, **kwargs)  # type: ignore[no-any-return]
            except Redirect as go:
                return redirect(go.url)
            except SignedOut as out:
                sessions.close(request.cookies.get(COOKIE))
                return redirect(f"{PREFIX}/signin?" + urlencode({"reason": out.message}))
            except Problem as problem:
                session = sessions.get(request.cookies.get(COOKIE))
                return page(request, "error.html", session, status=problem.status, code=problem.code, message=problem.message)

        return wrapper

    # -- sign-in -----------------------------------------------------------------------------------------------------

    @router.get("")
    @router.get("/")
    async def home(request: Request) -> Response:
        return redirect(f"{PREFIX}/certificates")

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:
            return finish(Response("not found", status_code=404, media_type="text/plain"))
        response = FileResponse(HERE / "static" / name, media_type=STATIC[name])
        response.headers["Cache-Control"] = "public, max-age=300"
        return finish(response)

    def safe_next(value: str | None) -> str:
        if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
            return value
        return f"{PREFIX}/certificates"

    @router.get("/signin")
    async def signin_form(request: Request) -> Response:
        pre = secrets.token_urlsafe(24)
        response = page(request, "signin.html", None, pre=pre, next=safe_next(request.query_params.get("next")),
                        reason=request.query_params.get("reason", "")[:300], error=None)
        response.set_cookie(PRE_COOKIE, pre, max_age=900, path=f"{PREFIX}/signin", httponly=True, samesite="strict",
                            secure=secure(request))
        return response

    @router.post("/signin")
    async def signin(request: Request) -> Response:
        try:
            form = await read_form(request)
        except (FormError, Problem):
            form = Form()
        pre, target = form.get("pre"), safe_next(form.get("next"))
        cookie = request.cookies.get(PRE_COOKIE, "")
        if not pre or not cookie or not secrets.compare_digest(pre.encode(), cookie.encode()):
            return page(request, "signin.html", None, status=403, pre="", next=target, reason="",
                        error="The sign-in form expired: load it again and paste the token once more.")
        token = form.get("token").strip()
        try:
            claims = await asyncio.to_thread(authenticate, engine, f"Bearer {token}", clock())
        except PolicyViolation as failed:  # 401, or 429 AUTH_THROTTLED past the limit of failed sign-ins
            violation = throttle.failed("console", client_address(request), presented_token_id(f"Bearer {token}"), failed)
            throttled = isinstance(violation, Throttled)
            fresh = secrets.token_urlsafe(24)
            response = page(request, "signin.html", None, status=429 if throttled else 401, pre=fresh, next=target,
                            reason="", error=f"{violation.code.value}: {violation.message}")
            if throttled:
                response.headers["Retry-After"] = str(violation.retry_after_s)  # type: ignore[attr-defined]
            response.set_cookie(PRE_COOKIE, fresh, max_age=900, path=f"{PREFIX}/signin", httponly=True, samesite="strict",
                                secure=secure(request))
            return response
        old = request.cookies.get(COOKIE)
        sessions.close(old)  # a new id at every sign-in (no fixation)
        session = sessions.open(token=token, token_id=claims.token_id, identity=claims.identity, role=claims.role.value,
                                profiles=claims.profiles)
        session.flash("ok", f"Signed in as {claims.identity} ({claims.role.value}).")
        response = redirect(target)
        response.set_cookie(COOKIE, session.id, max_age=IDLE_S * 24, path=PREFIX, httponly=True, samesite="strict",
                            secure=secure(request))
        response.delete_cookie(PRE_COOKIE, path=f"{PREFIX}/signin", httponly=True, samesite="strict", secure=secure(request))
        return response

    @router.post("/signout")
    @guarded
    async def signout(request: Request) -> Response:
        session, _ = await posted(request)
        sessions.close(session.id)
        response = redirect(f"{PREFIX}/signin?" + urlencode({"reason": "Signed out."}))
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict", secure=secure(request))
        return response

    # -- integrations: CA connectors ---------------------------------------------------------------------------------------

    CONNECTORS = f"{PREFIX}/integrations/connectors"
    known_connector_fields = {f.name for f in views.CONNECTOR_FIELDS} | {"version"}

    @router.get("/integrations/connectors")
    @guarded
    async def connectors(request: Request) -> Response:
        session = await signed_in(request)
        reply = await call(session, "GET", "/v1/connectors")
        if not reply.ok:
            return page(request, "error.html", session, status=reply.status, code=reply.code, message=reply.message)
        return page(request, "connectors.html", session, connectors=reply.body, section="connectors")

    def connector_page(request: Request, session: Session, *, mode: str, values: dict[str, Any],
                       errors: views.FormErrors | None = None, status: int = 200, connector: dict[str, Any] | None = None) -> Response:
        return page(request, "connector_form.html", session, status=status, mode=mode, values=values,
                    errors=errors or views.FormErrors(), fields=views.CONNECTOR_FIELDS, versions=views.VERSIONS,
                    connector=connector, section="connectors")

    @router.get("/integrations/connectors/new")
    @guarded
    async def connector_new(request: Request) -> Response:
        session = await signed_in(request)
        return connector_page(request, session, mode="create", values={"version": "V4.2.4+"})

    @router.post("/integrations/connectors/new")
    @guarded
    async def connector_create(request: Request) -> Response:
        session, form = await posted(request)
        reply = await call(session, "POST", "/v1/connectors", json=views.connector_body(form, create=True))
        if reply.ok:
            session.flash("ok", f"Connector {reply.body['name']} validated against emCA and created: Active.")
            return redirect(CONNECTORS)
        errors = views.problem_errors(reply, known_connector_fields, views.CONNECTOR_ALIASES)
        return connector_page(request, session, mode="create", values=views.connector_values(form), errors=errors,
                              status=reply.status)

    @router.get("/integrations/connectors/{name}/edit")
    @guarded
    async def connector_edit_form(request: Request, name: str) -> Response:
        session = await signed_in(request)
        reply = await call(session, "GET", f"/v1/connectors/{seg(name)}")
        if not reply.ok:
            return page(request, "error.html", session, status=reply.status, code=reply.code, message=reply.message)
        values = {k: v for k, v in reply.body.items() if k not in views.SECRET_NAMES and isinstance(v, str | int)}
        return connector_page(request, session, mode="edit", values=values, connector=reply.body)

    @router.post("/integrations/connectors/{name}/edit")
    @guarded
    async def connector_edit(request: Request, name: str) -> Response:
        session, form = await posted(request)
        reply = await call(session, "PATCH", f"/v1/connectors/{seg(name)}", json=views.connector_body(form, create=False))
        if reply.ok:
            session.flash("ok", f"Connector {name} validated again and saved.")
            return redirect(CONNECTORS)
        current = await call(session, "GET", f"/v1/connectors/{seg(name)}")
        errors = views.problem_errors(reply, known_connector_fields, views.CONNECTOR_ALIASES)
        values = {**views.connector_values(form), "name": name}
        return connector_page(request, session, mode="edit", values=values, errors=errors, status=reply.status,
                              connector=current.body if current.ok else {"name": name})

    @router.post("/integrations/connectors/{name}/{action}")
    @guarded
    async def connector_action(request: Request, name: str, action: str) -> Response:
        session, _ = await posted(request)
        if action not in ("test", "activate", "deactivate", "delete"):
            raise Problem("NOT_FOUND", f"no connector action {action!r}", status=404)
        if action == "delete":
            reply = await call(session, "DELETE", f"/v1/connectors/{seg(name)}")
        else:
            reply = await call(session, "POST", f"/v1/connectors/{seg(name)}/{action}")
        if not reply.ok:
            session.flash("error", f"{action.capitalize()} {name} refused: {reply.code}: {reply.message}")
        elif action == "test":
            failed = [c for c in reply.body.get("checks", []) if not c.get("ok")]
            if reply.body.get("ok"):
                session.flash("ok", f"Test of {name} passed: " + "; ".join(c["check"] for c in reply.body.get("checks", [])) + ".")
            else:
                detail = "; ".join(f"{c.get('code')}: {c.get('message')}" for c in failed) or reply.body.get("status", "")
                session.flash("error", f"Test of {name} failed: {detail}")
        else:
            done = {"activate": "validated and activated", "deactivate": "deactivated (its queue is kept)", "delete": "deleted"}
            session.flash("ok", f"Connector {name} {done[action]}.")
        return redirect(CONNECTORS)

    @router.get("/integrations/connectors/{name}/delete")
    @guarded
    async def connector_delete_confirm(request: Request, name: str) -> Response:
        session = await signed_in(request)
        reply = await call(session, "GET", f"/v1/connectors/{seg(name)}")
        if not reply.ok:
            return page(request, "error.html", session, status=reply.status, code=reply.code, message=reply.message)
        return page(request, "confirm_delete.html", session, connector=reply.body, section="connectors")

    # -- certificates: provisioning (bots) ---------------------------------------------------------------------------------

    PROVISIONING = f"{PREFIX}/certificates/provisioning"

    async def enabled_connectors(session: Session) -> tuple[list[dict[str, Any]], str | None]:
        reply = await call(session, "GET", "/v1/connectors")
        if not reply.ok:
            return [], f"{reply.code}: {reply.message}"
        return [c for c in reply.body if c.get("status") == "enabled"], None

    async def profile_page(request: Request, session: Session, *, mode: str, values: dict[str, Any],
                           errors: views.FormErrors | None = None, status: int = 200) -> Response:
        cas, cas_error = await enabled_connectors(session)
        return page(request, "profile_form.html", session, status=status, mode=mode, values=values,
                    errors=errors or views.FormErrors(), cas=cas, cas_error=cas_error, algorithms=views.BOT_ALGORITHMS,
                    section="provisioning")

    @router.get("/certificates/provisioning")
    @guarded
    async def profiles(request: Request) -> Response:
        session = await signed_in(request)
        reply = await call(session, "GET", "/v1/profiles")
        if not reply.ok:
            return page(request, "error.html", session, status=reply.status, code=reply.code, message=reply.message)
        return page(request, "profiles.html", session, profiles=reply.body, section="provisioning")

    @router.get("/certificates/provisioning/new")
    @guarded
    async def profile_new(request: Request) -> Response:
        session = await signed_in(request)
        return await profile_page(request, session, mode="create", values=dict(views.NEW_PROFILE_VALUES))

    @router.post("/certificates/provisioning/new")
    @guarded
    async def profile_create(request: Request) -> Response:
        session, form = await posted(request)
        reply = await call(session, "POST", "/v1/profiles", json=views.profile_body(form))
        if reply.ok:
            session.flash("ok", f"Provisioning bot {reply.body['name']} configured on {reply.body['connector']}.")
            return redirect(PROVISIONING)
        errors = views.problem_errors(reply, views.PROFILE_FIELD_NAMES, views.PROFILE_ALIASES)
        return await profile_page(request, session, mode="create", values=views.profile_form_values(form), errors=errors,
                                  status=reply.status)

    @router.get("/certificates/provisioning/{name}/edit")
    @guarded
    async def profile_edit_form(request: Request, name: str) -> Response:
        session = await signed_in(request)
        reply = await call(session, "GET", f"/v1/profiles/{seg(name)}")
        if not reply.ok:
            return page(request, "error.html", session, status=reply.status, code=reply.code, message=reply.message)
        return await profile_page(request, session, mode="edit", values=views.profile_values(reply.body))

    @router.post("/certificates/provisioning/{name}/edit")
    @guarded
    async def profile_edit(request: Request, name: str) -> Response:
        session, form = await posted(request)
        body = {**views.profile_body(form), "name": name}
        reply = await call(session, "PUT", f"/v1/profiles/{seg(name)}", json=body)
        if reply.ok:
            session.flash("ok", f"Provisioning bot {name} saved (revision {reply.body.get('revision')}).")
            return redirect(PROVISIONING)
        errors = views.problem_errors(reply, views.PROFILE_FIELD_NAMES, views.PROFILE_ALIASES)
        return await profile_page(request, session, mode="edit", values={**views.profile_form_values(form), "name": name},
                                  errors=errors, status=reply.status)

    # -- certificates: inventory, one certificate, requests -------------------------------------------------------------------

    CERTIFICATES = f"{PREFIX}/certificates"

    @router.get("/certificates")
    @guarded
    async def certificates(request: Request) -> Response:
        session = await signed_in(request)
        q = request.query_params
        filters = {"status": q.get("status", ""), "expiring_within_days": q.get("expiring_within_days", "").strip(),
                   "profile": q.get("profile", ""), "connector": q.get("connector", "")}
        params = {k: v for k, v in filters.items() if v}
        reply = await call(session, "GET", "/v1/certificates", params=params)
        profiles_reply = await call(session, "GET", "/v1/profiles")
        profile_names = sorted(p["name"] for p in profiles_reply.body) if profiles_reply.ok else []
        connector_names = sorted({p["connector"] for p in profiles_reply.body}) if profiles_reply.ok else []
        error, rows = None, []
        if reply.ok:
            now = clock()
            for cert in reply.body["certificates"]:
                days = views.days_left(cert.get("not_after"), now)
                rows.append({**cert, "days": days, "urgency": views.urgency(days, cert.get("status", ""))})
        else:
            error = views.problem_errors(reply, set(filters), {"expiring_within_days": "expiring_within_days"})
        return page(request, "certificates.html", session, rows=rows, filters=filters, filtered=bool(params), error=error,
                    statuses=views.INVENTORY_STATUSES, profile_names=profile_names, connector_names=connector_names,
                    section="certificates")

    async def request_page(request: Request, session: Session, *, values: dict[str, Any],
                           errors: views.FormErrors | None = None, status: int = 200) -> Response:
        reply = await call(session, "GET", "/v1/profiles")
        usable = [p for p in (reply.body if reply.ok else []) if session.identity in p.get("allowed_requesters", [])]
        return page(request, "request_form.html", session, status=status, values=values, errors=errors or views.FormErrors(),
                    profiles=usable, section="certificates")

    @router.get("/requests/new")
    @guarded
    async def request_new(request: Request) -> Response:
        session = await signed_in(request)
        return await request_page(request, session, values={"request_id": f"console-{uuid.uuid4()}",
                                                            "certificate_id": request.query_params.get("certificate_id", "")})

    @router.post("/requests/new")
    @guarded
    async def request_create(request: Request) -> Response:
        session, form = await posted(request)
        body: dict[str, Any] = {"request_id": form.text("request_id"), "profile": form.text("profile"),
                                "certificate_id": form.text("certificate_id")}
        if form.text("csr"):
            body["csr"] = form.get("csr").strip() + "\n"
        sans = [s for s in form.get("sans").replace(",", " ").split() if s]
        if sans:
            body["sans"] = [s if ":" in s else f"dns:{s}" for s in sans]
        reply = await call(session, "POST", "/v1/certificates", json=body)
        if reply.ok:
            session.flash("ok", f"Request {reply.body['request_id']} {reply.body.get('status', 'accepted')}"
                                + (" (sent before: the same answer again)" if reply.body.get("replayed") else "")
                                + ": queued for emCA.")
            return redirect(f"{CERTIFICATES}/{seg(body['certificate_id'])}")
        errors = views.problem_errors(reply, {"request_id", "profile", "certificate_id", "csr", "sans"})
        values = {k: v for k, v in form.fields.items() if k != "csrf"}
        if reply.code == "PRIVATE_KEY_SUBMITTED":
            values["csr"] = ""  # never shown back
        return await request_page(request, session, values=values, errors=errors, status=reply.status)

    async def timeline(session: Session, certificate_id: str, detail: dict[str, Any]) -> list[dict[str, Any]]:
        """Admins and auditors (who may read the audit log) see every record naming the certificate
        (services/common/audit_trail.py); requesters the timelines of their own requests, through /v1."""
        claims = TokenClaims(session.token_id, session.identity, Role(session.role), session.profiles)
        if authorise(claims, Action.AUDIT_READ).allowed:
            from services.common.audit_trail import trail

            def load() -> list[dict[str, Any]]:
                with read_session(engine) as db:
                    found = trail(db, certificate_id)
                request_ids = {r["request_id"] for r in detail.get("requests", [])}
                return [{"timestamp": e.timestamp.isoformat() if e.timestamp else None, "event_type": e.event_type,
                         "topic": e.topic, "summary": e.summary, "duplicate_of": e.duplicate_of, "request_id": e.request_id}
                        for e in found.entries if e.certificate_id == certificate_id or e.request_id in request_ids]

            return await asyncio.to_thread(load)
        merged: dict[int, dict[str, Any]] = {}
        for req in detail.get("requests", [])[:50]:
            reply = await call(session, "GET", f"/v1/requests/{seg(req['request_id'])}/timeline")
            if reply.ok:
                for entry in reply.body["entries"]:
                    merged[entry["row_id"]] = entry
        return [merged[k] for k in sorted(merged)]

    @router.get("/certificates/{certificate_id:path}")
    @guarded
    async def certificate(request: Request, certificate_id: str) -> Response:
        session = await signed_in(request)
        reply = await call(session, "GET", f"/v1/certificates/{seg(certificate_id)}")
        if not reply.ok:
            return page(request, "error.html", session, status=reply.status, code=reply.code, message=reply.message)
        detail = reply.body
        states = []
        for req in detail.get("requests", [])[-10:]:
            status_reply = await call(session, "GET", f"/v1/requests/{seg(req['request_id'])}")
            state = status_reply.body.get("state") if status_reply.ok else req["status"]
            error = ((status_reply.body.get("result") or {}).get("error") if status_reply.ok else None) or None
            states.append({**req, "state": state, "error": error})
        inventory = detail.get("inventory") or {}
        days = views.days_left(inventory.get("not_after"), clock())
        return page(request, "certificate.html", session, cert=detail, inventory=inventory, requests=list(reversed(states)),
                    entries=await timeline(session, certificate_id, detail), days=days,
                    urgency=views.urgency(days, detail.get("status", "")), reasons=views.REASONS,
                    revoke_request_id=f"console-{uuid.uuid4()}", section="certificates")

    @router.post("/certificates/{certificate_id:path}/revoke")
    @guarded
    async def revoke(request: Request, certificate_id: str) -> Response:
        session, form = await posted(request)
        body: dict[str, Any] = {"request_id": form.text("request_id"), "reason": form.text("reason"),
                                "replace": bool(form.get("replace"))}
        reply = await call(session, "POST", f"/v1/certificates/{seg(certificate_id)}/revoke", json=body)
        if reply.ok:
            session.flash("ok", f"Revocation {reply.body['request_id']} ({body['reason']}) accepted: queued for emCA.")
        else:
            session.flash("error", f"Revocation refused: {reply.code}: {reply.message}")
        return redirect(f"{CERTIFICATES}/{seg(certificate_id)}")

    @router.api_route("/{rest:path}", methods=["GET", "POST"])
    async def not_found(request: Request, rest: str) -> Response:
        session = sessions.get(request.cookies.get(COOKIE))
        return page(request, "error.html", session, status=404, code="NOT_FOUND", message=f"no console page {PREFIX}/{quote(rest)}")

    return router
