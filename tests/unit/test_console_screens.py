"""The console's route table (issue 19): one module-level router per screen
(services/gateway/console/screens/), assembled by services/gateway/console/routes.py into the
gateway's API app. The table below was written down from the single ``console_router`` before the
split; the split must serve exactly it, in the same order (the first route that matches wins, so
order is behaviour: ``/certificates/provisioning`` before ``/certificates/{id:path}``, the catch-all
last), and send each request to the same handler. Routes added since: Integrations → Deployment
Targets (``/integrations/targets``, issue 19), after the connectors. No database and no sign-in
are needed: every route answers an anonymous request (a redirect to sign-in, the sign-in page, a
403 or a 404)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import iter_route_contexts
from prometheus_client import CollectorRegistry
from starlette.types import Receive, Scope, Send

from services.gateway.api import create_api
from services.gateway.api_throttle import AuthThrottle
from services.gateway.policy.throttle import ThrottleLimits

#: (methods, path, handler) in the order the routes are tried, as before the split
ROUTES: list[tuple[str, str, str]] = [
    ("GET", "/console/", "home"),
    ("GET", "/console", "home"),
    ("GET", "/console/static/{name}", "static"),
    ("GET", "/console/signin", "signin_form"),
    ("POST", "/console/signin", "signin"),
    ("POST", "/console/signout", "signout"),
    ("GET", "/console/integrations/connectors", "connectors"),
    ("GET", "/console/integrations/connectors/new", "connector_new"),
    ("POST", "/console/integrations/connectors/new", "connector_create"),
    ("GET", "/console/integrations/connectors/{name}/edit", "connector_edit_form"),
    ("POST", "/console/integrations/connectors/{name}/edit", "connector_edit"),
    ("POST", "/console/integrations/connectors/{name}/{action}", "connector_action"),
    ("GET", "/console/integrations/connectors/{name}/delete", "connector_delete_confirm"),
    ("GET", "/console/integrations/targets", "targets"),
    ("GET", "/console/integrations/targets/new", "target_new"),
    ("POST", "/console/integrations/targets/new", "target_create"),
    ("GET", "/console/integrations/targets/{name}/edit", "target_edit_form"),
    ("POST", "/console/integrations/targets/{name}/edit", "target_edit"),
    ("POST", "/console/integrations/targets/{name}/{action}", "target_action"),
    ("GET", "/console/integrations/targets/{name}/delete", "target_delete_confirm"),
    ("GET", "/console/integrations/acme", "acme"),
    ("POST", "/console/integrations/acme/eab-keys", "create_key"),
    ("POST", "/console/integrations/acme/eab-keys/{key_id}/revoke", "revoke_key"),
    ("GET", "/console/certificates/provisioning", "profiles"),
    ("GET", "/console/certificates/provisioning/new", "profile_new"),
    ("POST", "/console/certificates/provisioning/new", "profile_create"),
    ("GET", "/console/certificates/provisioning/{name}/edit", "profile_edit_form"),
    ("POST", "/console/certificates/provisioning/{name}/edit", "profile_edit"),
    ("GET", "/console/certificates/duplicates", "duplicates"),
    ("POST", "/console/certificates/duplicates/{certificate_id:path}/resolve", "resolve"),
    ("GET", "/console/certificates", "certificates"),
    ("GET", "/console/requests/new", "request_new"),
    ("POST", "/console/requests/new", "request_create"),
    ("GET", "/console/certificates/{certificate_id:path}", "certificate"),
    ("POST", "/console/certificates/{certificate_id:path}/revoke", "revoke"),
    ("GET,POST", "/console/{rest:path}", "not_found"),
]


def api_app() -> FastAPI:
    """The gateway's API app with the console, over a runtime that no anonymous console request reaches."""
    runtime = SimpleNamespace(engine=None, box=None, publish_records=None, topics=None, settings=None)
    throttle = AuthThrottle(ThrottleLimits(per_address=5, per_identity=5, window_s=60), registry=CollectorRegistry())
    return create_api(runtime, throttle=throttle)


def console_routes(app: FastAPI) -> list[tuple[str, str, str]]:
    return [(",".join(sorted(r.methods or ())), r.path or "", r.name or "")
            for r in iter_route_contexts(app.routes) if (r.path or "").startswith("/console")]


def test_the_app_serves_the_same_console_routes_in_the_same_order() -> None:
    app = api_app()
    assert console_routes(app) == ROUTES
    assert not [path for path in app.openapi()["paths"] if path.startswith("/console")]  # the API's document only


def test_every_screen_module_has_a_module_level_router_and_is_assembled_once() -> None:
    from services.gateway.console import routes, screens

    names = sorted(m.name for m in pkgutil.iter_modules(screens.__path__))
    assert names, "no screen modules"
    modules = [importlib.import_module(f"{screens.__name__}.{name}") for name in names]
    for module in modules:
        router = getattr(module, "router", None)
        assert isinstance(router, APIRouter), f"{module.__name__} has no module-level router"
        assert router.routes, f"{module.__name__}'s router has no route"
        for route in router.routes:  # module-level handlers, not closures
            endpoint: Any = getattr(route, "endpoint", None)
            handler = getattr(endpoint, "__wrapped__", endpoint)
            assert handler.__module__ == module.__name__ and "<locals>" not in handler.__qualname__, route
    assert sorted(id(m.router) for m in modules) == sorted(id(r) for r in routes.SCREENS)
    handlers = {name for _, _, name in ROUTES}
    served = {getattr(route, "name", "") for m in modules for route in m.router.routes}
    assert served == handlers


class EndpointSpy:
    """Records which handler served each request (Starlette leaves it in the request's scope)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.endpoints: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            self.endpoints.append(getattr(scope.get("endpoint"), "__name__", ""))


@pytest.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, EndpointSpy]]:
    spy = EndpointSpy(api_app())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=spy), base_url="http://gateway") as http:
        yield http, spy


SIGN_IN = "/console/signin?next="


@pytest.mark.parametrize(("method", "path", "handler", "status", "location"), [
    ("GET", "/console", "home", 303, "/console/certificates"),
    ("GET", "/console/", "home", 303, "/console/certificates"),
    ("GET", "/console/static/console.css", "static", 200, None),
    ("GET", "/console/static/other.js", "static", 404, None),
    ("GET", "/console/signin", "signin_form", 200, None),
    ("POST", "/console/signin", "signin", 403, None),  # no sign-in form token
    ("POST", "/console/signout", "signout", 303, SIGN_IN + "%2Fconsole%2Fsignout"),
    ("GET", "/console/integrations/connectors", "connectors", 303, SIGN_IN + "%2Fconsole%2Fintegrations%2Fconnectors"),
    ("GET", "/console/integrations/connectors/new", "connector_new", 303, None),
    ("POST", "/console/integrations/connectors/new", "connector_create", 303, None),
    ("GET", "/console/integrations/connectors/ca-1/edit", "connector_edit_form", 303, None),
    ("POST", "/console/integrations/connectors/ca-1/edit", "connector_edit", 303, None),
    ("POST", "/console/integrations/connectors/ca-1/test", "connector_action", 303, None),
    ("POST", "/console/integrations/connectors/ca-1/delete", "connector_action", 303, None),
    ("GET", "/console/integrations/connectors/ca-1/delete", "connector_delete_confirm", 303, None),
    ("GET", "/console/integrations/connectors/ca-1/test", "not_found", 404, None),
    ("GET", "/console/integrations/targets", "targets", 303, SIGN_IN + "%2Fconsole%2Fintegrations%2Ftargets"),
    ("GET", "/console/integrations/targets/new?kind=ssh", "target_new", 303, None),
    ("POST", "/console/integrations/targets/new", "target_create", 303, None),
    ("GET", "/console/integrations/targets/files-1/edit", "target_edit_form", 303, None),
    ("POST", "/console/integrations/targets/files-1/edit", "target_edit", 303, None),
    ("POST", "/console/integrations/targets/files-1/probe", "target_action", 303, None),
    ("POST", "/console/integrations/targets/files-1/delete", "target_action", 303, None),
    ("GET", "/console/integrations/targets/files-1/delete", "target_delete_confirm", 303, None),
    ("GET", "/console/integrations/targets/files-1/probe", "not_found", 404, None),
    ("GET", "/console/certificates/provisioning", "profiles", 303, None),
    ("GET", "/console/certificates/provisioning/new", "profile_new", 303, None),
    ("POST", "/console/certificates/provisioning/new", "profile_create", 303, None),
    ("GET", "/console/certificates/provisioning/bot-1/edit", "profile_edit_form", 303, None),
    ("POST", "/console/certificates/provisioning/bot-1/edit", "profile_edit", 303, None),
    ("GET", "/console/certificates/provisioning/bot-1", "certificate", 303, None),
    ("GET", "/console/certificates", "certificates", 303, SIGN_IN + "%2Fconsole%2Fcertificates"),
    ("GET", "/console/certificates?status=active", "certificates", 303,
     SIGN_IN + "%2Fconsole%2Fcertificates%3Fstatus%3Dactive"),
    ("GET", "/console/requests/new", "request_new", 303, None),
    ("POST", "/console/requests/new", "request_create", 303, None),
    ("GET", "/console/certificates/web/a.example", "certificate", 303, None),
    ("GET", "/console/certificates/web/a.example/revoke", "certificate", 303, None),
    ("POST", "/console/certificates/web/a.example/revoke", "revoke", 303, None),
    ("POST", "/console/certificates/web/a.example", "not_found", 404, None),
    ("GET", "/console/nothing-here", "not_found", 404, None),
], ids=lambda v: str(v))
async def test_each_request_reaches_the_same_handler(client: tuple[httpx.AsyncClient, EndpointSpy], method: str, path: str,
                                                     handler: str, status: int, location: str | None) -> None:
    http, spy = client
    answer = await http.request(method, path)
    assert (spy.endpoints[-1], answer.status_code) == (handler, status), answer.text
    if status == 303:
        expected = location or SIGN_IN
        assert answer.headers["location"].startswith(expected)
    assert answer.headers["x-frame-options"] == "DENY" and answer.headers["cache-control"]


async def test_other_methods_are_refused(client: tuple[httpx.AsyncClient, EndpointSpy]) -> None:
    http, _ = client
    answer = await http.put("/console/certificates")
    assert answer.status_code == 405
