"""The deployer's internal HTTP API (decision 0020): its deployment targets and bindings, for the
gateway (and through it the console), on the deployer's own HTTP port under ``/internal/v1``, every
route behind the internal bearer token (services/common/internal_api.py). Writes go through the one
path (services/deployer/config/) and name their actor in ``X-Certrail-Actor`` (400 ACTOR_REQUIRED
without a valid one); the caller authorises, the deployer records who it says acted.

Routes (docs/deployer.md, "Targets API (internal)"):
- ``GET /internal/v1/targets`` -> ``{"targets": [view...]}``; ``GET /internal/v1/targets/{name}`` -> a view
- ``PUT /internal/v1/targets/{name}`` body ``{"kind", "config", "secrets"}`` (secret values, write-only;
  probed first) -> 201 (added) / 200 (replaced), a view
- ``DELETE /internal/v1/targets/{name}`` -> 204; 409 TARGET_IN_USE while bound
- ``POST /internal/v1/targets/{name}/probe`` -> ``{"target", "reachable", "code", "message"}``
- ``GET /internal/v1/bindings?profile=`` -> ``{"bindings": [{"profile", "target"}...]}``
- ``PUT`` / ``DELETE /internal/v1/profiles/{profile}/targets/{target}`` -> 201 (200: already bound) / 204
- ``POST /internal/v1/refusals`` body ``{"action", "target", "profile", "code", "message", "fields"}``: a change
  the caller refused itself (the gateway: 403, 422), recorded as its admin event with outcome refused
  -> 201 ``{"recorded": true|false}`` (false: the names cannot be a target's or a profile's)

A view is ``{"name", "kind", "config", "secrets": [names], "profiles"}``: never a secret value. Errors are
``{"code", "message"}`` with a stable code; a refused body is described without its input.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from services.common.connectors.secretbox import SecretBox
from services.common.contracts.identity import IDENTITY_PATTERN
from services.common.db import read_session
from services.common.db_schema import DeployerTargetRow
from services.common.internal_api import InternalAuthError, require_token, unauthenticated
from services.deployer import store
from services.deployer.config import targets as one_path
from services.deployer.config.change import Actor, ConfigCode, Refused
from services.deployer.config.probe import probe_target
from services.deployer.targets.base import TargetError

ACTOR_HEADER = "X-Certrail-Actor"


class InternalCode(StrEnum):
    """This API's own codes (beside ConfigCode and ErrorCode)."""

    ACTOR_REQUIRED = "ACTOR_REQUIRED"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"


class TargetBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(max_length=32)
    config: dict[str, Any]
    secrets: dict[str, Annotated[str, Field(max_length=65536)]] = Field(default_factory=dict, max_length=16)


class RefusalReport(BaseModel):
    """A change the caller refused before asking for it: what it was, why, and the names of the refused
    body's fields (never their values)."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["put_target", "remove_target", "bind", "unbind"]
    target: str = Field(min_length=1, max_length=200)
    profile: str | None = Field(default=None, min_length=1, max_length=200)
    code: str = Field(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")
    message: str = Field(min_length=1, max_length=2000)
    fields: list[Annotated[str, Field(max_length=200)]] = Field(default_factory=list, max_length=64)


def _problem(code: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"code": str(code), "message": message}, status_code=status)


def _view(spec: store.TargetSpec, profiles: list[str]) -> dict[str, Any]:
    return {"name": spec.name, "kind": spec.kind.value, "config": spec.config.model_dump(mode="json"),
            "secrets": list(spec.secret_names), "profiles": profiles}


def _exists(session: Any, name: str) -> bool:
    return session.get(DeployerTargetRow, name) is not None


def _read_view(session: Any, name: str, box: SecretBox) -> dict[str, Any]:
    """One target's view; its secrets are decrypted for their names only."""
    spec = store.get_target(session, name, box)
    return _view(spec, [p for p, t in store.bindings(session) if t == name])


def create_internal_app(engine: Engine, box: SecretBox, token: Any, clock: Callable[[], datetime], *,
                        changed: Callable[[], None] = lambda: None) -> FastAPI:
    """The ``/internal/v1`` app over the deployer's database; ``token``: the expected bearer token (None
    refuses every request); ``changed``: called after a change was recorded (wakes the outbox relay)."""
    app = FastAPI(title="certrail deployer (internal)", openapi_url=None, docs_url=None, redoc_url=None,
                  dependencies=[Depends(require_token(token))])
    app.add_exception_handler(InternalAuthError, unauthenticated)  # type: ignore[arg-type]

    @app.exception_handler(Refused)
    async def on_refused(_: Request, refused: Refused) -> JSONResponse:
        return _problem(refused.code, refused.message, refused.status)

    @app.exception_handler(store.TargetNotFound)
    async def on_missing(_: Request, error: store.TargetNotFound) -> JSONResponse:
        return _problem(ConfigCode.TARGET_NOT_FOUND, str(error), 404)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, error: RequestValidationError) -> JSONResponse:  # never the input: it may hold secrets
        text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return _problem(ConfigCode.INVALID_INPUT, text[:2000], 422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: InternalCode.NOT_FOUND, 405: InternalCode.METHOD_NOT_ALLOWED}.get(error.status_code, f"HTTP_{error.status_code}")
        return _problem(code, str(error.detail), error.status_code)

    def actor(x_certrail_actor: Annotated[str | None, Header(alias=ACTOR_HEADER)] = None) -> Actor:
        if x_certrail_actor is None or re.fullmatch(IDENTITY_PATTERN, x_certrail_actor) is None:
            raise Refused(InternalCode.ACTOR_REQUIRED, f"a change names its actor in {ACTOR_HEADER} (an identity)", 400)
        return Actor(engine, x_certrail_actor, clock)

    async def read(fn: Callable[..., Any], *args: Any) -> Any:
        def run() -> Any:
            with read_session(engine) as session:
                return fn(session, *args)
        return await asyncio.to_thread(run)

    def listed(session: Any) -> list[dict[str, Any]]:
        bound: dict[str, list[str]] = {}
        for profile, target in store.bindings(session):
            bound.setdefault(target, []).append(profile)
        return [_view(store.get_target(session, spec.name, box), bound.get(spec.name, []))
                for spec in store.list_targets(session)]

    @app.get("/internal/v1/targets")
    async def targets() -> dict[str, Any]:
        return {"targets": await read(listed)}

    @app.get("/internal/v1/targets/{name}")
    async def target(name: str) -> dict[str, Any]:
        return await read(_read_view, name, box)

    @app.put("/internal/v1/targets/{name}")
    async def put_target(name: str, body: TargetBody, acting: Actor = Depends(actor)) -> JSONResponse:
        existed = await read(_exists, name)
        try:
            await one_path.put_target(acting, box, name=name, kind=body.kind, config=body.config, secrets=body.secrets,
                                      replace=True)
        finally:
            changed()
        return JSONResponse(await read(_read_view, name, box), status_code=200 if existed else 201)

    @app.delete("/internal/v1/targets/{name}", status_code=204)
    async def delete_target(name: str, acting: Actor = Depends(actor)) -> Response:
        try:
            await asyncio.to_thread(one_path.remove_target, acting, name)
        finally:
            changed()
        return Response(status_code=204)

    @app.post("/internal/v1/targets/{name}/probe")
    async def probe(name: str) -> dict[str, Any]:
        spec = await asyncio.to_thread(lambda: _with_secrets(engine, box, name))
        try:
            await probe_target(spec)
        except TargetError as exc:
            return {"target": name, "reachable": False, "code": exc.code.value, "message": exc.message}
        return {"target": name, "reachable": True, "code": None, "message": None}

    @app.get("/internal/v1/bindings")
    async def bindings(profile: Annotated[str | None, Query(max_length=200)] = None) -> dict[str, Any]:
        found = await read(store.bindings, profile)
        return {"bindings": [{"profile": p, "target": t} for p, t in found]}

    @app.put("/internal/v1/profiles/{profile}/targets/{target}")
    async def bind(profile: str, target: str, acting: Actor = Depends(actor)) -> JSONResponse:
        try:
            added = await asyncio.to_thread(one_path.bind, acting, profile, target)
        finally:
            changed()
        return JSONResponse({"profile": profile, "target": target}, status_code=201 if added else 200)

    @app.delete("/internal/v1/profiles/{profile}/targets/{target}", status_code=204)
    async def unbind(profile: str, target: str, acting: Actor = Depends(actor)) -> Response:
        try:
            await asyncio.to_thread(one_path.unbind, acting, profile, target)
        finally:
            changed()
        return Response(status_code=204)

    @app.post("/internal/v1/refusals", status_code=201)
    async def refusal(report: RefusalReport, acting: Actor = Depends(actor)) -> dict[str, bool]:
        if report.action in ("bind", "unbind") and report.profile is None:
            raise Refused(ConfigCode.INVALID_INPUT, f"a refused {report.action} names its profile")
        try:
            recorded = await asyncio.to_thread(
                one_path.record_refusal, acting, report.action, target=report.target, profile=report.profile,
                code=report.code, message=report.message, fields=report.fields)
        finally:
            changed()
        return {"recorded": recorded}

    return app


def _with_secrets(engine: Engine, box: SecretBox, name: str) -> store.TargetSpec:
    with read_session(engine) as session:
        return store.get_target(session, name, box)
