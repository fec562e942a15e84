"""How the gateway reads the deployer's answers (services/gateway/deployer_api.py): a table of named cases
(pass on, refuse with the deployer's code and status, or unavailable), the problem each becomes in the HTTP
API (services/gateway/api_targets.py), and views rebuilt from their known fields only."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from services.common.internal_api import InternalApiSettings
from services.common.settings import KafkaSettings
from services.gateway.api_targets import problem_of
from services.gateway.deployer_api import (
    Answered,
    DeployerApi,
    DeployerRefused,
    DeployerUnavailable,
    answer_of,
    view_of,
)
from services.gateway.settings import GatewaySettings

CASES: list[tuple[str, int, Any, Any]] = [
    # name, status, body, expected: Answered | (status, code) refused | "unavailable"
    ("added", 201, {"name": "t"}, Answered(201, {"name": "t"})),
    ("removed", 204, None, Answered(204, None)),
    ("probe refused", 422, {"code": "TARGET_UNREACHABLE", "message": "m"}, (422, "TARGET_UNREACHABLE")),
    ("in use", 409, {"code": "TARGET_IN_USE", "message": "m"}, (409, "TARGET_IN_USE")),
    ("missing target", 404, {"code": "TARGET_NOT_FOUND", "message": "m"}, (404, "TARGET_NOT_FOUND")),
    ("no actor", 400, {"code": "ACTOR_REQUIRED", "message": "m"}, (400, "ACTOR_REQUIRED")),
    ("token refused", 401, {"code": "UNAUTHENTICATED", "message": "m"}, "unavailable"),
    ("no such route", 404, {"code": "NOT_FOUND", "message": "Not Found"}, "unavailable"),
    ("method not served", 405, {"code": "METHOD_NOT_ALLOWED", "message": "m"}, "unavailable"),
    ("4xx without a problem", 418, None, "unavailable"),
    ("problem without a message", 422, {"code": "X"}, "unavailable"),
    ("server error", 500, {"code": "INTERNAL", "message": "m"}, "unavailable"),
    ("bad gateway", 502, None, "unavailable"),
]


@pytest.mark.parametrize(("status", "body", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_answer_of(status: int, body: Any, expected: Any) -> None:
    if isinstance(expected, Answered):
        assert answer_of(status, body) == expected
    elif expected == "unavailable":
        with pytest.raises(DeployerUnavailable):
            answer_of(status, body)
    else:
        with pytest.raises(DeployerRefused) as refused:
            answer_of(status, body)
        assert (refused.value.status, refused.value.code) == expected


def test_refusals_keep_their_code_and_status_and_unavailable_is_503_with_retry_after() -> None:
    refused = problem_of(DeployerRefused(409, "TARGET_IN_USE", "bound to web"))
    assert (refused.status, refused.code, refused.message) == (409, "TARGET_IN_USE", "bound to web")
    down = problem_of(DeployerUnavailable("the deployer did not answer (ConnectError)"))
    assert (down.status, down.code) == (503, "SERVICE_UNAVAILABLE") and int(down.headers["Retry-After"]) > 0


def test_a_long_message_is_cut() -> None:
    with pytest.raises(DeployerRefused) as refused:
        answer_of(422, {"code": "INVALID_INPUT", "message": "x" * 10_000})
    assert len(refused.value.message) == 2000


def test_views_keep_known_fields_only() -> None:
    view = view_of({"name": "hook", "kind": "webhook", "config": {"url": "https://h/in"}, "secrets": ["hmac_secret"],
                    "profiles": ["web"], "secret_values": {"hmac_secret": "leaked"}})
    assert view == {"name": "hook", "kind": "webhook", "config": {"url": "https://h/in"}, "secrets": ["hmac_secret"],
                    "profiles": ["web"]}
    for off_contract in (None, [], {"name": "t", "config": "x", "secrets": [], "profiles": []},
                         {"name": "t", "config": {}, "secrets": "s", "profiles": []}):
        with pytest.raises(DeployerUnavailable):
            view_of(off_contract)


async def test_from_settings_calls_the_configured_url_with_the_token_and_the_actor(tmp_path: Any) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"profile": "web", "target": "t 1"})

    token = "internal-token-" + "z" * 40
    settings = GatewaySettings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"), deployer_url="https://deployer.example:9443/",
                               internal=InternalApiSettings(token=SecretStr(token), token_file=tmp_path / "none"))
    api = DeployerApi.from_settings(settings, httpx.MockTransport(answer))
    try:
        assert await api.bind("web", "t 1", "root-admin") == 201
    finally:
        await api.aclose()
    (request,) = seen
    assert str(request.url) == "https://deployer.example:9443/internal/v1/profiles/web/targets/t%201"
    assert request.method == "PUT" and request.headers["authorization"] == f"Bearer {token}"
    assert request.headers["x-certrail-actor"] == "root-admin"
