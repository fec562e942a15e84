"""Certificates → Request a certificate (requesters): a bot that lists the signed-in identity,
the certificate id, SANs and a CSR (empty for bot-generated keys), sent to ``POST /v1/certificates``."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.gateway.console import views
from services.gateway.console.client import seg
from services.gateway.console.context import Console, ConsoleDep
from services.gateway.console.forms import Form
from services.gateway.console.pages import PREFIX, guarded, page, posted, redirect, signed_in
from services.gateway.console.sessions import Session

router = APIRouter(prefix=f"{PREFIX}/requests")


async def request_page(console: Console, request: Request, session: Session, *, values: dict[str, Any],
                       errors: views.FormErrors | None = None, status: int = 200) -> Response:
    reply = await console.call(session, "GET", "/v1/profiles")
    usable = [p for p in (reply.body if reply.ok else []) if session.identity in p.get("allowed_requesters", [])]
    return page(console, request, "request_form.html", session, status=status, values=values,
                errors=errors or views.FormErrors(), profiles=usable, section="certificates")


@router.get("/new")
@guarded
async def request_new(request: Request, console: ConsoleDep) -> Response:
    session = await signed_in(console, request)
    return await request_page(console, request, session, values={
        "request_id": f"console-{uuid.uuid4()}", "certificate_id": request.query_params.get("certificate_id", "")})


def request_body(form: Form) -> dict[str, Any]:
    """``POST /v1/certificates``'s body from the form: a bare SAN is a DNS name."""
    body: dict[str, Any] = {"request_id": form.text("request_id"), "profile": form.text("profile"),
                            "certificate_id": form.text("certificate_id")}
    if form.text("csr"):
        body["csr"] = form.get("csr").strip() + "\n"
    sans = [s for s in form.get("sans").replace(",", " ").split() if s]
    if sans:
        body["sans"] = [s if ":" in s else f"dns:{s}" for s in sans]
    return body


@router.post("/new")
@guarded
async def request_create(request: Request, console: ConsoleDep) -> Response:
    session, form = await posted(console, request)
    body = request_body(form)
    reply = await console.call(session, "POST", "/v1/certificates", json=body)
    if reply.ok:
        session.flash("ok", f"Request {reply.body['request_id']} {reply.body.get('status', 'accepted')}"
                            + (" (sent before: the same answer again)" if reply.body.get("replayed") else "")
                            + ": queued for emCA.")
        return redirect(f"{PREFIX}/certificates/{seg(body['certificate_id'])}")
    errors = views.problem_errors(reply, {"request_id", "profile", "certificate_id", "csr", "sans"})
    values = {k: v for k, v in form.fields.items() if k != "csrf"}
    if reply.code == "PRIVATE_KEY_SUBMITTED":
        values["csr"] = ""  # never shown back
    return await request_page(console, request, session, values=values, errors=errors, status=reply.status)
