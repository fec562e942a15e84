"""Certificates → one certificate: its facts, its requests and their state, its timeline, and
Revoke with an RFC 5280 reason."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.gateway.api_certificates import unavailable_problem
from services.gateway.auditor_api import AuditorApi, AuditorUnavailable
from services.gateway.console import views
from services.gateway.console.client import seg
from services.gateway.console.context import Console, ConsoleDep
from services.gateway.console.pages import PREFIX, guarded, page, posted, redirect, refused, signed_in
from services.gateway.console.sessions import Session
from services.gateway.policy.tokens import Action, Role, TokenClaims, authorise

CERTIFICATES = f"{PREFIX}/certificates"

router = APIRouter(prefix=CERTIFICATES)


async def timeline(console: Console, session: Session, certificate_id: str, detail: dict[str, Any],
                   auditor: AuditorApi) -> list[dict[str, Any]]:
    """Admins and auditors (who may read the audit log) see every record naming the certificate (the
    auditor's internal API, decision 0020; the page was shown only after ``/v1`` let them read the
    certificate); requesters the timelines of their own requests, through /v1."""
    claims = TokenClaims(session.token_id, session.identity, Role(session.role), session.profiles)
    if authorise(claims, Action.AUDIT_READ).allowed:
        try:
            found = await auditor.certificate_trail(certificate_id)
        except AuditorUnavailable as exc:
            raise unavailable_problem(exc) from None
        return [{"timestamp": e.timestamp.isoformat() if e.timestamp else None, "event_type": e.event_type,
                 "topic": e.topic, "summary": e.summary, "duplicate_of": e.duplicate_of, "request_id": e.request_id}
                for e in found.entries]
    merged: dict[int, dict[str, Any]] = {}
    for req in detail.get("requests", [])[:50]:
        reply = await console.call(session, "GET", f"/v1/requests/{seg(req['request_id'])}/timeline")
        if reply.ok:
            for entry in reply.body["entries"]:
                merged[entry["row_id"]] = entry
    return [merged[k] for k in sorted(merged)]


async def request_states(console: Console, session: Session, detail: dict[str, Any]) -> list[dict[str, Any]]:
    """The certificate's last ten requests, each with its state (and error) as ``/v1/requests`` tells it."""
    states = []
    for req in detail.get("requests", [])[-10:]:
        status_reply = await console.call(session, "GET", f"/v1/requests/{seg(req['request_id'])}")
        state = status_reply.body.get("state") if status_reply.ok else req["status"]
        error = ((status_reply.body.get("result") or {}).get("error") if status_reply.ok else None) or None
        states.append({**req, "state": state, "error": error})
    return states


@router.get("/{certificate_id:path}")
@guarded
async def certificate(request: Request, console: ConsoleDep, certificate_id: str) -> Response:
    session = await signed_in(console, request)
    reply = await console.call(session, "GET", f"/v1/certificates/{seg(certificate_id)}")
    if not reply.ok:
        return refused(console, request, session, reply)
    detail = reply.body
    states = await request_states(console, session, detail)
    inventory = detail.get("inventory") or {}
    days = views.days_left(inventory.get("not_after"), console.clock())
    return page(console, request, "certificate.html", session, cert=detail, inventory=inventory,
                requests=list(reversed(states)), entries=await timeline(console, session, certificate_id, detail, request.app.state.auditor),
                days=days, urgency=views.urgency(days, detail.get("status", "")), reasons=views.REASONS,
                revoke_request_id=f"console-{uuid.uuid4()}", section="certificates")


@router.post("/{certificate_id:path}/revoke")
@guarded
async def revoke(request: Request, console: ConsoleDep, certificate_id: str) -> Response:
    session, form = await posted(console, request)
    body: dict[str, Any] = {"request_id": form.text("request_id"), "reason": form.text("reason"),
                            "replace": bool(form.get("replace"))}
    reply = await console.call(session, "POST", f"/v1/certificates/{seg(certificate_id)}/revoke", json=body)
    if reply.ok:
        session.flash("ok", f"Revocation {reply.body['request_id']} ({body['reason']}) accepted: queued for emCA.")
    else:
        session.flash("error", f"Revocation refused: {reply.code}: {reply.message}")
    return redirect(f"{CERTIFICATES}/{seg(certificate_id)}")
