"""``/console`` itself (to the inventory) and the console's own script and stylesheet."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, Response

from services.gateway.console.context import HERE
from services.gateway.console.pages import PREFIX, finish, redirect

STATIC = {"console.css": "text/css", "console.js": "text/javascript"}

router = APIRouter(prefix=PREFIX)


@router.get("")
@router.get("/")
async def home(request: Request) -> Response:
    return redirect(f"{PREFIX}/certificates")


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        return finish(Response("not found", status_code=404, media_type="text/plain"))
    response = FileResponse(HERE / "static" / name, media_type=STATIC[name])
    response.headers["Cache-Control"] = "public, max-age=300"
    return finish(response)
