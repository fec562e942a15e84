"""``/internal/v1/connectors`` on the issuer's port (decisions 0020 and 0034): the connector registry for the gateway
(its ``/v1/connectors`` and the console) and ``certrail connectors``, behind the internal token. The caller
authorises (the gateway's operator tokens) and names the actor in ``X-Certrail-Actor`` for every change; the issuer
validates against emCA, stores, and records the admin event in its outbox in the change's transaction.

- ``GET  /internal/v1/connectors`` -> ``{"connectors": [view...]}``; ``GET /internal/v1/connectors/{name}`` ->
  ``{"connector": view}`` (views: secrets as ``***``)
- ``POST /internal/v1/connectors`` body: the spec (models.spec_to_wire) -> 201 ``{"connector", "change", "events"}``
- ``PATCH /internal/v1/connectors/{name}`` body: the edit (models.edit_to_wire) -> ``{"connector", "change", "events"}``
- ``POST .../{name}/activate``, ``.../{name}/deactivate`` (body ``{"reason"}``) -> ``{"connector", "events"}``
- ``POST .../{name}/test`` -> ``{"ok", "status", "checks", "connector"}``
- ``DELETE .../{name}`` -> ``{"deleted": name, "events"}`` (whether the connector is in use is the caller's check, made
  before: the gateway's own projections know its profiles and live certificates)
- ``POST /internal/v1/connectors/rotate-secrets`` -> ``{"rotated", "already_current", "failed"}``
- ``POST /internal/v1/connectors/refusals`` body ``{"action", "connector", "code", "message", "change"}``: a change
  the caller refused at its own door (authorisation, the body), recorded as that change's event, outcome refused

``events``: the admin events the change recorded, each the CloudEvent exactly as stored in the outbox (and as the
relay publishes it): the gateway folds them into its view of the connectors at once, and again, harmlessly, when it
consumes them. Refusals are ``{"code", "message"}`` with a 4xx (the caller maps the code to its own answer).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError
from sqlalchemy import Engine
from starlette.responses import JSONResponse

from services.common.admin_outbox import Actor
from services.common.connectors.models import (
    ChangeAction,
    ConnectorError,
    RegistryCode,
    edit_from_wire,
    spec_from_wire,
)
from services.common.contracts.errors import ErrorCode
from services.common.contracts.identity import IDENTITY_PATTERN
from services.issuer.registry import changes, outbox
from services.issuer.registry.registry import ConnectorRegistry, input_error

ACTOR_HEADER = "X-Certrail-Actor"
PREFIX = "/internal/v1/connectors"
_ACTOR = re.compile(IDENTITY_PATTERN)
_STATUS = {
    ErrorCode.CONNECTOR_NOT_FOUND.value: 404,
    RegistryCode.CONNECTOR_EXISTS.value: 409,
    RegistryCode.CONNECTOR_IN_USE.value: 409,
    RegistryCode.CHANGED_MEANWHILE.value: 409,
}


class ConnectorRefused(Exception):
    """A refusal of this API: the registry's (its code) or of the call itself (no actor, a body off the wire format)."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message
        self.status = status or _STATUS.get(code, 422)


async def on_refused(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ConnectorRefused)
    return JSONResponse({"code": error.code, "message": error.message}, status_code=error.status)


class Deactivation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=2000)


class RefusalReport(BaseModel):
    """A change the caller refused at its door, to be recorded as its admin event (outcome refused)."""

    model_config = ConfigDict(extra="forbid")

    action: ChangeAction
    connector: str = Field(max_length=300)  # recorded only when it is a valid connector name
    code: str = Field(min_length=1, max_length=100)
    message: str = Field(min_length=1, max_length=2000)
    change: dict[str, JsonValue] = Field(default_factory=dict)


def _refused(error: ConnectorError) -> ConnectorRefused:
    return ConnectorRefused(str(error.code), error.message)


def connector_router(registry: ConnectorRegistry, engine: Engine, clock: Callable[[], datetime], *,
                     changed: Callable[[], None] = lambda: None) -> APIRouter:
    """The routes over ``registry`` (whose outbox is in ``engine``); ``changed``: called after a change was recorded
    (wakes the outbox relay)."""
    api = APIRouter(prefix=PREFIX)

    def actor(x_certrail_actor: Annotated[str | None, Header(alias=ACTOR_HEADER)] = None) -> Actor:
        if x_certrail_actor is None or not _ACTOR.fullmatch(x_certrail_actor):
            raise ConnectorRefused(ErrorCode.SCHEMA_VIOLATION.value, f"{ACTOR_HEADER} must name the acting identity", 400)
        return Actor(engine, x_certrail_actor, clock)

    async def body_of(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ConnectorRefused(RegistryCode.INVALID_INPUT.value, "the body is not a JSON object")
        return body

    async def run(acting: Actor, call: Any) -> tuple[Any, list[str]]:
        """The change and the admin events it recorded (as stored: the caller folds the very events its consumers
        will read, same ids and times)."""
        try:
            change = await call
        except ConnectorError as error:
            raise _refused(error) from None
        finally:
            if acting.recorded:
                changed()
        rows = await asyncio.to_thread(outbox.OUTBOX.rows_by_seq, engine, list(acting.recorded))
        return change, [r.value for r in rows]

    @api.get("")
    async def listed() -> dict[str, Any]:
        return {"connectors": [c.describe() for c in await asyncio.to_thread(registry.list)]}

    @api.get("/{name}")
    async def shown(name: str) -> dict[str, Any]:
        try:
            connector = await asyncio.to_thread(registry.get, name)
        except ConnectorError as error:
            raise _refused(error) from None
        return {"connector": connector.describe()}

    @api.post("", status_code=201)
    async def create(request: Request, acting: Actor = Depends(actor)) -> dict[str, Any]:
        values = await body_of(request)
        try:
            spec = spec_from_wire(values)
        except ValidationError as exc:
            error = input_error(exc)
            raise ConnectorRefused(str(error.code), error.message) from None
        except ValueError as exc:
            raise ConnectorRefused(RegistryCode.INVALID_INPUT.value, str(exc)) from None
        change, events = await run(acting, changes.create_connector(acting, registry, spec))
        assert change.connector_after is not None
        return {"connector": change.connector_after.describe(), "change": change.change, "events": events}

    @api.patch("/{name}")
    async def update(name: str, request: Request, acting: Actor = Depends(actor)) -> dict[str, Any]:
        values = await body_of(request)
        try:
            edit = edit_from_wire(values)
        except ValidationError as exc:
            error = input_error(exc)
            raise ConnectorRefused(str(error.code), error.message) from None
        except ValueError as exc:
            raise ConnectorRefused(RegistryCode.INVALID_INPUT.value, str(exc)) from None
        change, events = await run(acting, changes.update_connector(acting, registry, name, edit))
        assert change.connector_after is not None
        return {"connector": change.connector_after.describe(), "change": change.change, "events": events}

    @api.post("/rotate-secrets")
    async def rotate(acting: Actor = Depends(actor)) -> dict[str, Any]:
        try:
            report = await asyncio.to_thread(changes.rotate_secrets, acting, registry)
        finally:
            if acting.recorded:
                changed()
        return {"rotated": list(report.rotated), "already_current": list(report.already_current), "failed": report.failed}

    @api.post("/refusals", status_code=201)
    async def refusal(report: RefusalReport, acting: Actor = Depends(actor)) -> dict[str, bool]:
        recorded = await asyncio.to_thread(changes.record_refusal, acting, report.action, report.connector, report.code,
                                           report.message, dict(report.change))
        if recorded:
            changed()
        return {"recorded": recorded}

    @api.post("/{name}/activate")
    async def activate(name: str, acting: Actor = Depends(actor)) -> dict[str, Any]:
        change, events = await run(acting, changes.enable_connector(acting, registry, name))
        assert change.connector_after is not None
        return {"connector": change.connector_after.describe(), "events": events}

    @api.post("/{name}/deactivate")
    async def deactivate(name: str, body: Deactivation | None = None, acting: Actor = Depends(actor)) -> dict[str, Any]:
        reason = body.reason if body is not None else None
        change, events = await run(acting, changes.disable_connector(acting, registry, name, reason))
        assert change.connector_after is not None
        return {"connector": change.connector_after.describe(), "events": events}

    @api.post("/{name}/test")
    async def test(name: str, acting: Actor = Depends(actor)) -> dict[str, Any]:  # noqa: ARG001 - who tested: logged by the caller
        try:
            connector, report = await registry.test(name)
        except ConnectorError as error:
            raise _refused(error) from None
        return {"ok": bool(connector.last_test and connector.last_test.ok), "status": connector.status.value,
                "checks": [{"check": c.check, "ok": c.ok, "code": c.code, "message": c.message} for c in report.checks],
                "connector": connector.describe()}

    @api.delete("/{name}")
    async def delete(name: str, acting: Actor = Depends(actor)) -> dict[str, Any]:
        _, events = await run(acting, changes.delete_connector(acting, registry, name))
        return {"deleted": name, "events": events}

    return api


def install(app: Any, router: APIRouter) -> None:
    """Add the connector routes and their refusal answers to the issuer's internal app."""
    app.add_exception_handler(ConnectorRefused, on_refused)
    app.include_router(router)
