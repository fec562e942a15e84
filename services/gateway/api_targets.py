"""``/v1/targets`` and ``/v1/profiles/{profile}/targets``: deployment targets and their bindings to
provisioning profiles, over the deployer's internal API (deployer_api.py, decision 0020). Admins write;
admins and auditors read (the connector roles). The gateway authorises and names the token's identity
as the actor; the deployer validates, probes a target before storing it, and records every change,
refused ones too, as an admin event (decision 0019).

The gateway's own refusals of a change (403: the token may not change targets; 413/415/422: the body
is not a target) are reported to the deployer, which records them as the change's admin event with
outcome refused (`report_refusal`); a deployer that cannot be told does not change the answer: the
gateway logs a warning with the code. An unauthenticated call (401) is not recorded.

The deployer's refusals pass through with their code and status (TARGET_NOT_FOUND 404,
TARGET_UNREACHABLE 422, TARGET_IN_USE 409, ...); the deployer unreachable or refusing the gateway's
internal token is 503 SERVICE_UNAVAILABLE with Retry-After. Secret values are write-only: a view names
the target's secrets, never their values. docs/deployer.md, "Targets in the HTTP API"."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from services.gateway.api_common import ApiCode, Problem, body_as, claims_of, json_body_doc, require
from services.gateway.deployer_api import DeployerApi, DeployerRefused, DeployerUnavailable
from services.gateway.policy.tokens import Action, TokenClaims

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
_PROBLEM = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_OBJECT = {"application/json": {"schema": {"type": "object"}}}
#: documented on every route: the deployer did not answer
UNAVAILABLE_DOC: dict[int | str, dict[str, Any]] = {503: {
    "description": "SERVICE_UNAVAILABLE: the deployer did not answer or refused the gateway's internal token; see Retry-After",
    "content": _PROBLEM, "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}}}


class TargetBody(BaseModel):
    """A whole target: its kind, its plain settings and its secrets (write-only: never answered)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=32, description="file, nginx, ssh, webhook, ...")
    config: dict[str, Any] = Field(description="the kind's settings (docs/deployer.md)")
    secrets: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(min_length=1, max_length=65536)]] = Field(
        default_factory=dict, max_length=16, description="secret name -> value (e.g. hmac_secret, client_key)")


def problem_of(error: DeployerRefused | DeployerUnavailable) -> Problem:
    """The gateway's answer to a failed deployer call."""
    if isinstance(error, DeployerRefused):
        return Problem(error.code, error.message, status=error.status)
    return Problem(ApiCode.SERVICE_UNAVAILABLE, f"deployment targets are served by the deployer: {error}; try again later",
                   status=503, headers={"Retry-After": str(RETRY_AFTER_S)})


async def _called(run: Any) -> Any:
    try:
        return await run
    except (DeployerRefused, DeployerUnavailable) as error:
        raise problem_of(error) from None


async def report(deployer: DeployerApi, problem: Problem, action: str, actor: str, target: str,
                 profile: str | None = None) -> None:
    """Have the deployer record a change refused here (best effort: the caller gets its answer anyway)."""
    fields = [str(e.get("field", ""))[:200] for e in problem.extra.get("errors", []) if isinstance(e, dict)]
    try:
        await deployer.report_refusal(action, target=target, profile=profile, actor=actor, code=problem.code,
                                      message=problem.message, fields=[f for f in fields if f])
    except (DeployerRefused, DeployerUnavailable) as error:
        log.warning("the refusal %s of %s %s by %s is not recorded: the deployer did not take it (%s)", problem.code,
                    action, target[:200], actor, error.code if isinstance(error, DeployerRefused) else "unavailable")


def router(deployer: DeployerApi) -> APIRouter:
    api = APIRouter(tags=["targets"], responses=UNAVAILABLE_DOC)

    async def _required(claims: TokenClaims, action: str, target: str, profile: str | None = None) -> None:
        try:
            require(claims, Action.CONNECTOR_WRITE)
        except Problem as problem:
            await report(deployer, problem, action, claims.identity, target, profile)
            raise

    @api.get("/v1/targets", summary="List deployment targets (secret names, never values)")
    async def list_(claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        require(claims, Action.CONNECTOR_READ)
        return {"targets": await _called(deployer.targets())}

    @api.get("/v1/targets/{name}", summary="Show a deployment target and the profiles bound to it")
    async def show(name: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        require(claims, Action.CONNECTOR_READ)
        return await _called(deployer.target(name))  # type: ignore[no-any-return]

    @api.put("/v1/targets/{name}", summary="Add (201) or replace (200) a target; the deployer probes it first",
             openapi_extra=json_body_doc(TargetBody), responses={201: {"description": "added: the target's view", "content": _OBJECT}})
    async def put(name: str, request: Request, claims: TokenClaims = Depends(claims_of)) -> JSONResponse:
        try:
            require(claims, Action.CONNECTOR_WRITE)
            body = await body_as(request, TargetBody)
        except Problem as problem:
            await report(deployer, problem, "put_target", claims.identity, name)
            raise
        status, view = await _called(deployer.put_target(name, body.model_dump(), claims.identity))
        return JSONResponse(view, status_code=status)

    @api.delete("/v1/targets/{name}", status_code=204, summary="Remove a target (409 TARGET_IN_USE while bound)")
    async def delete(name: str, claims: TokenClaims = Depends(claims_of)) -> Response:
        await _required(claims, "remove_target", name)
        await _called(deployer.delete_target(name, claims.identity))
        return Response(status_code=204)

    @api.post("/v1/targets/{name}/probe", summary="Probe a stored target now (records nothing)")
    async def probe(name: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        require(claims, Action.CONNECTOR_WRITE)
        return await _called(deployer.probe(name))  # type: ignore[no-any-return]

    @api.get("/v1/profiles/{profile}/targets", summary="The targets bound to a provisioning profile")
    async def bound(profile: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        require(claims, Action.CONNECTOR_READ)
        return {"profile": profile, "targets": await _called(deployer.bound_targets(profile))}

    @api.put("/v1/profiles/{profile}/targets/{target}", summary="Bind a target to a profile (201; 200: already bound)",
             responses={201: {"description": "bound", "content": _OBJECT}})
    async def bind(profile: str, target: str, claims: TokenClaims = Depends(claims_of)) -> JSONResponse:
        await _required(claims, "bind", target, profile)
        status = await _called(deployer.bind(profile, target, claims.identity))
        return JSONResponse({"profile": profile, "target": target}, status_code=status)

    @api.delete("/v1/profiles/{profile}/targets/{target}", status_code=204, summary="Unbind a target from a profile")
    async def unbind(profile: str, target: str, claims: TokenClaims = Depends(claims_of)) -> Response:
        await _required(claims, "unbind", target, profile)
        await _called(deployer.unbind(profile, target, claims.identity))
        return Response(status_code=204)

    return api
