"""``/v1/duplicates``: possible duplicate issuances (4.2.x, no applicationId dedupe) and their resolution, over the
issuer's internal API (issuer_api.py, decision 0020; decision 0032). Admins and auditors list; admins resolve. The
gateway authorises and names the token's identity as the actor; the issuer fetches the serial from emCA, checks it
is the extra certificate (same public key as the CSR, another serial, signed by the pinned issuing CA), revokes it
as superseded, and records the resolution or the refusal as an event.

- ``GET /v1/duplicates?state=unresolved|resolved|all&certificate_id=`` -> ``{"duplicates": [...]}``
- ``POST /v1/duplicates/{certificate_id}/resolve`` ``{"extra_serial": "..."}`` or ``{"no_extra": true, "note": "..."}``
  -> 200 ``{"duplicate": {...}}``

The issuer's refusals pass through with their code and status (CERTIFICATE_NOT_FOUND 404, CERTIFICATE_MISMATCH
409/422, CERTIFICATE_UNTRUSTED 422, REVOCATION_REJECTED 422, DUPLICATE_REQUEST_CONFLICT 409; CA_UNREACHABLE 503
with Retry-After); the issuer unreachable is 503 SERVICE_UNAVAILABLE. docs/gateway.md, "Possible duplicates"."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from services.gateway.api_common import ApiCode, Problem, body_as, claims_of, json_body_doc, require
from services.gateway.issuer_api import IssuerApi, IssuerRefused, IssuerUnavailable
from services.gateway.policy.tokens import Action, TokenClaims

RETRY_AFTER_S = 5
_PROBLEM = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
UNAVAILABLE_DOC: dict[int | str, dict[str, Any]] = {503: {
    "description": "SERVICE_UNAVAILABLE: the issuer did not answer; CA_UNREACHABLE: emCA did not; see Retry-After",
    "content": _PROBLEM, "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}}}


class DuplicateResolveBody(BaseModel):
    """Either the extra certificate's serial at emCA, or ``no_extra: true`` with a note."""

    model_config = ConfigDict(extra="forbid")

    extra_serial: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[0-9A-Fa-f:]+$",
                                     description="The extra certificate's serial at emCA (hex; colons allowed).")
    no_extra: bool = Field(default=False, description="emCA holds no extra certificate for this issuance.")
    note: str | None = Field(default=None, min_length=1, max_length=1000,
                             description="Why; required with no_extra (how emCA was searched).")
    issuance_id: str | None = Field(default=None, min_length=1, max_length=200,
                                    description="Which duplicate, when the certificate has several unresolved.")


async def _called(run: Any) -> Any:
    try:
        return await run
    except IssuerRefused as error:
        headers = {"Retry-After": error.retry_after or str(RETRY_AFTER_S)} if error.status == 503 else None
        raise Problem(error.code, error.message, status=error.status, headers=headers) from None
    except IssuerUnavailable as error:
        raise Problem(ApiCode.SERVICE_UNAVAILABLE, f"duplicates are served by the issuer: {error}; try again later",
                      status=503, headers={"Retry-After": str(RETRY_AFTER_S)}) from None


def router(issuer: IssuerApi) -> APIRouter:
    api = APIRouter(tags=["duplicates"], responses=UNAVAILABLE_DOC)

    @api.get("/v1/duplicates", summary="Possible duplicate issuances (POSSIBLE_DUPLICATE) and their resolution")
    async def list_(state: Literal["unresolved", "resolved", "all"] = Query("unresolved"),
                    certificate_id: str | None = Query(None, max_length=200),
                    claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        require(claims, Action.AUDIT_READ)
        return {"duplicates": await _called(issuer.duplicates(state, certificate_id))}

    @api.post("/v1/duplicates/{certificate_id:path}/resolve", openapi_extra=json_body_doc(DuplicateResolveBody),
              summary="Resolve a possible duplicate: revoke the extra serial (checked first) or state there is none")
    async def resolve(certificate_id: str, request: Request, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        require(claims, Action.CONNECTOR_WRITE)
        body = await body_as(request, DuplicateResolveBody)
        if (body.extra_serial is None) == (not body.no_extra):
            raise Problem("SCHEMA_VIOLATION", "give either extra_serial or no_extra: true (with a note)", status=422)
        if body.no_extra and body.note is None:
            raise Problem("SCHEMA_VIOLATION", "no_extra needs a note: how emCA was searched", status=422)
        payload = body.model_dump(exclude_none=True)
        return {"duplicate": await _called(issuer.resolve(certificate_id, payload, claims.identity))}

    return api
