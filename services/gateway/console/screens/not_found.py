"""Any other console URL (GET or POST): the console's 404 page. Assembled last, as a catch-all."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.gateway.console.context import ConsoleDep
from services.gateway.console.pages import PREFIX, page
from services.gateway.console.sessions import COOKIE

router = APIRouter(prefix=PREFIX)


@router.api_route("/{rest:path}", methods=["GET", "POST"])
async def not_found(request: Request, console: ConsoleDep, rest: str) -> Response:
    session = console.sessions.get(request.cookies.get(COOKIE))
    return page(console, request, "error.html", session, status=404, code="NOT_FOUND",
                message=f"no console page {PREFIX}/{quote(rest)}")
