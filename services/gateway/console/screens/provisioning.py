"""Certificates → Provisioning: the provisioning bots (profiles) and Configure Bot (create and
edit), through ``/v1/profiles``; on the same page the Certificate Authority dropdown lists the enabled
connectors and the deployment targets are checkboxes (``/v1/targets``). A submit saves the profile
first, then binds and unbinds exactly the targets whose box changed (bindings.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.gateway.console import views
from services.gateway.console.bindings import Targets, apply_bindings, list_targets
from services.gateway.console.client import Reply, seg
from services.gateway.console.context import Console, ConsoleDep
from services.gateway.console.forms import Form
from services.gateway.console.pages import PREFIX, guarded, page, posted, redirect, refused, signed_in
from services.gateway.console.sessions import Session
from services.gateway.policy import ProvisioningProfile

PROVISIONING = f"{PREFIX}/certificates/provisioning"
#: the fields of a provisioning profile (an edit keeps the stored ones the form does not show)
PROFILE_FIELDS = frozenset(ProvisioningProfile.model_fields)

router = APIRouter(prefix=PROVISIONING)


async def enabled_connectors(console: Console, session: Session) -> tuple[list[dict[str, Any]], str | None]:
    reply = await console.call(session, "GET", "/v1/connectors")
    if not reply.ok:
        return [], f"{reply.code}: {reply.message}"
    return [c for c in reply.body if c.get("status") == "enabled"], None


async def profile_page(console: Console, request: Request, session: Session, *, mode: str, values: dict[str, Any],
                       errors: views.FormErrors | None = None, status: int = 200, chosen: list[str] | None = None,
                       targets: Targets | None = None) -> Response:
    cas, cas_error = await enabled_connectors(console, session)
    targets = targets if targets is not None else await list_targets(console, session)
    if chosen is None:  # the bound ones
        chosen = [t["name"] for t in targets.listed if values.get("name") in t.get("profiles", [])]
    return page(console, request, "profile_form.html", session, status=status, mode=mode, values=values,
                errors=errors or views.FormErrors(), cas=cas, cas_error=cas_error, algorithms=views.BOT_ALGORITHMS,
                targets=targets.listed, targets_error=targets.error, chosen=chosen, section="provisioning")


def profile_errors(reply: Reply) -> views.FormErrors:
    """The API's refusal of a profile; "deployment_target is required ..." goes next to the targets."""
    errors = views.problem_errors(reply, views.PROFILE_FIELD_NAMES, views.PROFILE_ALIASES)
    general, errors.general = errors.general, []
    for text in general:
        errors.add("targets" if "deployment_target" in text else None, text)
    return errors


@router.get("")
@guarded
async def profiles(request: Request, console: ConsoleDep) -> Response:
    session = await signed_in(console, request)
    reply = await console.call(session, "GET", "/v1/profiles")
    if not reply.ok:
        return refused(console, request, session, reply)
    targets = await list_targets(console, session)
    bound: dict[str, list[str]] = {}
    for target in targets.listed:
        for profile in target.get("profiles", []):
            bound.setdefault(profile, []).append(target["name"])
    return page(console, request, "profiles.html", session, profiles=reply.body, bound=bound,
                targets_known=targets.error is None, section="provisioning")


@router.get("/new")
@guarded
async def profile_new(request: Request, console: ConsoleDep) -> Response:
    session = await signed_in(console, request)
    return await profile_page(console, request, session, mode="create", values=dict(views.NEW_PROFILE_VALUES))


async def _saved(console: Console, request: Request, session: Session, form: Form, name: str, done: str) -> Response:
    """After the profile was saved: bind and unbind the targets whose box changed; any refusal is flashed and the
    page shown again (now an edit) with the user's choices."""
    outcome = await apply_bindings(console, session, name, form)
    if not outcome.refusals:
        session.flash("ok", done + outcome.summary())
        return redirect(PROVISIONING)
    session.flash("info", done + outcome.summary())
    for text in outcome.refusals:
        session.flash("error", text)
    values = {**views.profile_form_values(form), "name": name, "deployment_target": views.deployment_target(form) or ""}
    return await profile_page(console, request, session, mode="edit", values=values, chosen=form.getlist("targets"),
                              status=outcome.status)


@router.post("/new")
@guarded
async def profile_create(request: Request, console: ConsoleDep) -> Response:
    session, form = await posted(console, request)
    reply = await console.call(session, "POST", "/v1/profiles", json=views.profile_body(form))
    if reply.ok:
        done = f"Provisioning bot {reply.body['name']} configured on {reply.body['connector']}."
        return await _saved(console, request, session, form, reply.body["name"], done)
    return await profile_page(console, request, session, mode="create", values=views.profile_form_values(form),
                              errors=profile_errors(reply), status=reply.status, chosen=form.getlist("targets"))


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
    stored = await console.call(session, "GET", f"/v1/profiles/{seg(name)}")
    if stored.ok:  # what the form does not show is kept (the PUT replaces the whole profile)
        body = views.profile_edit_body(stored.body, body, PROFILE_FIELDS)
    reply = await console.call(session, "PUT", f"/v1/profiles/{seg(name)}", json=body)
    if reply.ok:
        return await _saved(console, request, session, form, name,
                            f"Provisioning bot {name} saved (revision {reply.body.get('revision')}).")
    return await profile_page(console, request, session, mode="edit", values={**views.profile_form_values(form), "name": name},
                              errors=profile_errors(reply), status=reply.status, chosen=form.getlist("targets"))
