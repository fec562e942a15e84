"""The HTTP API and the console against a hostile caller (issue 17): scoped reads (a table of
callers x endpoints), refused requests that must not reach other certificates (their timelines,
their inventory rows), bounded bodies on every endpoint that reads one (never a 5xx), throttled
failed authentication (a fake clock), and the OpenAPI document listing every error status.

The API runs in-process (httpx's ASGI transport) over a real SQLite database; the auditor's part
(audit log and inventory) is played with its real store (`play_auditor`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from prometheus_client import CollectorRegistry

from services.auditor import inventory_read as inventory
from services.common.consumer import Outbound
from services.common.contracts.events import RequestRejected
from services.common.db import read_session
from services.common.settings import KafkaSettings
from services.gateway.api import create_api
from services.gateway.api_throttle import AuthThrottle
from services.gateway.policy.throttle import ThrottleLimits
from services.gateway.policy.tokens import Role
from tests.browser.test_console_http import hidden, sign_in
from tests.gateway_fixtures import _connector, auditor_api
from tests.integration.test_gateway_api import (
    Gateway,
    RecordingTopics,
    issued_event,
    make_csr,
    open_gateway,
    play_auditor,
    profile_body,
    sign,
)

KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:9", topic_prefix="t-nokafka.certrail")


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = open_gateway(tmp_path, KAFKA, registry_topics=RecordingTopics())
    _connector(gw.engine, "ca-one")  # a connector row as the registry stores it (no emCA needed here)
    yield gw
    await gw.client.aclose()
    gw.engine.dispose()


async def issue_and_play(gw: Gateway, token: str, request_id: str, profile: str, certificate_id: str, name: str,
                         serial: str) -> None:
    """An accepted issue request, issued (as the issuer would report it) and stored by the auditor."""
    csr = make_csr(name)
    answer = await gw.call("POST", "/v1/certificates", token, json={"request_id": request_id, "profile": profile,
                                                                   "certificate_id": certificate_id, "csr": csr})
    assert answer.status_code == 202, answer.text
    [command] = [e for e in gw.published.events(gw.topics.commands("ca-one")) if e.data.request_id == request_id]
    leaf, ca = sign(csr, int(serial, 16))
    issued = issued_event(command.data, leaf, [ca], serial)  # as the issuer publishes it
    gw.published.records.append((gw.topics.issuer_events, certificate_id,
                                 Outbound(gw.topics.issuer_events, issued, key=certificate_id).value()))
    play_auditor(gw)


@pytest.fixture
async def estate(gateway: Gateway) -> dict[str, str]:
    """Profiles web (alice, bob) and api (carol); www under web (alice), secret under api (carol)."""
    gw = gateway
    admin = gw.token(Role.ADMIN, "root-admin")
    for body in (profile_body("web", requesters=["alice", "bob"]), profile_body("api", requesters=["carol"])):
        assert (await gw.call("POST", "/v1/profiles", admin, json=body)).status_code == 201
    tokens = {
        "admin": admin,
        "auditor": gw.token(Role.AUDITOR, "audit-team"),
        "auditor-web": gw.token(Role.AUDITOR, "audit-web", ["web"]),
        "alice": gw.token(Role.REQUESTER, "alice"),
        "alice-api": gw.token(Role.REQUESTER, "alice", ["api"]),  # scoped to a profile that does not list her
        "carol": gw.token(Role.REQUESTER, "carol"),
        "mallory": gw.token(Role.REQUESTER, "mallory"),  # named in no profile
    }
    await issue_and_play(gw, tokens["alice"], "w-1", "web", "www", "www.example.com", "0a0a01")
    await issue_and_play(gw, tokens["carol"], "c-1", "api", "secret", "secret.example.com", "0c0c01")
    return tokens


# -- scoped reads ------------------------------------------------------------------------------------------

#: caller -> (certificates listed and shown, carol's request c-1 readable, profiles listed and shown)
READS: dict[str, tuple[set[str], bool, set[str]]] = {
    "admin": ({"www", "secret"}, True, {"web", "api"}),
    "auditor": ({"www", "secret"}, True, {"web", "api"}),
    "auditor-web": ({"www"}, False, {"web"}),
    "alice": ({"www"}, False, {"web"}),
    "alice-api": (set(), False, set()),
    "carol": ({"secret"}, True, {"api"}),
    "mallory": (set(), False, set()),
}


@pytest.mark.parametrize("caller", list(READS))
async def test_reads_are_scoped(gateway: Gateway, estate: dict[str, str], caller: str) -> None:
    gw, token = gateway, estate[caller]
    shown, reads_c1, profiles = READS[caller]
    answer = await gw.call("GET", "/v1/certificates", token)
    assert {c["certificate_id"] for c in answer.json()["certificates"]} == shown
    assert {p["name"] for p in (await gw.call("GET", "/v1/profiles", token)).json()} == profiles
    for name in ("web", "api"):
        one = await gw.call("GET", f"/v1/profiles/{name}", token)
        assert one.status_code == (200 if name in profiles else 403), (caller, name, one.text)
    for certificate_id in ("www", "secret"):
        one = await gw.call("GET", f"/v1/certificates/{certificate_id}", token)
        expected = 200 if certificate_id in shown else 404
        assert one.status_code == expected, (caller, certificate_id, one.text)
        if expected == 404:
            assert one.json()["code"] == "CERTIFICATE_NOT_FOUND" and "secret.example.com" not in one.text
    for path in ("/v1/requests/c-1", "/v1/requests/c-1/timeline"):
        read = await gw.call("GET", path, token)
        assert read.status_code == (200 if reads_c1 else 404), (caller, path, read.text)
        if not reads_c1:
            assert "0c0c01" not in read.text and "secret.example.com" not in read.text


async def test_a_request_id_naming_another_certificate_reads_nothing_of_it(gateway: Gateway, estate: dict[str, str]) -> None:
    gw = gateway
    # mallory (in no profile) and alice (not in api) name carol's certificate, its id and its serial as request ids
    attempts = [("mallory", {"request_id": "secret", "profile": "api", "certificate_id": "secret", "csr": make_csr("x.example.com")}),
                ("mallory", {"request_id": "0c0c01", "profile": "api", "certificate_id": "secret", "csr": make_csr("x.example.com")}),
                ("alice", {"request_id": "a-steal", "profile": "web", "certificate_id": "secret", "csr": make_csr("www.example.com")})]
    for caller, body in attempts:
        refused = await gw.call("POST", "/v1/certificates", estate[caller], json=body)
        assert refused.status_code in (403, 409), refused.text
    revoke = await gw.call("POST", "/v1/certificates/secret/revoke", estate["alice"], json={"request_id": "a-rev", "reason": "superseded"})
    assert (revoke.status_code, revoke.json()["code"]) == (403, "REQUESTER_NOT_AUTHORISED")
    conflict = await gw.call("POST", "/v1/certificates", estate["mallory"],
                             json={"request_id": "c-1", "profile": "api", "certificate_id": "secret", "csr": make_csr("x.example.com")})
    assert (conflict.status_code, conflict.json()["code"]) == (409, "DUPLICATE_REQUEST_CONFLICT")
    play_auditor(gw)

    # no rejection names carol's certificate: no subject, no certificate_id, keyed by the request id
    rejections = [e for e in gw.published.events(gw.topics.gateway_events) if isinstance(e.data, RequestRejected)]
    assert len(rejections) == 5
    assert all(e.data.certificate_id is None and e.subject is None for e in rejections)
    keys = [k for t, k, v in gw.published.records if t == gw.topics.gateway_events and b"request.rejected" in v]
    assert keys == ["secret", "0c0c01", "a-steal", "a-rev", "c-1"]

    for caller, request_id in (("mallory", "secret"), ("mallory", "0c0c01"), ("alice", "a-steal"), ("alice", "a-rev")):
        status = (await gw.call("GET", f"/v1/requests/{request_id}", estate[caller])).json()
        assert (status["status"], status["certificate"]) == ("rejected", None)
        timeline = (await gw.call("GET", f"/v1/requests/{request_id}/timeline", estate[caller])).json()
        assert timeline["certificate_ids"] == [] and len(timeline["entries"]) == 1
        assert timeline["entries"][0]["event_type"] == RequestRejected.TYPE
    for path in ("/v1/requests/c-1", "/v1/requests/c-1/timeline"):  # carol's id: not mallory's to read
        assert (await gw.call("GET", path, estate["mallory"])).status_code == 404
    with read_session(gw.engine) as session:
        view = inventory.get_certificate(session, "secret", datetime.now(UTC))
    assert view is not None and (view.status, view.last_error_code, view.requester) == ("active", None, "carol")
    shown = (await gw.call("GET", "/v1/certificates/secret", estate["carol"])).json()
    assert [r["request_id"] for r in shown["requests"]] == ["c-1"]  # the refused requests are not filed under it


async def test_a_rejection_of_an_authorised_caller_still_names_its_certificate(gateway: Gateway, estate: dict[str, str]) -> None:
    gw = gateway
    refused = await gw.call("POST", "/v1/certificates/www/renew", estate["alice"],
                            json={"request_id": "w-2", "csr": make_csr("www.other.org")})
    assert (refused.status_code, refused.json()["code"]) == (422, "SAN_NOT_ALLOWED")
    assert "'dns:www.other.org'" in refused.json()["message"]  # bounded and escaped, in quotes
    [rejected] = [e for e in gw.published.events(gw.topics.gateway_events) if isinstance(e.data, RequestRejected)]
    assert (rejected.data.certificate_id, rejected.subject) == ("www", "www")
    play_auditor(gw)
    with read_session(gw.engine) as session:
        view = inventory.get_certificate(session, "www", datetime.now(UTC))
    assert view is not None and view.last_error_code == "SAN_NOT_ALLOWED"
    timeline = (await gw.call("GET", "/v1/requests/w-2/timeline", estate["alice"])).json()
    assert timeline["certificate_ids"] == ["www"]


async def test_san_refusals_do_not_echo_the_name_verbatim(gateway: Gateway, estate: dict[str, str]) -> None:
    hostile = "a" * 40 + ".\u202eevil.org"  # long, with a right-to-left override
    answer = await gateway.call("POST", "/v1/certificates", estate["alice"], json={
        "request_id": "w-9", "profile": "web", "certificate_id": "w9", "csr": make_csr("www.example.com"),
        "sans": ["dns:www.example.com", f"dns:{hostile}"]})
    assert answer.status_code == 422
    assert "\u202e" not in answer.text and hostile not in answer.json()["message"]


# -- bodies ------------------------------------------------------------------------------------------------

DEEP_ARRAY = b"[" * 200_000 + b"]" * 200_000
DEEP_OBJECT = json.dumps(json.loads('{"a":' * 40 + "1" + "}" * 40)).encode()
LONG_NUMBER = b'{"request_id": 1' + b"0" * 5000 + b"}"
HUGE_FLOAT = b'{"request_id": 1e999}'
MANY_VALUES = b"[" + b",".join([b"0"] * 60_000) + b"]"
TOO_LARGE = b'{"x": "' + b"y" * (3 * 1024 * 1024) + b'"}'
BODIES = {"deep array": (DEEP_ARRAY, 422, "JSON_LIMIT_EXCEEDED"), "deep object": (DEEP_OBJECT, 422, "JSON_LIMIT_EXCEEDED"),
          "long number": (LONG_NUMBER, 422, "JSON_LIMIT_EXCEEDED"), "huge float": (HUGE_FLOAT, 422, "JSON_LIMIT_EXCEEDED"),
          "many values": (MANY_VALUES, 422, "JSON_LIMIT_EXCEEDED"), "too large": (TOO_LARGE, 413, "BODY_TOO_LARGE")}
#: every route that reads a body, and whose token
BODY_ROUTES = [("POST", "/v1/certificates", "alice"), ("POST", "/v1/certificates/www/renew", "alice"),
               ("POST", "/v1/certificates/www/revoke", "alice"), ("POST", "/v1/profiles", "admin"),
               ("PUT", "/v1/profiles/web", "admin"), ("POST", "/v1/connectors", "admin"), ("PATCH", "/v1/connectors/ca-one", "admin"),
               ("POST", "/v1/tokens", "admin"), ("POST", "/v1/requesters/ci/keys", "admin")]


@pytest.mark.parametrize("kind", list(BODIES))
async def test_hostile_json_bodies_are_precise_4xx(gateway: Gateway, estate: dict[str, str], kind: str) -> None:
    raw, status, code = BODIES[kind]
    for method, path, caller in BODY_ROUTES:
        answer = await gateway.call(method, path, estate[caller], content=raw, headers={"content-type": "application/json"})
        assert (answer.status_code, answer.json()["code"]) == (status, code), (method, path, answer.text[:300])
        assert len(answer.text) < 2000


def nested_multipart(depth: int) -> tuple[bytes, str]:
    body = b""
    for i in range(depth):
        body += b"--b%d\r\nContent-Disposition: form-data; name=\"f\"\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
    return body, "multipart/form-data; boundary=b0"


async def test_hostile_multipart_bodies(gateway: Gateway, estate: dict[str, str]) -> None:
    gw = gateway
    for depth in (2, 5000):
        raw, content_type = nested_multipart(depth)
        answer = await gw.call("POST", "/v1/connectors", estate["admin"], content=raw, headers={"content-type": content_type})
        assert (answer.status_code, answer.json()["code"]) == (422, "SCHEMA_VIOLATION"), answer.text[:300]
    many = b"".join(b"--b\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nx\r\n" % i for i in range(500)) + b"--b--\r\n"
    answer = await gw.call("POST", "/v1/connectors", estate["admin"], content=many,
                           headers={"content-type": "multipart/form-data; boundary=b"})
    assert (answer.status_code, answer.json()["code"]) == (422, "SCHEMA_VIOLATION") and "100 parts" in answer.text

    # the console's forms: an error page with the status, never a 5xx
    csrf = await sign_in(gw.client, estate["admin"])
    for raw, content_type in (nested_multipart(5000), (TOO_LARGE, "application/x-www-form-urlencoded")):
        page = await gw.client.post("/console/integrations/connectors/new", content=raw, headers={"content-type": content_type})
        assert page.status_code in (400, 413), page.text[:300]
    urlencoded = "&".join(f"f{i}=x" for i in range(1000)) + f"&csrf={csrf}"
    page = await gw.client.post("/console/certificates/provisioning/new", content=urlencoded.encode(),
                                headers={"content-type": "application/x-www-form-urlencoded"})
    assert page.status_code == 400 and "FORM_INVALID" in page.text
    form = await gw.client.get("/console/signin")
    raw, content_type = nested_multipart(5000)
    signin = await gw.client.post("/console/signin", content=raw, headers={"content-type": content_type})
    assert signin.status_code == 403 and hidden(form.text, "pre")  # read as an empty (expired) sign-in form


# -- throttling of failed authentication -----------------------------------------------------------------------


@pytest.fixture
async def throttled(gateway: Gateway) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient, list[float], CollectorRegistry]]:
    now = [1000.0]
    registry = CollectorRegistry()
    throttle = AuthThrottle(ThrottleLimits(per_address=4, per_identity=2, window_s=60), registry=registry,
                            monotonic=lambda: now[0])
    app = create_api(gateway.runtime, throttle=throttle, auditor=auditor_api(gateway.engine))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        yield gateway, client, now, registry


async def test_failed_bearer_tokens_are_throttled(throttled: Any) -> None:
    gw, client, now, registry = throttled
    admin = gw.token(Role.ADMIN, "root-admin")
    wrong = admin[:-1] + ("B" if admin[-1] != "B" else "C")  # the admin's token id, a wrong secret

    async def get(token: str | None) -> httpx.Response:
        return await client.get("/v1/profiles", headers={"Authorization": f"Bearer {token}"} if token else {})

    assert [(await get(wrong)).status_code for _ in range(2)] == [401, 401]
    limited = await get(wrong)  # the token id's limit (2) is reached
    assert (limited.status_code, limited.json()["code"], limited.headers["retry-after"]) == (429, "AUTH_THROTTLED", "60")
    assert (await get(admin)).status_code == 200  # the valid token is never slowed, throttled id or not
    assert (await get(None)).status_code == 401  # the address: 4 failures so far
    assert (await get("ctr_nonsense")).status_code == 429
    assert (await get(admin)).status_code == 200
    assert registry.get_sample_value("certrail_gateway_auth_throttled_total", {"door": "api"}) == 2
    now[0] += 61
    assert (await get(wrong)).status_code == 401


async def test_failed_console_sign_ins_are_throttled(throttled: Any) -> None:
    gw, client, now, registry = throttled
    admin = gw.token(Role.ADMIN, "root-admin")

    async def sign_in_with(token: str) -> httpx.Response:
        form = await client.get("/console/signin")
        return await client.post("/console/signin", data={"pre": hidden(form.text, "pre"), "token": token})

    statuses = [(await sign_in_with("ctr_000000000000_" + "x" * 43)).status_code for _ in range(3)]
    assert statuses == [401, 401, 429]  # the token id's limit
    assert (await sign_in_with("ctr_111111111111_" + "x" * 43)).status_code == 401  # another id: the 4th from the address
    answer = await sign_in_with("ctr_222222222222_" + "x" * 43)  # the address's limit
    assert answer.status_code == 429 and "AUTH_THROTTLED" in answer.text and int(answer.headers["retry-after"]) > 0
    assert (await sign_in_with(admin)).status_code == 303  # the right token signs in at once
    assert registry.get_sample_value("certrail_gateway_auth_throttled_total", {"door": "console"}) == 2


# -- the OpenAPI document ----------------------------------------------------------------------------------------


async def test_openapi_documents_every_error_status(gateway: Gateway) -> None:
    document = (await gateway.client.get("/openapi.json")).json()
    problem = {"$ref": "#/components/schemas/Problem"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            statuses = set(operation["responses"])
            assert {"401", "403", "429"} <= statuses, (method, path)
            if "requestBody" in operation:
                assert {"413", "415", "422"} <= statuses, (method, path)
            if "{" in path:
                assert "404" in statuses, (method, path)
            for status in statuses - {"200", "201", "202", "204"}:
                assert operation["responses"][status]["content"]["application/json"]["schema"] == problem
    assert "HTTPValidationError" not in document["components"]["schemas"]


@pytest.mark.parametrize("domain_rules", [{}, {"dns_suffixes": []}, {"dns_suffixes": [], "ip_networks": []}])
async def test_the_profile_schema_refuses_what_the_api_refuses(gateway: Gateway, estate: dict[str, str],
                                                               domain_rules: dict[str, Any]) -> None:
    document = (await gateway.client.get("/openapi.json")).json()
    # the document's own component, its $refs resolved against the document's components
    schema = {**document["components"]["schemas"]["ProvisioningProfile"], "components": document["components"]}
    body = profile_body("fresh", domain_rules=domain_rules)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, schema)
    refused = await gateway.call("POST", "/v1/profiles", estate["admin"], json=body)
    assert (refused.status_code, refused.json()["code"]) == (422, "SCHEMA_VIOLATION")
    jsonschema.validate(profile_body("fresh"), schema)  # and a good one passes both
    assert (await gateway.call("POST", "/v1/profiles", estate["admin"], json=profile_body("fresh"))).status_code == 201


@pytest.mark.parametrize(("field", "value"), [("base_url", "http://emca.example"), ("concurrency", 0), ("name", "Bad Name"),
                                              ("username", ""), ("password", "   ")])
async def test_the_connector_schema_refuses_what_the_api_refuses(gateway: Gateway, estate: dict[str, str], field: str,
                                                                 value: Any) -> None:
    document = (await gateway.client.get("/openapi.json")).json()
    schema = {**document["components"]["schemas"]["ConnectorCreateBody"], "components": document["components"]}
    body = {"name": "ca-two", "version": "V4.2.3", "base_url": "https://emca.example", "username": "u", "issuing_ca": "CA",
            "subscriber_id": "S", "default_profile": "TLS", "password": "p", "client_id": "c"}
    jsonschema.validate(body, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, field: value}, schema)
    refused = await gateway.call("POST", "/v1/connectors", estate["admin"], json={**body, field: value})
    assert refused.status_code == 422 and refused.json()["code"] in ("SCHEMA_VIOLATION", "INVALID_INPUT"), refused.text
