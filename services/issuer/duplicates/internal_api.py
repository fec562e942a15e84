"""The issuer's internal HTTP API (decision 0020): possible duplicate issuances, for the gateway (and through it the
CLI and the console), on the issuer's own HTTP port under ``/internal/v1``, every route behind the internal bearer
token. The caller authorises (the gateway's operator tokens) and names the actor in ``X-Certrail-Actor``.

- ``GET /internal/v1/duplicates?state=unresolved|resolved|all&certificate_id=`` -> ``{"duplicates": [view...]}``
- ``POST /internal/v1/duplicates/{certificate_id}/resolve`` body ``{"extra_serial": "..."}`` or
  ``{"no_extra": true, "note": "..."}`` (optional ``issuance_id``, ``note``) -> 200 ``{"duplicate": view}``

Refusals are ``{"code", "message"}`` with a precise 4xx (resolver.py); emCA or the connector unusable is 503 with
the code (CA_UNREACHABLE, ...) and Retry-After.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from starlette.responses import JSONResponse

from services.common.contracts.errors import ErrorCode
from services.common.contracts.identity import IDENTITY_PATTERN
from services.common.internal_api import InternalAuthError, require_token, unauthenticated
from services.issuer.duplicates.resolver import DuplicateResolver, Refused, Resolution, Unavailable
from services.issuer.duplicates.store import DuplicateState

ACTOR_HEADER = "X-Certrail-Actor"
RETRY_AFTER_S = 5
_ACTOR = re.compile(IDENTITY_PATTERN)


class ResolveBody(BaseModel):
    """Either the extra certificate's serial, or ``no_extra`` with a note saying how emCA was searched."""

    model_config = ConfigDict(extra="forbid")

    extra_serial: str | None = Field(default=None, min_length=1, max_length=64,
                                     description="The extra certificate's serial at emCA (hex, colons allowed).")
    no_extra: bool = Field(default=False, description="emCA holds no extra certificate for this issuance.")
    note: str | None = Field(default=None, min_length=1, max_length=1000, description="Why (required with no_extra).")
    issuance_id: str | None = Field(default=None, min_length=1, max_length=200,
                                    description="Which duplicate, when the certificate has several unresolved.")

    def resolution(self) -> Resolution:
        if (self.extra_serial is None) == (not self.no_extra):
            raise Refused(ErrorCode.SCHEMA_VIOLATION, 422, "give either extra_serial or no_extra: true (with a note)")
        return Resolution(extra_serial=self.extra_serial, no_extra=self.no_extra, note=self.note,
                          issuance_id=self.issuance_id)


def _problem(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def create_internal_app(resolver: DuplicateResolver, token: SecretStr | None) -> FastAPI:
    app = FastAPI(title="certrail issuer (internal)", openapi_url=None, docs_url=None, redoc_url=None,
                  dependencies=[Depends(require_token(token))])
    app.add_exception_handler(InternalAuthError, unauthenticated)  # type: ignore[arg-type]

    @app.exception_handler(Refused)
    async def on_refused(_: Request, error: Refused) -> JSONResponse:
        return _problem(error.code.value, error.message, error.status)

    @app.exception_handler(Unavailable)
    async def on_unavailable(_: Request, error: Unavailable) -> JSONResponse:
        return _problem(error.code.value, error.message, 503, {"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) or "body" for e in error.errors())
        return _problem(ErrorCode.SCHEMA_VIOLATION.value, f"invalid request: {fields}", 422)

    @app.get("/internal/v1/duplicates")
    async def list_duplicates(state: Annotated[Literal["unresolved", "resolved", "all"], Query()] = "unresolved",
                              certificate_id: Annotated[str | None, Query(max_length=200)] = None) -> dict[str, Any]:
        wanted = None if state == "all" else DuplicateState(state)
        return {"duplicates": [d.view() for d in await resolver.listed(wanted, certificate_id)]}

    @app.post("/internal/v1/duplicates/{certificate_id:path}/resolve")
    async def resolve(certificate_id: str, body: ResolveBody,
                      actor: Annotated[str | None, Header(alias=ACTOR_HEADER)] = None) -> dict[str, Any]:
        if actor is None or not _ACTOR.match(actor):
            raise Refused(ErrorCode.SCHEMA_VIOLATION, 400, f"{ACTOR_HEADER} must name the acting identity")
        duplicate = await resolver.resolve(certificate_id, body.resolution(), actor)
        return {"duplicate": duplicate.view()}

    return app
