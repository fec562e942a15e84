"""Integrations → ACME: the ACME door's External Account Binding keys, accounts and orders (docs/acme.md, decision 0033).

The lists are ``GET /v1/acme/eab-keys`` (admins), ``GET /v1/acme/accounts`` and ``GET /v1/acme/orders`` (the newest
100, with their authorizations; admins and auditors) with the user's
token; an admin creates a key (``POST /v1/acme/eab-keys``: the HMAC key is shown on the answer page once and kept
nowhere by the console: no flash, no session) and revokes an unused one (``DELETE /v1/acme/eab-keys/{id}``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.gateway.console.client import seg
from services.gateway.console.context import ConsoleDep
from services.gateway.console.pages import PREFIX, guarded, page, posted, redirect, refused, signed_in

ACME = f"{PREFIX}/integrations/acme"

router = APIRouter(prefix=ACME)


@router.get("")
@guarded
async def acme(request: Request, console: ConsoleDep) -> Response:
    session = await signed_in(console, request)
    accounts = await console.call(session, "GET", "/v1/acme/accounts")
    if not accounts.ok:
        return refused(console, request, session, accounts)
    orders = await console.call(session, "GET", "/v1/acme/orders?limit=100")
    if not orders.ok:
        return refused(console, request, session, orders)
    keys = await console.call(session, "GET", "/v1/acme/eab-keys")  # admins only: an auditor sees the accounts
    return page(console, request, "acme.html", session, accounts=accounts.body["accounts"], orders=orders.body["orders"],
                eab_keys=keys.body["eab_keys"] if keys.ok else None, section="acme")


@router.post("/eab-keys")
@guarded
async def create_key(request: Request, console: ConsoleDep) -> Response:
    session, form = await posted(console, request)
    requester = form.text("requester")
    profiles = sorted({p.strip() for p in form.text("profiles").replace(",", " ").split() if p.strip()})
    reply = await console.call(session, "POST", "/v1/acme/eab-keys", json={"requester": requester, "profiles": profiles})
    if not reply.ok:
        session.flash("error", f"New EAB key for {requester or '(no requester)'} refused: {reply.code}: "
                               f"{reply.message.rstrip('.')}.")
        return redirect(ACME)
    return page(console, request, "acme_key.html", session, key=reply.body, section="acme")


@router.post("/eab-keys/{key_id}/revoke")
@guarded
async def revoke_key(request: Request, console: ConsoleDep, key_id: str) -> Response:
    session, _ = await posted(console, request)
    reply = await console.call(session, "DELETE", f"/v1/acme/eab-keys/{seg(key_id)}")
    if reply.ok:
        session.flash("ok", f"EAB key {key_id} revoked: it can no longer create an ACME account.")
    else:
        session.flash("error", f"Revoke {key_id} refused: {reply.code}: {reply.message.rstrip('.')}.")
    return redirect(ACME)
