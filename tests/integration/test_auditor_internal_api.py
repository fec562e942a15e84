"""The auditor's internal API (services/auditor/internal_api.py, decision 0020) and the gateway reading
certificate views and timelines through it (services/gateway/auditor_api.py): the bearer token (401, never
logged), the caller's scope passed by the gateway and enforced by the auditor's query, bounded pages, and
503 from the gateway when the auditor does not answer (refused connection, wrong token).

The gateway's API runs in-process over a real SQLite database; the auditor's rows are stored by its real
store (`play_auditor`), its internal routes are the real ones (httpx's ASGI transport), and "down" is a real
closed port."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine

from services.auditor.internal_api import MAX_PAGE, create_internal_app
from services.common.internal_api import (
    InternalApiSettings,
    InternalClient,
    configured_token,
    ensure_token_file,
    mount_internal,
)
from services.common.settings import KafkaSettings
from services.gateway.api_certificates import AUDITOR_UNAVAILABLE_CODE
from services.gateway.auditor_api import AuditorApi
from services.gateway.policy.tokens import Role
from services.gateway.settings import GatewaySettings
from tests.browser.test_console_http import sign_in
from tests.conftest import free_ports
from tests.gateway_fixtures import INTERNAL_TOKEN, _connector
from tests.integration.test_gateway_api import Gateway, RecordingTopics, open_gateway, profile_body
from tests.integration.test_gateway_api_cli import Served
from tests.integration.test_gateway_api_hostile import issue_and_play

KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:9", topic_prefix="t-nokafka.certrail")
WRONG = "wrong-internal-token-" + "y" * 24


class Recording(httpx.AsyncBaseTransport):
    """The auditor's real routes, remembering every request the gateway made."""

    def __init__(self, engine: Engine, asked: list[httpx.Request]) -> None:
        self.inner = httpx.ASGITransport(app=create_internal_app(engine, INTERNAL_TOKEN, lambda: datetime.now(UTC)))
        self.asked = asked

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(request)
        return await self.inner.handle_async_request(request)


def recording(asked: list[httpx.Request], token: SecretStr = INTERNAL_TOKEN) -> Callable[[Engine], AuditorApi]:
    return lambda engine: AuditorApi(InternalClient("http://auditor", token, transport=Recording(engine, asked)))


async def seeded(gw: Gateway) -> dict[str, str]:
    """Profiles web (alice) and api (carol); www and www2 under web, secret under api."""
    _connector(gw.engine, "ca-one")
    admin = gw.token(Role.ADMIN, "root-admin")
    for body in (profile_body("web", requesters=["alice"]), profile_body("api", requesters=["carol"])):
        assert (await gw.call("POST", "/v1/profiles", admin, json=body)).status_code == 201
    tokens = {"admin": admin, "alice": gw.token(Role.REQUESTER, "alice"), "carol": gw.token(Role.REQUESTER, "carol"),
              "auditor-web": gw.token(Role.AUDITOR, "audit-web", ["web"])}
    await issue_and_play(gw, tokens["alice"], "w-1", "web", "www", "www.example.com", "0a0a01")
    await issue_and_play(gw, tokens["alice"], "w-2", "web", "www2", "www2.example.com", "0a0a02")
    await issue_and_play(gw, tokens["carol"], "c-1", "api", "secret", "secret.example.com", "0c0c01")
    return tokens


@pytest.fixture
async def asked() -> list[httpx.Request]:
    return []


@pytest.fixture
async def gateway(tmp_path: Path, asked: list[httpx.Request]) -> AsyncIterator[Gateway]:
    gw = open_gateway(tmp_path, KAFKA, registry_topics=RecordingTopics(), auditor=recording(asked))
    yield gw
    await gw.client.aclose()
    gw.engine.dispose()


@pytest.fixture
async def internal(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """A plain client of the auditor's internal routes over the gateway test's database (no token of its own)."""
    app = create_internal_app(gateway.engine, INTERNAL_TOKEN, lambda: datetime.now(UTC))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://auditor") as client:
        yield client


BEARER = {"Authorization": f"Bearer {INTERNAL_TOKEN.get_secret_value()}"}


# -- the token ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/internal/v1/certificates?all_profiles=true", "/internal/v1/certificates/www",
                                  "/internal/v1/trails/certificates/www", "/internal/v1/trails/requests/w-1"])
async def test_every_internal_route_needs_the_token(gateway: Gateway, internal: httpx.AsyncClient, path: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    await seeded(gateway)
    with caplog.at_level(logging.DEBUG):
        for headers in ({}, {"Authorization": f"Bearer {WRONG}"}, {"Authorization": f"Basic {WRONG}"},
                        {"Authorization": INTERNAL_TOKEN.get_secret_value()}):
            refused = await internal.get(path, headers=headers)
            assert refused.status_code == 401, (headers, refused.text)
            assert refused.json()["code"] == "UNAUTHENTICATED" and refused.headers["www-authenticate"] == "Bearer"
            assert WRONG not in refused.text and INTERNAL_TOKEN.get_secret_value() not in refused.text
        assert (await internal.get(path, headers=BEARER)).status_code == 200
    assert "internal API: refused GET" in caplog.text  # refusals are logged ...
    assert WRONG not in caplog.text and INTERNAL_TOKEN.get_secret_value() not in caplog.text  # ... never the token


async def test_an_auditor_without_a_token_refuses_everyone(gateway: Gateway) -> None:
    app = create_internal_app(gateway.engine, None, lambda: datetime.now(UTC))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://auditor") as client:
        answer = await client.get("/internal/v1/certificates", params={"all_profiles": "true"}, headers=BEARER)
    assert answer.status_code == 401 and "no internal token configured" in answer.json()["message"]


# -- the scope ---------------------------------------------------------------------------------------------


async def test_the_gateway_passes_the_scope_and_the_auditor_answers_only_it(gateway: Gateway, asked: list[httpx.Request],
                                                                            internal: httpx.AsyncClient) -> None:
    tokens = await seeded(gateway)
    asked.clear()
    listed = await gateway.call("GET", "/v1/certificates", tokens["auditor-web"])
    assert {c["certificate_id"] for c in listed.json()["certificates"]} == {"www", "www2"}
    [query] = asked
    assert query.url.params["all_profiles"] == "false" and r_profiles(query) == ["web"]

    asked.clear()
    hidden = await gateway.call("GET", "/v1/certificates/secret", tokens["auditor-web"])
    assert hidden.status_code == 404 and "secret.example.com" not in hidden.text
    assert asked == []  # the scope check reads the gateway's own tables: the auditor is not even asked

    asked.clear()
    everything = await gateway.call("GET", "/v1/certificates", tokens["admin"])
    assert {c["certificate_id"] for c in everything.json()["certificates"]} == {"www", "www2", "secret"}
    assert asked[0].url.params["all_profiles"] == "true" and r_profiles(asked[0]) == []

    # the auditor itself: no scope given is no certificate (a caller that forgets its scope sees nothing)
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({}, set()), ({"profiles": "web"}, {"web"}), ({"profiles": ["web", "api"]}, {"web", "api"}),
        ({"profiles": "nobody"}, set()), ({"all_profiles": "true"}, {"web", "api"})]
    for params, expected in cases:
        answer = await internal.get("/internal/v1/certificates", params=params, headers=BEARER)
        assert {c["profile"] for c in answer.json()["certificates"]} == expected, params


def r_profiles(request: httpx.Request) -> list[str]:
    return request.url.params.get_list("profiles")


async def test_a_requester_named_in_no_profile_costs_the_auditor_nothing(gateway: Gateway, asked: list[httpx.Request]) -> None:
    await seeded(gateway)
    mallory = gateway.token(Role.REQUESTER, "mallory")
    asked.clear()
    assert (await gateway.call("GET", "/v1/certificates", mallory)).json() == {"certificates": []}
    assert asked == []


async def test_the_console_shows_an_admin_the_auditors_timeline(gateway: Gateway, asked: list[httpx.Request]) -> None:
    tokens = await seeded(gateway)
    await sign_in(gateway.client, tokens["admin"])
    asked.clear()
    page = await gateway.client.get("/console/certificates/www")
    assert page.status_code == 200
    timeline = page.text.split('<ol class="timeline"', 1)[1].split("</ol>", 1)[0]
    assert "certificate issued" in timeline and "www2" not in timeline and "secret" not in timeline
    assert "/internal/v1/trails/certificates/www" in [r.url.path for r in asked]


# -- pages -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["limit=0", f"limit={MAX_PAGE + 1}", "offset=-1", "limit=abc", "not_after_before=yesterday",
                                   "not_after_before=2026-12-06T00:00:00"])
async def test_pages_are_bounded(gateway: Gateway, internal: httpx.AsyncClient, query: str) -> None:
    for path in ("/internal/v1/certificates?all_profiles=true", "/internal/v1/trails/requests/w-1"):
        if "not_after" in query and "trails" in path:
            continue
        answer = await internal.get(f"{path}&{query}" if "?" in path else f"{path}?{query}", headers=BEARER)
        assert answer.status_code == 422, (path, query, answer.text)


async def test_pages_cover_everything_once(gateway: Gateway, internal: httpx.AsyncClient) -> None:
    await seeded(gateway)
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = (await internal.get("/internal/v1/certificates", params={"all_profiles": "true", "limit": 2, "offset": offset},
                                   headers=BEARER)).json()
        assert len(page["certificates"]) <= 2
        seen += [c["certificate_id"] for c in page["certificates"]]
        offset = page["next_offset"]
    assert sorted(seen) == ["secret", "www", "www2"]

    whole = (await internal.get("/internal/v1/trails/certificates/www", headers=BEARER)).json()
    assert whole["next_offset"] is None and len(whole["entries"]) >= 3
    paged: list[dict[str, Any]] = []
    offset = 0
    while offset is not None:
        page = (await internal.get("/internal/v1/trails/certificates/www", params={"limit": 1, "offset": offset},
                                   headers=BEARER)).json()
        paged += page["entries"]
        offset = page["next_offset"]
    assert paged == whole["entries"]
    assert {e["certificate_id"] for e in paged} == {"www"}


# -- the auditor down --------------------------------------------------------------------------------------


def unreachable(engine: Engine) -> AuditorApi:  # noqa: ARG001 - nothing listens on the port
    [port] = free_ports(1)
    return AuditorApi(InternalClient(f"http://127.0.0.1:{port}", INTERNAL_TOKEN, timeout_s=2.0, service="auditor"))


@pytest.mark.parametrize("auditor", [unreachable, recording([], SecretStr(WRONG))], ids=["down", "wrong-token"])
async def test_the_gateway_answers_503_when_the_auditor_does_not(tmp_path: Path, auditor: Callable[[Engine], AuditorApi],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    gw = open_gateway(tmp_path, KAFKA, registry_topics=RecordingTopics(), auditor=auditor)
    try:
        tokens = await seeded(gw)
        with caplog.at_level(logging.DEBUG):
            for path in ("/v1/certificates", "/v1/certificates/www", "/v1/requests/w-1/timeline"):
                answer = await gw.client.get(path, headers={"Authorization": f"Bearer {tokens['alice']}"})
                assert answer.status_code == 503, (path, answer.text)
                assert answer.json()["code"] == AUDITOR_UNAVAILABLE_CODE and answer.headers["retry-after"] == "5"
                assert "auditor" in answer.json()["message"]
            # a request's status is the gateway's own: still answered, without the certificate view
            status = await gw.call("GET", "/v1/requests/w-1", tokens["alice"])
            body = status.json()
            assert status.status_code == 200 and body["state"] == "issued", body
            assert body["certificate"] is None and body["certificate_error"]["code"] == AUDITOR_UNAVAILABLE_CODE
            # scope checks never depend on the auditor: still 404 for what the token may not read
            assert (await gw.call("GET", "/v1/certificates/secret", tokens["alice"])).status_code == 404
        for secret in (WRONG, INTERNAL_TOKEN.get_secret_value()):
            assert secret not in caplog.text
    finally:
        await gw.client.aclose()
        gw.engine.dispose()


# -- over the network --------------------------------------------------------------------------------------


async def service_app(scope: Any, receive: Any, send: Any) -> None:
    """Stands for the auditor's FastStream app (``/health``, ``/metrics``): answers 204 to everything."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def test_the_gateway_reads_an_auditor_served_on_its_port_with_the_token_file(tmp_path: Path) -> None:
    """As `certrail up` wires them: one token file, the auditor's port serving /health and /internal/v1 (uvicorn),
    the gateway's client built from its settings (CERTRAIL_GATEWAY_AUDITOR_URL, CERTRAIL_INTERNAL_TOKEN_FILE)."""
    internal = InternalApiSettings(token_file=ensure_token_file(tmp_path / "var" / "internal-api.token"))
    servers: list[Served] = []
    apis: list[AuditorApi] = []

    def served_auditor(engine: Engine) -> AuditorApi:
        app = mount_internal(service_app, create_internal_app(engine, configured_token(internal), lambda: datetime.now(UTC)))
        servers.append(Served(app).__enter__())
        apis.append(AuditorApi.from_settings(GatewaySettings(kafka=KAFKA, auditor_url=servers[0].url, internal=internal)))
        return apis[0]

    gw = open_gateway(tmp_path, KAFKA, registry_topics=RecordingTopics(), auditor=served_auditor)
    try:
        tokens = await seeded(gw)
        listed = await gw.call("GET", "/v1/certificates", tokens["admin"])
        assert {c["certificate_id"] for c in listed.json()["certificates"]} == {"www", "www2", "secret"}
        shown = (await gw.call("GET", "/v1/certificates/www", tokens["alice"])).json()
        assert shown["inventory"]["serial"] == "0a0a01" and shown["inventory"]["profile"] == "web"
        timeline = (await gw.call("GET", "/v1/requests/w-1/timeline", tokens["alice"])).json()
        assert timeline["certificate_ids"] == ["www"] and timeline["entries"]
        async with httpx.AsyncClient(base_url=servers[0].url) as plain:
            assert (await plain.get("/health")).status_code == 204  # the service's own routes need no token
            assert (await plain.get("/internal/v1/certificates", params={"all_profiles": "true"})).status_code == 401
    finally:
        for api in apis:
            await api.aclose()
        for server in servers:
            server.__exit__(None, None, None)
        await gw.client.aclose()
        gw.engine.dispose()
