"""Integrations → CA Connectors: the list, Create emCA Connector, edit, test, activate,
deactivate and delete (with its confirmation). Every change goes through ``/v1/connectors``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.gateway.api_common import Problem
from services.gateway.console import views
from services.gateway.console.client import Reply, seg
from services.gateway.console.context import Console, ConsoleDep
from services.gateway.console.pages import PREFIX, guarded, page, posted, redirect, refused, signed_in
from services.gateway.console.sessions import Session

CONNECTORS = f"{PREFIX}/integrations/connectors"
KNOWN_FIELDS = frozenset({f.name for f in views.CONNECTOR_FIELDS} | {"version"})
ACTIONS = ("test", "activate", "deactivate", "delete")
DONE = {"activate": "validated and activated", "deactivate": "deactivated (its queue is kept)", "delete": "deleted"}

router = APIRouter(prefix=CONNECTORS)


def connector_page(console: Console, request: Request, session: Session, *, mode: str, values: dict[str, Any],
                   errors: views.FormErrors | None = None, status: int = 200,
                   connector: dict[str, Any] | None = None) -> Response:
    return page(console, request, "connector_form.html", session, status=status, mode=mode, values=values,
                errors=errors or views.FormErrors(), fields=views.CONNECTOR_FIELDS, versions=views.VERSIONS,
                connector=connector, section="connectors")


@router.get("")
@guarded
async def connectors(request: Request, console: ConsoleDep) -> Response:
    session = await signed_in(console, request)
    reply = await console.call(session, "GET", "/v1/connectors")
    if not reply.ok:
        return refused(console, request, session, reply)
    return page(console, request, "connectors.html", session, connectors=reply.body, section="connectors")


@router.get("/new")
@guarded
async def connector_new(request: Request, console: ConsoleDep) -> Response:
    session = await signed_in(console, request)
    return connector_page(console, request, session, mode="create", values={"version": "V4.2.4+"})


@router.post("/new")
@guarded
async def connector_create(request: Request, console: ConsoleDep) -> Response:
    session, form = await posted(console, request)
    reply = await console.call(session, "POST", "/v1/connectors", json=views.connector_body(form, create=True))
    if reply.ok:
        session.flash("ok", f"Connector {reply.body['name']} validated against emCA and created: Active.")
        return redirect(CONNECTORS)
    errors = views.problem_errors(reply, set(KNOWN_FIELDS), views.CONNECTOR_ALIASES)
    return connector_page(console, request, session, mode="create", values=views.connector_values(form), errors=errors,
                          status=reply.status)


@router.get("/{name}/edit")
@guarded
async def connector_edit_form(request: Request, console: ConsoleDep, name: str) -> Response:
    session = await signed_in(console, request)
    reply = await console.call(session, "GET", f"/v1/connectors/{seg(name)}")
    if not reply.ok:
        return refused(console, request, session, reply)
    values = {k: v for k, v in reply.body.items() if k not in views.SECRET_NAMES and isinstance(v, str | int)}
    return connector_page(console, request, session, mode="edit", values=values, connector=reply.body)


@router.post("/{name}/edit")
@guarded
async def connector_edit(request: Request, console: ConsoleDep, name: str) -> Response:
    session, form = await posted(console, request)
    reply = await console.call(session, "PATCH", f"/v1/connectors/{seg(name)}", json=views.connector_body(form, create=False))
    if reply.ok:
        session.flash("ok", f"Connector {name} validated again and saved.")
        return redirect(CONNECTORS)
    current = await console.call(session, "GET", f"/v1/connectors/{seg(name)}")
    errors = views.problem_errors(reply, set(KNOWN_FIELDS), views.CONNECTOR_ALIASES)
    values = {**views.connector_values(form), "name": name}
    return connector_page(console, request, session, mode="edit", values=values, errors=errors, status=reply.status,
                          connector=current.body if current.ok else {"name": name})


@router.post("/{name}/{action}")
@guarded
async def connector_action(request: Request, console: ConsoleDep, name: str, action: str) -> Response:
    session, _ = await posted(console, request)
    if action not in ACTIONS:
        raise Problem("NOT_FOUND", f"no connector action {action!r}", status=404)
    if action == "delete":
        reply = await console.call(session, "DELETE", f"/v1/connectors/{seg(name)}")
    else:
        reply = await console.call(session, "POST", f"/v1/connectors/{seg(name)}/{action}")
    _flash_outcome(session, name, action, reply)
    return redirect(CONNECTORS)


def _flash_outcome(session: Session, name: str, action: str, reply: Reply) -> None:
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
        session.flash("ok", f"Connector {name} {DONE[action]}.")


@router.get("/{name}/delete")
@guarded
async def connector_delete_confirm(request: Request, console: ConsoleDep, name: str) -> Response:
    session = await signed_in(console, request)
    reply = await console.call(session, "GET", f"/v1/connectors/{seg(name)}")
    if not reply.ok:
        return refused(console, request, session, reply)
    return page(console, request, "confirm_delete.html", session, connector=reply.body, section="connectors")
