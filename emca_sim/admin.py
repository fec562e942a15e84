"""The simulator's admin API (HTTPS, its own port, under ``/admin/``), for tests and operators.

Every endpoint but ``GET /admin/health`` needs ``Authorization: Bearer <token>``
with the token in ``DIR/admin-token``. Faults never apply here.

=======  ==============================================  ==========================================
GET      /admin/health                                   {"status": "ok", "api": "up" | "down"}
GET      /admin/faults                                   current faults (+ open API connections)
POST     /admin/faults                                   change faults (`FaultPatch` JSON)
DELETE   /admin/faults                                   clear every fault, API up
GET      /admin/counters                                 issued per applicationId / public key, requests per method
DELETE   /admin/counters                                 reset the counters
GET      /admin/pending?state=pending|approved|rejected|all   requests held for manual approval
POST     /admin/pending/{request_id}/approve             sign a held request
POST     /admin/pending/{request_id}/reject              {"reason": "..."} (optional)
GET      /admin/applications                             registered applications (no secrets)
POST     /admin/applications/{username}/rotate-credentials   new password (4.2.x: and ClientID)
GET      /admin/certificates?application_id=ID          certificates issued for an applicationId (emCA's
                                                         console search: an operator's tool, never the product's)
GET      /admin/certificates/{serial}                    one issued certificate
POST     /admin/certificates/{serial}/revoke             {"reason": "keyCompromise"} (RFC 5280 name)
=======  ==============================================  ==========================================
"""

from __future__ import annotations

import hmac
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from emca_sim.backend import Issued, Pending, SimError, SimErrorKind
from emca_sim.faults import FaultController, FaultPatch
from emca_sim.state import RequestSettled, SimEmca

_STATUS = {SimErrorKind.NOT_FOUND: 404, SimErrorKind.ALREADY_REVOKED: 409, SimErrorKind.UNKNOWN_PROFILE: 409,
           SimErrorKind.CSR_REJECTED: 409}


class _Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = None


def issued_json(issued: Issued) -> dict[str, Any]:
    result = asdict(issued)
    result["chain_pem"] = list(issued.chain_pem)
    for key in ("issued_at", "revoked_at"):
        result[key] = None if result[key] is None else result[key].isoformat()
    return result


def pending_json(pending: Pending) -> dict[str, Any]:
    return {"request_id": pending.request_id, "profile": pending.profile, "subscriber_id": pending.subscriber_id,
            "application_id": pending.application_id, "state": pending.state, "rejection": pending.rejection,
            "issued": None if pending.issued is None else issued_json(pending.issued)}


class _BearerAuth:
    """Refuses every request under /admin/ but the health check without the admin token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/admin/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse({"error": "unauthorized", "detail": "admin token required"}, status_code=401,
                                        headers={"WWW-Authenticate": 'Bearer realm="emca-sim-admin"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _body(request: Request, model: type[BaseModel]) -> BaseModel:
    raw = await request.body()
    return model.model_validate_json(raw or b"{}")


def create_admin_app(backend: SimEmca, faults: FaultController, token: str) -> ASGIApp:
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "api": "down" if faults.state.down else "up"})

    async def get_faults(request: Request) -> Response:
        return JSONResponse(faults.snapshot())

    async def post_faults(request: Request) -> Response:
        patch = await _body(request, FaultPatch)
        assert isinstance(patch, FaultPatch)
        await faults.apply(patch)
        return JSONResponse(faults.snapshot())

    async def delete_faults(request: Request) -> Response:
        await faults.clear()
        return JSONResponse(faults.snapshot())

    async def get_counters(request: Request) -> Response:
        return JSONResponse(asdict(await run_in_threadpool(backend.counters)))

    async def delete_counters(request: Request) -> Response:
        await run_in_threadpool(backend.reset_counters)
        return JSONResponse(asdict(await run_in_threadpool(backend.counters)))

    async def list_pending(request: Request) -> Response:
        state = request.query_params.get("state", "pending")
        if state not in ("pending", "approved", "rejected", "all"):
            return JSONResponse({"error": "bad_request", "detail": f"unknown state {state!r}"}, status_code=400)
        found = await run_in_threadpool(backend.pending_requests, None if state == "all" else state)
        return JSONResponse([pending_json(p) for p in found])

    async def approve(request: Request) -> Response:
        pending = await run_in_threadpool(backend.approve, request.path_params["request_id"])
        return JSONResponse(pending_json(pending))

    async def reject(request: Request) -> Response:
        body = await _body(request, _Reason)
        assert isinstance(body, _Reason)
        args = (request.path_params["request_id"],) + ((body.reason,) if body.reason else ())
        return JSONResponse(pending_json(await run_in_threadpool(backend.reject, *args)))

    async def applications(request: Request) -> Response:
        return JSONResponse([{"username": a.username, "dialect": a.dialect.value, "source_addresses": list(a.source_addresses),
                              "credentials_file": str(backend.data_dir / "applications" / a.username / "credentials.json")}
                             for a in backend.applications()])

    async def rotate(request: Request) -> Response:
        app = await run_in_threadpool(faults.rotate_credentials, request.path_params["username"])
        return JSONResponse({"username": app.username, "dialect": app.dialect.value, "password": app.password,
                             "client_id": app.client_id,
                             "credentials_file": str(backend.data_dir / "applications" / app.username / "credentials.json")})

    async def certificates(request: Request) -> Response:
        application_id = request.query_params.get("application_id", "")
        if not application_id or len(application_id) > 200:
            return JSONResponse({"error": "bad_request", "detail": "give application_id"}, status_code=400)
        found = await run_in_threadpool(backend.certificates_for_application_id, application_id)
        return JSONResponse([issued_json(i) for i in found])

    async def certificate(request: Request) -> Response:
        return JSONResponse(issued_json(await run_in_threadpool(backend.certificate, request.path_params["serial"])))

    async def revoke(request: Request) -> Response:
        body = await _body(request, _Reason)
        assert isinstance(body, _Reason)
        issued = await run_in_threadpool(backend.revoke, request.path_params["serial"], body.reason or "unspecified")
        return JSONResponse(issued_json(issued))

    async def sim_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SimError)
        return JSONResponse({"error": exc.kind.value, "detail": exc.detail}, status_code=_STATUS.get(exc.kind, 400))

    async def settled(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "conflict", "detail": str(exc)}, status_code=409)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ValidationError)
        return JSONResponse({"error": "invalid_request", "detail": exc.errors(include_url=False, include_context=False)},
                            status_code=422)

    routes = [
        Route("/admin/health", health, methods=["GET"]),
        Route("/admin/faults", get_faults, methods=["GET"]),
        Route("/admin/faults", post_faults, methods=["POST"]),
        Route("/admin/faults", delete_faults, methods=["DELETE"]),
        Route("/admin/counters", get_counters, methods=["GET"]),
        Route("/admin/counters", delete_counters, methods=["DELETE"]),
        Route("/admin/pending", list_pending, methods=["GET"]),
        Route("/admin/pending/{request_id}/approve", approve, methods=["POST"]),
        Route("/admin/pending/{request_id}/reject", reject, methods=["POST"]),
        Route("/admin/applications", applications, methods=["GET"]),
        Route("/admin/applications/{username}/rotate-credentials", rotate, methods=["POST"]),
        Route("/admin/certificates", certificates, methods=["GET"]),
        Route("/admin/certificates/{serial}", certificate, methods=["GET"]),
        Route("/admin/certificates/{serial}/revoke", revoke, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={SimError: sim_error, RequestSettled: settled, ValidationError: invalid})
    return _BearerAuth(app, token)
