"""Certificates → Inventory: the certificates the signed-in role may read, filtered by status,
expiry, bot and connector, with the days to expiry coloured by urgency."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.gateway.console import views
from services.gateway.console.context import ConsoleDep
from services.gateway.console.pages import PREFIX, guarded, page, signed_in

CERTIFICATES = f"{PREFIX}/certificates"

router = APIRouter(prefix=CERTIFICATES)


@router.get("")
@guarded
async def certificates(request: Request, console: ConsoleDep) -> Response:
    session = await signed_in(console, request)
    q = request.query_params
    filters = {"status": q.get("status", ""), "expiring_within_days": q.get("expiring_within_days", "").strip(),
               "profile": q.get("profile", ""), "connector": q.get("connector", "")}
    params = {k: v for k, v in filters.items() if v}
    reply = await console.call(session, "GET", "/v1/certificates", params=params)
    profiles_reply = await console.call(session, "GET", "/v1/profiles")
    profile_names = sorted(p["name"] for p in profiles_reply.body) if profiles_reply.ok else []
    connector_names = sorted({p["connector"] for p in profiles_reply.body}) if profiles_reply.ok else []
    error, rows = None, []
    if reply.ok:
        now = console.clock()
        for cert in reply.body["certificates"]:
            days = views.days_left(cert.get("not_after"), now)
            rows.append({**cert, "days": days, "urgency": views.urgency(days, cert.get("status", ""))})
    else:
        error = views.problem_errors(reply, set(filters), {"expiring_within_days": "expiring_within_days"})
    return page(console, request, "certificates.html", session, rows=rows, filters=filters, filtered=bool(params),
                error=error, statuses=views.INVENTORY_STATUSES, profile_names=profile_names,
                connector_names=connector_names, section="certificates")

