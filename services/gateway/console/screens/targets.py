"""Integrations → Deployment Targets: the list, Add target (a form per kind), edit, Probe now and Remove
(with its confirmation). Every change is one ``/v1/targets`` call with the user's token; the deployer
validates and probes (services/gateway/api_targets.py). Secrets are write-only: the API names them, the
form never shows them back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.gateway.api_common import Problem, require
from services.gateway.console import target_views as tv
from services.gateway.console import views
from services.gateway.console.client import Reply, seg
from services.gateway.console.context import Console, ConsoleDep
from services.gateway.console.pages import PREFIX, claims_of, guarded, page, posted, redirect, refused, signed_in
from services.gateway.console.sessions import Session
from services.gateway.policy.tokens import Action

TARGETS = f"{PREFIX}/integrations/targets"
ACTIONS = ("probe", "delete")

router = APIRouter(prefix=TARGETS)


def target_page(console: Console, request: Request, session: Session, *, mode: str, values: dict[str, Any],
                errors: views.FormErrors | None = None, status: int = 200, stored: list[str] | None = None) -> Response:
    kind = values.get("kind") if values.get("kind") in tv.KINDS else "file"
    return page(console, request, "target_form.html", session, status=status, mode=mode, values={**values, "kind": kind},
                errors=errors or views.FormErrors(), fields=tv.TARGET_FIELDS, kinds=tv.KINDS, stored=stored or [],
                section="targets")


@router.get("")
@guarded
async def targets(request: Request, console: ConsoleDep) -> Response:
    session = await signed_in(console, request)
    reply = await console.call(session, "GET", "/v1/targets")
    if not reply.ok:
        return refused(console, request, session, reply)
    return page(console, request, "targets.html", session, targets=reply.body["targets"], where=tv.where, section="targets")


@router.get("/new")
@guarded
async def target_new(request: Request, console: ConsoleDep, kind: str = "file") -> Response:
    session = await signed_in(console, request)
    require(claims_of(session), Action.CONNECTOR_WRITE)  # the API's rule: the form is for those who may send it
    return target_page(console, request, session, mode="create", values={"kind": kind})


@router.post("/new")
@guarded
async def target_create(request: Request, console: ConsoleDep) -> Response:
    session, form = await posted(console, request)
    name, kind = form.text("name"), form.text("kind")
    errors = views.FormErrors()
    if not name:
        errors.add("name", "Give the target a name.")
    elif (await console.call(session, "GET", f"/v1/targets/{seg(name)}")).ok:  # a PUT would replace it
        errors.add("name", f"TARGET_EXISTS: a target named {name!r} exists: edit it, or choose another name.")
    if errors:
        status = 409 if name else 422
        return target_page(console, request, session, mode="create", values=tv.form_values(form), errors=errors, status=status)
    reply = await console.call(session, "PUT", f"/v1/targets/{seg(name)}", json=tv.target_body(form, kind))
    if reply.ok:
        session.flash("ok", f"Target {name} probed and added ({kind}).")
        return redirect(TARGETS)
    return target_page(console, request, session, mode="create", values=tv.form_values(form),
                       errors=tv.refusal_errors(reply, form, kind), status=reply.status)


@router.get("/{name}/edit")
@guarded
async def target_edit_form(request: Request, console: ConsoleDep, name: str) -> Response:
    session = await signed_in(console, request)
    require(claims_of(session), Action.CONNECTOR_WRITE)
    reply = await console.call(session, "GET", f"/v1/targets/{seg(name)}")
    if not reply.ok:
        return refused(console, request, session, reply)
    return target_page(console, request, session, mode="edit", values=tv.stored_values(reply.body),
                       stored=list(reply.body.get("secrets", [])))


@router.post("/{name}/edit")
@guarded
async def target_edit(request: Request, console: ConsoleDep, name: str) -> Response:
    session, form = await posted(console, request)
    current = await console.call(session, "GET", f"/v1/targets/{seg(name)}")
    if not current.ok:
        return refused(console, request, session, current)
    kind = str(current.body.get("kind"))  # the kind is not changed by an edit
    reply = await console.call(session, "PUT", f"/v1/targets/{seg(name)}", json=tv.target_body(form, kind))
    if reply.ok:
        session.flash("ok", f"Target {name} probed and saved.")
        return redirect(TARGETS)
    values = {**tv.form_values(form), "name": name, "kind": kind}
    return target_page(console, request, session, mode="edit", values=values, errors=tv.refusal_errors(reply, form, kind),
                       status=reply.status, stored=list(current.body.get("secrets", [])))


@router.post("/{name}/{action}")
@guarded
async def target_action(request: Request, console: ConsoleDep, name: str, action: str) -> Response:
    session, _ = await posted(console, request)
    if action not in ACTIONS:
        raise Problem("NOT_FOUND", f"no target action {action!r}", status=404)
    if action == "delete":
        reply = await console.call(session, "DELETE", f"/v1/targets/{seg(name)}")
    else:
        reply = await console.call(session, "POST", f"/v1/targets/{seg(name)}/probe")
    _flash_outcome(session, name, action, reply)
    return redirect(TARGETS)


def _flash_outcome(session: Session, name: str, action: str, reply: Reply) -> None:
    if not reply.ok:
        verb = "Remove" if action == "delete" else "Probe of"
        hint = " On Configure Bot, uncheck it for those bots." if reply.code == "TARGET_IN_USE" else ""
        session.flash("error", f"{verb} {name} refused: {reply.code}: {reply.message.rstrip('.')}.{hint}")
    elif action == "delete":
        session.flash("ok", f"Target {name} removed.")
    elif reply.body.get("reachable"):
        session.flash("ok", f"Probe of {name}: reachable.")
    else:
        session.flash("error", f"Probe of {name} failed: {reply.body.get('code')}: {reply.body.get('message')}")


@router.get("/{name}/delete")
@guarded
async def target_delete_confirm(request: Request, console: ConsoleDep, name: str) -> Response:
    session = await signed_in(console, request)
    require(claims_of(session), Action.CONNECTOR_WRITE)
    reply = await console.call(session, "GET", f"/v1/targets/{seg(name)}")
    if not reply.ok:
        return refused(console, request, session, reply)
    return page(console, request, "target_remove.html", session, target=reply.body, where=tv.where, section="targets")
