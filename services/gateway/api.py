"""The gateway's HTTP API under ``/v1`` (FastAPI; OpenAPI at ``/openapi.json``, docs at ``/docs``).

``create_api(runtime)`` builds it from a `GatewayRuntime` (services/gateway/app.py routes ``/v1``,
``/docs``, ``/openapi.json`` and ``/redoc`` here). Every ``/v1`` request is authenticated first
by its bearer token (401 before anything is parsed; 429 AUTH_THROTTLED past the limit of failed
authentications, services/gateway/api_throttle.py); routes then authorise by role and profile
scope (403), reads included (a requester reads only the profiles that list it). Every refusal is a problem ``{"code", "message", ...}`` with a precise 4xx status
(services/gateway/api_common.py); FastAPI's own validation errors are re-shaped to
SCHEMA_VIOLATION with the field path, and input values are never echoed (they may be secrets).

Routes: api_connectors.py (connectors), api_profiles.py (provisioning profiles),
api_certificates.py (certificates and requests), api_tokens.py (tokens and requester keys),
acme/ (the ACME door at ``/acme`` and its EAB keys and accounts under ``/v1/acme``; decision 0033),
api_targets.py (deployment targets and bindings, served by the deployer), api_duplicates.py (possible
duplicate issuances, served by the issuer).
docs/gateway.md describes the API with curl examples.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from services.common.contracts.errors import ErrorCode
from services.gateway import api_certificates, api_connectors, api_duplicates, api_profiles, api_targets, api_tokens
from services.gateway.acme import admin as acme_admin
from services.gateway.acme import routes as acme_routes
from services.gateway.acme.finalize import Requests
from services.gateway.acme.settings import AcmeSettings
from services.gateway.api_common import AdminPublisher, ApiCode, Problem, authenticate, bearer, validation_problem
from services.gateway.api_openapi import document_problems
from services.gateway.api_throttle import AuthThrottle, client_address, presented_token_id, throttle_from
from services.gateway.auditor_api import AuditorApi
from services.gateway.deployer_api import DeployerApi
from services.gateway.issuer_api import IssuerApi
from services.gateway.policy import PolicyViolation, ProvisioningProfile

log = logging.getLogger(__name__)

API_VERSION = "1"
#: models of bodies the routes parse themselves (documented through openapi_extra)
BODY_MODELS: tuple[type[BaseModel], ...] = (
    api_connectors.ConnectorCreateBody,
    api_connectors.ConnectorEditBody,
    api_connectors.ConnectorMultipart,
    ProvisioningProfile,
    api_certificates.IssueBody,
    api_certificates.RenewBody,
    api_certificates.RevokeBody,
    api_tokens.TokenBody,
    api_tokens.RequesterKeyBody,
    api_targets.TargetBody,
    api_duplicates.DuplicateResolveBody,
    acme_admin.EabKeyBody,
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def create_api(
    runtime: Any,
    *,
    clock: Callable[[], datetime] = _utc_now,
    throttle: AuthThrottle | None = None,
    auditor: AuditorApi | None = None,
    deployer: DeployerApi | None = None,
    issuer: IssuerApi | None = None,
) -> FastAPI:
    """The HTTP API over ``runtime`` (a GatewayRuntime: engine, topics, intake, box, publish_records,
    settings). ``auditor``: the client of the auditor's internal API (certificate views and timelines; default:
    ``settings.auditor_url``, decision 0020); ``deployer``: the client of the deployer's (deployment targets and
    bindings; default: ``settings.deployer_url``); ``issuer``: the client of the issuer's (the connector registry,
    decision 0034, and possible duplicates; default: ``settings.issuer_url``)."""
    if issuer is None:
        issuer = IssuerApi.from_settings(runtime.settings)
    app = FastAPI(title="certrail gateway", version=API_VERSION, dependencies=[Depends(bearer)],
                  description="Certificate requests, emCA connectors, provisioning profiles and API tokens. "
                              "Authenticate with `Authorization: Bearer ctr_...`. Errors are `{code, message}`.")
    admin = AdminPublisher(runtime.publish_records, runtime.topics, clock)
    if throttle is None:
        throttle = throttle_from(runtime.settings, getattr(runtime, "registry", None))

    app.include_router(api_connectors.router(issuer, runtime.engine, api_connectors.usage_checks(clock)))  # the issuer's (0034)
    app.include_router(api_profiles.router(runtime.engine, admin, clock))
    if auditor is None:
        auditor = AuditorApi.from_settings(runtime.settings)
    app.state.auditor = auditor  # the console's certificate timeline reads it too
    app.include_router(api_certificates.router(runtime, clock, auditor))
    if deployer is None:
        deployer = DeployerApi.from_settings(runtime.settings)
    app.include_router(api_targets.router(deployer))
    app.state.internal_clients = [auditor, deployer, issuer]  # closed with the gateway (app.py)
    app.include_router(api_duplicates.router(issuer))  # the issuer's (0032)
    app.include_router(api_tokens.tokens_router(runtime.engine, admin, clock))
    app.include_router(api_tokens.keys_router(runtime.engine, runtime.box, clock, admin))
    # the ACME door (/acme, RFC 8555) and its admin routes (/v1/acme: EAB keys, accounts); decision 0033
    acme_settings = getattr(runtime.settings, "acme", None) or AcmeSettings()
    http_port = getattr(runtime.settings, "http_port", 8080)
    https_port = getattr(runtime.settings, "https_port", None)  # the HTTPS listener: the door's URL (0033 addendum)
    intake = getattr(runtime, "intake", None)  # finalize and revokeCert go through it (none in some tests' runtimes)
    acme_routes.install(app, engine=runtime.engine, box=runtime.box, settings=acme_settings, http_port=http_port,
                        admin=admin, clock=clock,
                        requests=None if intake is None else Requests(intake, runtime.publish_records),
                        scheduler=getattr(runtime.settings, "scheduler", None),  # renewalInfo's jitter: the scheduler's
                        https_port=https_port)
    app.include_router(acme_admin.admin_router(runtime.engine, runtime.box, admin, clock,
                                               acme_settings.base_url(http_port, https_port) + "/acme/directory"))
    from services.gateway.console import console_router  # the web console: a client of this API
    app.include_router(console_router(runtime, app, clock=clock, throttle=throttle))

    @app.middleware("http")
    async def authenticate_v1(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path.startswith("/v1"):
            authorization = request.headers.get("authorization")
            try:
                request.state.claims = await asyncio.to_thread(authenticate, runtime.engine, authorization, clock())
            except PolicyViolation as violation:  # 401, or 429 AUTH_THROTTLED past the limit of failures
                answered = throttle.failed("api", client_address(request), presented_token_id(authorization), violation)
                return Problem.of(answered).response()
        return await call_next(request)

    @app.exception_handler(Problem)
    async def on_problem(_: Request, problem: Problem) -> JSONResponse:
        return problem.response()

    @app.exception_handler(PolicyViolation)
    async def on_violation(_: Request, violation: PolicyViolation) -> JSONResponse:
        return Problem.of(violation).response()

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return validation_problem(error.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: ApiCode.NOT_FOUND, 405: ApiCode.METHOD_NOT_ALLOWED, 401: ErrorCode.UNAUTHENTICATED,
                 403: ErrorCode.REQUESTER_NOT_AUTHORISED}
        code = codes.get(error.status_code, f"HTTP_{error.status_code}")
        return Problem(code, str(error.detail), status=error.status_code).response()

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error in the HTTP API")
        return Problem(ApiCode.INTERNAL_ERROR, f"unexpected {type(error).__name__}; see the gateway's log").response()

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in BODY_MODELS:
                document = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(document.pop("$defs", {}))
                components[model.__name__] = document
            document_problems(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
