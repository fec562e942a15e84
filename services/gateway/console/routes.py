"""The web console under ``/console``: server-rendered pages (Jinja2), served by the gateway.

It is a client of the ``/v1`` API (services/gateway/console/client.py calls the API app
in-process with the signed-in user's token), so that roles, scopes, validation, dedupe and admin
events are exactly the API's. Sign-in takes an API token and opens a server-side session
(services/gateway/console/sessions.py); every form carries the session's CSRF token, checked on
every POST (pages.py). Each screen is one module of screens/ with a module-level router;
``console_router`` assembles them. docs/console.md describes the screens.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends

from services.gateway.api_throttle import AuthThrottle, throttle_from
from services.gateway.console.client import ApiClient
from services.gateway.console.context import Console, templates
from services.gateway.console.screens import (
    acme,
    certificate,
    connectors,
    duplicates,
    home,
    inventory,
    not_found,
    provisioning,
    requests,
    signin,
    targets,
)
from services.gateway.console.sessions import Sessions

#: the screens in the order their routes are tried: the bots' ``/certificates/provisioning`` (and
#: ``/certificates/duplicates``) before
#: one certificate's ``/certificates/{id:path}``, and the catch-all 404 last
SCREENS: tuple[APIRouter, ...] = (
    home.router,
    signin.router,
    connectors.router,
    targets.router,
    acme.router,
    provisioning.router,
    duplicates.router,
    inventory.router,
    requests.router,
    certificate.router,
    not_found.router,
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def console_router(runtime: Any, api_app: Any, *, clock: Callable[[], datetime] = _utc_now,
                   sessions: Sessions | None = None, throttle: AuthThrottle | None = None) -> APIRouter:
    """The console's routes. ``api_app`` is the FastAPI app that serves ``/v1`` (the console calls it);
    ``throttle`` counts failed sign-ins (shared with the API's bearer tokens)."""
    console = Console(engine=runtime.engine, api=ApiClient(api_app),
                      sessions=sessions if sessions is not None else Sessions(),
                      throttle=throttle if throttle is not None else throttle_from(runtime.settings, None),
                      clock=clock, templates=templates())
    router = APIRouter(include_in_schema=False, dependencies=[Depends(console.bind)])
    for screen in SCREENS:
        router.include_router(screen)
    return router
