"""The auditor's internal HTTP API (decision 0020): its certificate inventory and its timelines, for the
gateway, on the auditor's own HTTP port under ``/internal/v1``, every route behind the internal bearer token
(services/common/internal_api.py).

The auditor answers what it is asked: the caller authorises. ``GET /internal/v1/certificates`` takes the
caller's scope explicitly (``profiles=`` repeated, or ``all_profiles=true``; neither: no certificate), so a
caller that forgets its scope sees nothing rather than everything. Pages are bounded: ``limit`` at most
`MAX_PAGE`, ``next_offset`` says where the next page starts (null: the last page).

Routes:
- ``GET /internal/v1/certificates``: status, not_after_before, profile, connector, profiles / all_profiles,
  limit, offset -> ``{"certificates": [view...], "next_offset"}``
- ``GET /internal/v1/certificates/{id}`` -> a view, or 404 CERTIFICATE_NOT_FOUND
- ``GET /internal/v1/trails/certificates/{id}``, ``GET /internal/v1/trails/requests/{request_id}``: limit,
  offset -> ``{"identifier", "certificate_ids", "entries": [entry...], "next_offset"}``
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query
from pydantic import AwareDatetime
from sqlalchemy import Engine
from starlette.responses import JSONResponse

from services.auditor.inventory_read import get_certificate, list_certificates
from services.auditor.trail import certificate_trail, request_trail
from services.common.audit_trail import Trail, entry_to_json
from services.common.contracts.errors import ErrorCode
from services.common.db import read_session
from services.common.internal_api import InternalAuthError, require_token, unauthenticated
from services.common.inventory_read import view_to_json

MAX_PAGE = 1000
MAX_OFFSET = 1_000_000

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
Name = Annotated[str | None, Query(max_length=200)]


class StatusFilter(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"
    FAILED = "failed"


def _next(offset: int, limit: int, found: int) -> int | None:
    return offset + limit if found > limit else None


def _trail_answer(found: Trail, offset: int, limit: int) -> dict[str, Any]:
    entries = found.entries[:limit]
    return {"identifier": found.identifier, "certificate_ids": list(found.certificate_ids),
            "entries": [entry_to_json(e) for e in entries], "next_offset": _next(offset, limit, len(found.entries))}


def create_internal_app(engine: Engine, token: Any, clock: Callable[[], datetime]) -> FastAPI:
    """The ``/internal/v1`` app over the auditor's database; ``token``: the expected bearer token (a
    SecretStr; None refuses every request)."""
    app = FastAPI(title="certrail auditor (internal)", openapi_url=None, docs_url=None, redoc_url=None,
                  dependencies=[Depends(require_token(token))])
    app.add_exception_handler(InternalAuthError, unauthenticated)  # type: ignore[arg-type]

    async def read(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            with read_session(engine) as session:
                return fn(session, *args, **kwargs)
        return await asyncio.to_thread(run)

    @app.get("/internal/v1/certificates")
    async def certificates(
        status: StatusFilter | None = None,
        not_after_before: AwareDatetime | None = None,
        profile: Name = None,
        connector: Name = None,
        profiles: Annotated[list[str], Query(max_length=10_000)] = [],  # noqa: B006 - FastAPI's list query
        all_profiles: bool = False,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        scope = None if all_profiles else frozenset(profiles)
        views = await read(list_certificates, clock(), status=status.value if status else None,
                           not_after_before=not_after_before, profiles=scope, profile=profile, connector=connector,
                           limit=limit + 1, offset=offset)
        return {"certificates": [view_to_json(v) for v in views[:limit]], "next_offset": _next(offset, limit, len(views))}

    @app.get("/internal/v1/certificates/{certificate_id:path}", response_model=None)
    async def certificate(certificate_id: str) -> dict[str, Any] | JSONResponse:
        view = await read(get_certificate, certificate_id, clock())
        if view is None:
            return JSONResponse({"code": ErrorCode.CERTIFICATE_NOT_FOUND.value, "message": "not in the inventory"},
                                status_code=404)
        return view_to_json(view)

    @app.get("/internal/v1/trails/certificates/{certificate_id:path}")
    async def certificate_timeline(certificate_id: str, limit: Limit = MAX_PAGE, offset: Offset = 0) -> dict[str, Any]:
        found = await read(certificate_trail, certificate_id, limit=limit + 1, offset=offset)
        return _trail_answer(found, offset, limit)

    @app.get("/internal/v1/trails/requests/{request_id}")
    async def request_timeline(request_id: str, limit: Limit = MAX_PAGE, offset: Offset = 0) -> dict[str, Any]:
        found = await read(request_trail, request_id, limit=limit + 1, offset=offset)
        return _trail_answer(found, offset, limit)

    return app
