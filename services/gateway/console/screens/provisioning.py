"""Certificates → Provisioning: the provisioning bots (profiles) and Configure Bot (create and
edit), through ``/v1/profiles``; the Certificate Authority dropdown lists the enabled connectors."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.gateway.console import views
from services.gateway.console.client import seg
from services.gateway.console.context import Console, ConsoleDep
from services.gateway.console.pages import PREFIX, guarded, page, posted, redirect, refused, signed_in
from services.gateway.console.sessions import Session

PROVISIONING = f"{PREFIX}/certificates/provisioning"

router = APIRouter(prefix=PROVISIONING)


async def enabled_connectors(console: Console, session: Session) -> tuple[list[dict[str, Any]], str | None]:
    reply = await console.call(session, "GET", "/v1/connectors")
    if not reply.ok:
        return [], f"{reply.code}: {reply.message}"
    return [c for c in reply.body if c.get("status") == "enabled"], None


async def profile_page(console: Console, request: Request, session: Session, *, mode: str, values: dict[str, Any],
                       errors: views.FormErrors | None = None, status: int = 200) -> Response:
    cas, cas_error = await enabled_connectors(console, session)
    return page(console, request, "profile_form.html", session, status=status, mode=mode, values=values,
                errors=errors or views.FormErrors(), cas=cas, cas_error=cas_error, algorithms=views.BOT_ALGORITHMS,
                section="provisioning")


@router.get("")
@guarded
async def profiles(request: Request, console: ConsoleDep) -> Response:
    session = await signed_in(console, request)
    reply = await console.call(session, "GET", "/v1/profiles")
    if not reply.ok:
        return refused(console, request, session, reply)
    return page(console, request, "profiles.html", session, profiles=reply.body, section="provisioning")


@router.get("/new")
@guarded
async def profile_new(request: Request, console: ConsoleDep) -> Response:
    session = await signed_in(console, request)
    return await profile_page(console, request, session, mode="create", values=dict(views.NEW_PROFILE_VALUES))


@router.post("/new")
@guarded
async def profile_create(request: Request, console: ConsoleDep) -> Response:
    session, form = await posted(console, request)
    reply = await console.call(session, "POST", "/v1/profiles", json=views.profile_body(form))
    if reply.ok:
        session.flash("ok", f"Provisioning bot {reply.body['name']} configured on {reply.body['connector']}.")
        return redirect(PROVISIONING)
    errors = views.problem_errors(reply, views.PROFILE_FIELD_NAMES, views.PROFILE_ALIASES)
    return await profile_page(console, request, session, mode="create", values=views.profile_form_values(form),
                              errors=errors, status=reply.status)


@router.get("/{name}/edit")
@guarded
async def profile_edit_form(request: Request, console: ConsoleDep, name: str) -> Response:
    session = await signed_in(console, request)
    reply = await console.call(session, "GET", f"/v1/profiles/{seg(name)}")
    if not reply.ok:
        return refused(console, request, session, reply)
    return await profile_page(console, request, session, mode="edit", values=views.profile_values(reply.body))


@router.post("/{name}/edit")
@guarded
async def profile_edit(request: Request, console: ConsoleDep, name: str) -> Response:
    session, form = await posted(console, request)
    body = {**views.profile_body(form), "name": name}
    reply = await console.call(session, "PUT", f"/v1/profiles/{seg(name)}", json=body)
    if reply.ok:
        session.flash("ok", f"Provisioning bot {name} saved (revision {reply.body.get('revision')}).")
        return redirect(PROVISIONING)
    errors = views.problem_errors(reply, views.PROFILE_FIELD_NAMES, views.PROFILE_ALIASES)
    return await profile_page(console, request, session, mode="edit", values={**views.profile_form_values(form), "name": name},
                              errors=errors, status=reply.status)
