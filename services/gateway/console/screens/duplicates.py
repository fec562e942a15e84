"""Certificates → Duplicates: possible duplicate issuances (emCA 4.2.x, no applicationId dedupe) and their
resolution. The list is ``GET /v1/duplicates`` with the user's token (admins and auditors); an admin resolves one
with the extra certificate's serial found in emCA's console (the issuer checks it and revokes it as superseded) or
states there is none, each one ``POST /v1/duplicates/{id}/resolve`` (services/gateway/api_duplicates.py; decision
0032). Refusals are shown with their code."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.gateway.console.client import seg
from services.gateway.console.context import ConsoleDep
from services.gateway.console.pages import PREFIX, guarded, page, posted, redirect, refused, signed_in

DUPLICATES = f"{PREFIX}/certificates/duplicates"
STATES = ("unresolved", "resolved", "all")

router = APIRouter(prefix=DUPLICATES)


@router.get("")
@guarded
async def duplicates(request: Request, console: ConsoleDep, state: str = "unresolved") -> Response:
    session = await signed_in(console, request)
    state = state if state in STATES else "unresolved"
    reply = await console.call(session, "GET", f"/v1/duplicates?state={state}")
    if not reply.ok:
        return refused(console, request, session, reply)
    return page(console, request, "duplicates.html", session, duplicates=reply.body["duplicates"], state=state,
                states=STATES, section="duplicates")


@router.post("/{certificate_id:path}/resolve")
@guarded
async def resolve(request: Request, console: ConsoleDep, certificate_id: str) -> Response:
    session, form = await posted(console, request)
    serial, note, issuance = form.text("extra_serial"), form.text("note"), form.text("issuance_id")
    if form.text("no_extra"):
        body: dict[str, object] = {"no_extra": True}
    elif serial:
        body = {"extra_serial": serial}
    else:
        session.flash("error", f"Resolve {certificate_id}: give the extra certificate's serial, or choose "
                               "“No extra certificate” with a note.")
        return redirect(DUPLICATES)
    body.update({k: v for k, v in (("note", note), ("issuance_id", issuance)) if v})
    reply = await console.call(session, "POST", f"/v1/duplicates/{seg(certificate_id)}/resolve", json=body)
    if not reply.ok:
        session.flash("error", f"Resolve {certificate_id} refused: {reply.code}: {reply.message.rstrip('.')}.")
    elif reply.body["duplicate"].get("resolution") == "revoked":
        session.flash("ok", f"{certificate_id}: extra serial {reply.body['duplicate']['extra_serial']} checked and revoked "
                            "(superseded); its revocation is confirmed on the CA's CRL next.")
    else:
        session.flash("ok", f"{certificate_id}: resolved without an extra certificate.")
    return redirect(DUPLICATES)
