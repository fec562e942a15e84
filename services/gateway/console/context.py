"""What every console screen shares, per gateway app: the database engine (sign-in and the
audit-log timeline), the in-process ``/v1`` client, the sessions, the sign-in throttle, the
clock and the templates.

``console_router()`` (routes.py) builds one `Console` per app and binds it to each request
through a router-level dependency, before the handler's own dependencies run; the screens'
module-level handlers take it as a parameter (``console: ConsoleDep``). No module keeps it
globally, so two apps in one process keep their own sessions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine

from services.gateway.api_throttle import AuthThrottle
from services.gateway.console import views
from services.gateway.console.client import ApiClient, Reply, seg
from services.gateway.console.sessions import Session, Sessions

HERE = Path(__file__).parent
_SCOPE_KEY = "certrail.console"


def templates() -> Jinja2Templates:
    found = Jinja2Templates(directory=str(HERE / "templates"))
    found.env.globals.update(seg=seg, short_type=views.short_type, connector_status=views.connector_status)
    return found


@dataclass(frozen=True, eq=False)
class Console:
    engine: Engine
    api: ApiClient
    sessions: Sessions
    throttle: AuthThrottle
    clock: Callable[[], datetime]
    templates: Jinja2Templates

    async def call(self, session: Session, method: str, path: str, **kwargs: Any) -> Reply:
        """A ``/v1`` call with the signed-in user's own token."""
        return await self.api.call(session.token, method, path, **kwargs)

    async def bind(self, request: Request) -> None:
        """The router-level dependency that hands this console to the request's handler."""
        request.scope[_SCOPE_KEY] = self


def console_of(request: Request) -> Console:
    found = request.scope.get(_SCOPE_KEY)
    if not isinstance(found, Console):
        raise LookupError("a console route was reached without its console: include it through console_router()")
    return found


ConsoleDep = Annotated[Console, Depends(console_of)]
