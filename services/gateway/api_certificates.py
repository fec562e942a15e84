"""``/v1/certificates`` and ``/v1/requests``: asking for certificates (issue, renew, revoke), reading
the inventory, and following a request to its outcome.

Requests go through the same path as ``certrail.requests`` (services/gateway/intake.py): the
token's identity is the requester; the request id from the body is the dedupe key (the same
body again gets the same answer; a different body under the same id DUPLICATE_REQUEST_CONFLICT).
An accepted request answers 202 with its status URL; a rejected one a problem with the
rejection's code (and it is recorded: its status URL shows it). A request's state and result
come from the gateway's own projection of the issuer's outcome events (request_status.py), never
from the auditor's tables. Certificate views (the inventory) and timelines come from the auditor's
internal API (auditor_api.py, decision 0020): the gateway authorises with its own tables (tokens,
profiles, each managed certificate's profile) and passes the caller's scope; when the auditor does not
answer, those reads are 503 (`AUDITOR_UNAVAILABLE_CODE`) and a request's status still answers, without
its certificate view (``certificate_error``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sqlalchemy import select
from starlette.responses import JSONResponse

from services.common.audit_trail import entry_to_json
from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import CsrPem, RevocationReason, SanList
from services.common.contracts.identity import CertificateId, ProfileName, RequestId, Serial
from services.common.contracts.requests import IssueRequested, RenewRequested, RevokeRequested
from services.common.db import read_session
from services.common.db_schema import GatewayIssuedSerial
from services.common.inventory_read import CertificateView
from services.gateway import store
from services.gateway.api_common import (
    ApiCode,
    Problem,
    claims_of,
    in_thread,
    json_body_doc,
    json_object,
    parse_model,
    read_body,
    validation_problem,
)
from services.gateway.auditor_api import AuditorApi, AuditorUnavailable
from services.gateway.intake import Answer
from services.gateway.policy.tokens import ROLES, Action, Role, TokenClaims, may_read_profile, readable_profiles
from services.gateway.policy.violation import shown
from services.gateway.request_status import status_of

log = logging.getLogger(__name__)

PRIVATE_KEY_MARKER = "PRIVATE KEY-----"
#: the code of a 503 when the auditor (certificate views, timelines) does not answer. errors.py has no code for
#: "another certrail service is unavailable" (issue 18 report): CA_UNREACHABLE is the closest existing one
AUDITOR_UNAVAILABLE_CODE = ApiCode.SERVICE_UNAVAILABLE
_CERTIFICATE_ID: TypeAdapter[str] = TypeAdapter(CertificateId)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IssueBody(_Body):
    """A new certificate under a provisioning profile."""

    request_id: RequestId = Field(description="Your id for this request: the dedupe key (retry with the same id)")
    profile: ProfileName
    certificate_id: CertificateId = Field(description="The managed certificate, stable across renewals")
    csr: CsrPem | None = Field(default=None, description="PEM CSR; absent for profiles whose keys the deployer bot generates")
    sans: SanList | None = Field(default=None, description="dns:/ip:/email:/uri: names expected (checked against the CSR)")
    deadline: AwareDatetime | None = None


class RenewBody(_Body):
    request_id: RequestId
    csr: CsrPem | None = None
    replaces_serial: Serial | None = None
    deadline: AwareDatetime | None = None


class RevokeBody(_Body):
    request_id: RequestId
    reason: RevocationReason = Field(description="RFC 5280 CRLReason")
    serial: Serial | None = Field(default=None, description="default: the certificate's current serial")
    replace: bool = Field(default=False, description="request a replacement after the revocation")


class StatusFilter(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    REVOKED = "revoked"
    SUPERSEDED = "superseded"  # another certificate id replaces it (an ACME renewal with replaces)
    EXPIRED = "expired"
    FAILED = "failed"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def view_dict(view: CertificateView | None) -> dict[str, Any] | None:
    if view is None:
        return None
    return {"certificate_id": view.certificate_id, "status": view.status, "serial": view.serial,
            "past_serials": list(view.past_serials), "subject": view.subject, "sans": list(view.sans), "issuer": view.issuer,
            "not_before": _iso(view.not_before), "not_after": _iso(view.not_after), "connector": view.connector,
            "profile": view.profile, "requester": view.requester, "last_event_type": view.last_event_type,
            "last_event_at": _iso(view.last_event_at), "last_error_code": view.last_error_code,
            "deployments": [{"kind": k, "name": n, "status": s, "serial": serial} for k, n, s, serial in view.deployments]}


def read_scope(session: Any, claims: TokenClaims) -> frozenset[str] | None:
    """The profiles whose certificates ``claims`` may read (None: all): `readable_profiles`."""
    if claims.role is not Role.REQUESTER and claims.profiles is None:
        return None
    return readable_profiles(claims, [p.profile for p in store.list_profiles(session)])


def certificate_profile(session: Any, certificate_id: str) -> tuple[Any, str | None]:
    """The gateway's row and the profile of a certificate (Nones when unknown), from the gateway's own
    tables only: the managed certificate, else its projection of issued certificates (scope checks never
    depend on the auditor)."""
    row = store.get_certificate(session, certificate_id)
    if row is not None:
        return row, row.profile
    issued_under = session.scalars(select(GatewayIssuedSerial.profile).where(
        GatewayIssuedSerial.certificate_id == certificate_id, GatewayIssuedSerial.profile.is_not(None)).limit(1)).first()
    return None, issued_under


def unavailable_problem(exc: AuditorUnavailable) -> Problem:
    return Problem(AUDITOR_UNAVAILABLE_CODE, f"certificate views and timelines are served by the auditor: {exc}; "
                   "try again later", status=503, headers={"Retry-After": "5"})


def _strings(value: Any) -> Any:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _no_private_key(raw: bytes, values: Any) -> None:
    """PRIVATE_KEY_SUBMITTED when any part of the body holds a PEM private key (never echoed)."""
    if PRIVATE_KEY_MARKER.encode() in raw or any(PRIVATE_KEY_MARKER in text for text in _strings(values)):
        raise Problem(ErrorCode.PRIVATE_KEY_SUBMITTED, "the request contains a private key: send only the CSR; the key was "
                      "not stored, but treat it as exposed and make a new one")


def path_id(certificate_id: str) -> str:
    try:
        return _CERTIFICATE_ID.validate_python(certificate_id)
    except ValidationError as exc:
        raise validation_problem(exc.errors(include_input=False, include_url=False), ("path", "certificate_id")) from None


def router(runtime: Any, clock: Callable[[], datetime], auditor: AuditorApi) -> APIRouter:
    api = APIRouter(tags=["certificates"])
    engine = runtime.engine

    async def ask(request: Request, claims: TokenClaims, action: Action, build: Callable[[dict[str, Any]], Any]) -> JSONResponse:
        raw = await read_body(request)
        _no_private_key(raw, None)  # before anything else looks at it
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type not in ("application/json", ""):
            raise Problem("UNSUPPORTED_MEDIA_TYPE", f"send application/json, not {content_type}")
        values = json_object(raw)
        _no_private_key(raw, values)
        if claims.role not in ROLES[action]:  # refused before the request id is recorded
            allowed = ", ".join(sorted(ROLES[action]))
            raise Problem(ErrorCode.REQUESTER_NOT_AUTHORISED, f"role {claims.role} may not {action} (allowed roles: {allowed})")
        asked = build(values)
        outcome = await runtime.intake.from_http(asked, claims)
        try:
            await runtime.publish_records(outcome.outbound)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("request %s: publishing failed: %s", asked.request_id, exc)
            raise Problem("PUBLISH_FAILED", f"the request was recorded but could not be published ({type(exc).__name__}): "
                          "send it again with the same request_id", status=503, request_id=asked.request_id) from None
        return answer_response(outcome.answer)

    @api.post("/v1/certificates", status_code=202, summary="Request a new certificate",
              openapi_extra=json_body_doc(IssueBody))
    async def issue(request: Request, claims: TokenClaims = Depends(claims_of)) -> JSONResponse:
        def build(values: dict[str, Any]) -> IssueRequested:
            body = parse_model(IssueBody, values)
            return IssueRequested(request_id=body.request_id, requester=claims.identity, profile=body.profile,
                                  certificate_id=body.certificate_id, csr=body.csr, sans=body.sans, deadline=body.deadline)
        return await ask(request, claims, Action.CERTIFICATE_ISSUE, build)

    @api.post("/v1/certificates/{certificate_id:path}/renew", status_code=202, summary="Renew a certificate with a new CSR",
              openapi_extra=json_body_doc(RenewBody))
    async def renew(certificate_id: str, request: Request, claims: TokenClaims = Depends(claims_of)) -> JSONResponse:
        def build(values: dict[str, Any]) -> RenewRequested:
            body = parse_model(RenewBody, values)
            return RenewRequested(request_id=body.request_id, requester=claims.identity, certificate_id=path_id(certificate_id),
                                  csr=body.csr, replaces_serial=body.replaces_serial, deadline=body.deadline)
        return await ask(request, claims, Action.CERTIFICATE_RENEW, build)

    @api.post("/v1/certificates/{certificate_id:path}/revoke", status_code=202, summary="Revoke a certificate (RFC 5280 reason)",
              openapi_extra=json_body_doc(RevokeBody))
    async def revoke(certificate_id: str, request: Request, claims: TokenClaims = Depends(claims_of)) -> JSONResponse:
        def build(values: dict[str, Any]) -> RevokeRequested:
            body = parse_model(RevokeBody, values)
            return RevokeRequested(request_id=body.request_id, requester=claims.identity, certificate_id=path_id(certificate_id),
                                   serial=body.serial, reason=body.reason, replace=body.replace)
        return await ask(request, claims, Action.CERTIFICATE_REVOKE, build)

    @api.get("/v1/certificates", summary="List certificates (the inventory), only profiles the token may see")
    async def list_(
        claims: TokenClaims = Depends(claims_of),
        status: StatusFilter | None = None,
        expiring_within_days: Annotated[int | None, Query(ge=0, le=3650)] = None,
        profile: Annotated[str | None, Query(max_length=128)] = None,
        connector: Annotated[str | None, Query(max_length=63)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        now = clock()

        def load_scope() -> frozenset[str] | None:
            with read_session(engine) as session:
                return read_scope(session, claims)

        scope = await in_thread(load_scope)
        if scope is not None and not scope:
            return {"certificates": []}  # the token may read no profile: nothing to ask
        before = now + timedelta(days=expiring_within_days) if expiring_within_days is not None else None
        try:
            views = await auditor.certificates(scope, status=status.value if status else None, not_after_before=before,
                                               profile=profile, connector=connector, limit=limit)
        except AuditorUnavailable as exc:
            raise unavailable_problem(exc) from None
        return {"certificates": [view_dict(v) for v in views if may_read_profile(scope, v.profile)]}

    @api.get("/v1/certificates/{certificate_id:path}", summary="Show a certificate")
    async def show(certificate_id: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        def load() -> tuple[Any, list[dict[str, Any]]]:
            with read_session(engine) as session:
                row, profile = certificate_profile(session, certificate_id)
                if not may_read_profile(read_scope(session, claims), profile):  # not even its existence is told
                    raise Problem(ErrorCode.CERTIFICATE_NOT_FOUND,
                                  f"no managed certificate {shown(certificate_id)} visible to this token")
                requests = [{"request_id": r.request_id, "kind": r.kind, "status": r.status, "created_at": _iso(r.created_at)}
                            for r in store.requests_of_certificate(session, certificate_id)]
                managed = None if row is None else {
                    "profile": row.profile, "connector": row.connector, "requester": row.requester,
                    "key_generation": row.key_generation, "revision": row.revision, "sans": json.loads(row.sans)}
            return managed, requests

        managed, requests = await in_thread(load)
        try:
            view = await auditor.certificate(certificate_id)
        except AuditorUnavailable as exc:
            raise unavailable_problem(exc) from None
        if managed is None and view is None:
            raise Problem(ErrorCode.CERTIFICATE_NOT_FOUND, f"no managed certificate {shown(certificate_id)}")
        return {"certificate_id": certificate_id, "status": view.status if view is not None else "requested",
                "managed": managed, "inventory": view_dict(view), "requests": requests}

    def visible_request(session: Any, claims: TokenClaims, request_id: str,
                        scope: frozenset[str] | None) -> store.StoredAnswer:
        """The stored request: the caller's own (whoever else used the id first is not the caller:
        a second caller's attempt was refused as a conflict and stored nothing), or, for admin and
        auditor tokens, any request about a certificate in their scope."""
        stored = store.get_request(session, request_id)
        if stored is None:
            raise Problem("REQUEST_NOT_FOUND", f"no request {shown(request_id)}", status=404)
        if stored.requester == claims.identity:  # one's own requests, whatever the token's scope
            return stored
        profile = certificate_profile(session, stored.certificate_id)[1] if stored.certificate_id else None
        if claims.role in (Role.ADMIN, Role.AUDITOR) and may_read_profile(scope, profile):
            return stored
        raise Problem("REQUEST_NOT_FOUND", f"no request {shown(request_id)} visible to this token", status=404)

    def readable_certificate(session: Any, scope: frozenset[str] | None, certificate_id: str | None) -> bool:
        if certificate_id is None:
            return False
        return scope is None or may_read_profile(scope, certificate_profile(session, certificate_id)[1])

    @api.get("/v1/requests/{request_id}", tags=["requests"], summary="A request's status and its certificate")
    async def request_status(request_id: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        def load() -> tuple[store.StoredAnswer, bool, Any]:
            with read_session(engine) as session:
                scope = read_scope(session, claims)
                stored = visible_request(session, claims, request_id, scope)
                readable = readable_certificate(session, scope, stored.certificate_id)
                # the issuer's outcome as this gateway folded it (request_status.py): queued until then
                outcome = status_of(session, request_id) if stored.status == "accepted" else None
            return stored, readable, outcome

        stored, readable, outcome = await in_thread(load)
        view, error = None, None
        if readable and stored.certificate_id is not None:
            try:
                view = await auditor.certificate(stored.certificate_id)
            except AuditorUnavailable as exc:  # the status is the gateway's own: answered without the view
                problem = unavailable_problem(exc)
                error = {"code": problem.code, "message": problem.message}
        state, result = ("rejected", None) if stored.status == "rejected" else (outcome or ("queued", None))
        answer = {"request_id": request_id, "kind": stored.kind, "requester": stored.requester, "status": stored.status,
                  "state": state, "created_at": _iso(stored.created_at), "answer": stored.answer, "result": result,
                  "certificate": view_dict(view)}
        return answer if error is None else {**answer, "certificate_error": error}

    @api.get("/v1/requests/{request_id}/timeline", tags=["requests"], summary="The audit trail of a request")
    async def request_timeline(request_id: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        def visible() -> frozenset[str] | None:
            with read_session(engine) as session:
                scope = read_scope(session, claims)
                visible_request(session, claims, request_id, scope)
            return scope

        scope = await in_thread(visible)
        try:
            found = await auditor.request_trail(request_id)
        except AuditorUnavailable as exc:
            raise unavailable_problem(exc) from None

        def readable_of(named: set[str]) -> set[str]:
            with read_session(engine) as session:
                return {c for c in named if readable_certificate(session, scope, c)}

        named = {e.certificate_id for e in found.entries if e.certificate_id is not None} | set(found.certificate_ids)
        readable = await in_thread(readable_of, named)
        # a record about a certificate the token may not read (e.g. stored before 2026-12) is left out
        entries = [entry_to_json(e) for e in found.entries if e.certificate_id is None or e.certificate_id in readable]
        return {"request_id": request_id, "certificate_ids": [c for c in found.certificate_ids if c in readable],
                "entries": entries}

    return api


def answer_response(answer: Answer) -> JSONResponse:
    status_url = f"/v1/requests/{answer.request_id}"
    if answer.status == "accepted":
        body = {**answer.as_dict(), "replayed": answer.replayed, "status_url": status_url}
        return JSONResponse(body, status_code=202, headers={"Location": status_url})
    error = answer.error or {"code": ErrorCode.HANDLER_REJECTED.value, "message": "rejected"}
    conflict = error["code"] == ErrorCode.DUPLICATE_REQUEST_CONFLICT
    problem = Problem(error["code"], error["message"], request_id=answer.request_id, status_url=status_url,
                      replayed=answer.replayed, **({} if conflict else {"event_id": answer.event_id}))
    return problem.response()
