"""The console's HTTP behaviour without a browser (fast, no Kafka): the console over the API app
(httpx's ASGI transport), a real SQLite database and the emCA simulator. Sign-in and its cookie,
CSRF on every POST, sessions ending with their token, roles, validation errors placed next to
their field, the Certificate Authority dropdown, delete refused with the reason, no secret in any
page, and the pure helpers of services/gateway/console/views.py."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from emca_sim.server import SimServer, start_in_thread
from services.common.emca.types import EmcaVersion
from services.common.settings import KafkaSettings
from services.gateway.console import views
from services.gateway.console.client import Reply
from services.gateway.console.forms import Form
from services.gateway.policy.tokens import Role
from tests.integration.test_gateway_api import Gateway, RecordingTopics, connector_json, open_gateway, secrets_of

ISSUING_CA = "certrail Sim Issuing CA P-256"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    with start_in_thread(tmp_path_factory.mktemp("emca-sim-console"), port=0, crl_port=0, admin_port=0) as server:
        yield server


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9", topic_prefix="t-nokafka.certrail")
    gw = open_gateway(tmp_path, kafka, registry_topics=RecordingTopics())
    yield gw
    await gw.client.aclose()
    gw.engine.dispose()


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden {name} in the page"
    return match.group(1)


def field_error(html: str, name: str) -> str:
    match = re.search(rf'<p class="field-error" id="e-{name}">([^<]*)</p>', html)
    return match.group(1) if match else ""


async def sign_in(client: httpx.AsyncClient, token: str) -> str:
    """Signs in; returns the session's CSRF token."""
    form = await client.get("/console/signin")
    answer = await client.post("/console/signin", data={"pre": hidden(form.text, "pre"), "token": token, "next": "/console/certificates"})
    assert answer.status_code == 303, answer.text
    page = await client.get("/console/certificates")
    assert page.status_code == 200
    return hidden(page.text, "csrf")


def multipart(body: dict[str, object], csrf: str) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]]]:
    data = {k: str(v) for k, v in body.items() if not k.endswith("_base64")}
    data["csrf"] = csrf
    files = {"ca_bundle": ("tls-ca.pem", base64.b64decode(str(body["ca_bundle_base64"])), "application/x-pem-file")}
    return data, files


async def test_sign_in_session_and_csrf(gateway: Gateway) -> None:
    client = gateway.client
    admin = gateway.token(Role.ADMIN, "root-admin")
    first = await client.get("/console/integrations/connectors")
    assert (first.status_code, first.headers["location"]) == (303, "/console/signin?next=%2Fconsole%2Fintegrations%2Fconnectors")

    form = await client.get("/console/signin")
    assert 'for="f-token"' in form.text and form.headers["content-security-policy"].startswith("default-src 'none'")
    refused = await client.post("/console/signin", data={"pre": "forged", "token": admin})
    assert refused.status_code == 403  # the sign-in form's own double-submit token
    wrong = await client.post("/console/signin", data={"pre": hidden(form.text, "pre"), "token": "ctr_000000000000_" + "x" * 43})
    assert wrong.status_code == 401 and "UNAUTHENTICATED" in wrong.text

    form = await client.get("/console/signin")
    answer = await client.post("/console/signin", data={"pre": hidden(form.text, "pre"), "token": admin,
                                                        "next": "//evil.example/x"})
    assert answer.headers["location"] == "/console/certificates"  # no open redirect
    cookie = answer.headers["set-cookie"]
    assert "certrail_console=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert admin not in cookie and admin.split("_", 2)[2] not in cookie  # the secret (base64url: it may hold "_" itself)

    page = await client.get("/console/integrations/connectors")
    assert page.status_code == 200 and "No CA connector yet" in page.text and admin not in page.text
    csrf = hidden(page.text, "csrf")
    no_csrf = await client.post("/console/integrations/connectors/x/test", data={})
    assert no_csrf.status_code == 403 and "CSRF_FAILED" in no_csrf.text
    other_origin = await client.post("/console/integrations/connectors/x/test", data={"csrf": csrf},
                                     headers={"origin": "https://evil.example"})
    assert other_origin.status_code == 403

    # the session ends as soon as its token is revoked
    token_id = admin.split("_")[1]
    other_admin = gateway.token(Role.ADMIN, "other-admin")
    revoked = await gateway.call("DELETE", f"/v1/tokens/{token_id}", other_admin)
    assert revoked.status_code == 204
    after = await client.get("/console/integrations/connectors")
    assert after.status_code == 303 and after.headers["location"].startswith("/console/signin?reason=")

    unknown = await client.get("/console/nothing-here")
    assert unknown.status_code == 404 and "text/html" in unknown.headers["content-type"]


async def test_connector_validation_bot_dropdown_and_delete_refused(gateway: Gateway, sim: SimServer) -> None:
    client = gateway.client
    csrf = await sign_in(client, gateway.token(Role.ADMIN, "root-admin"))
    secrets = secrets_of(sim, EmcaVersion.V4_2_3)

    form = await client.get("/console/integrations/connectors/new")
    for f in views.CONNECTOR_FIELDS:  # every field labelled; the version's fields marked
        assert f'<label for="f-{f.name}"' in form.text
    assert 'data-versions="V4.0.17"' in form.text and 'data-versions="V4.2.3|V4.2.4+"' in form.text

    cases = {
        "issuing_ca": ({"issuing_ca": "certrail Sim Issuing CA p-256"}, "ISSUING_CA_NOT_FOUND"),
        "subscriber_id": ({"subscriber_id": "SUB-9999"}, "SUBSCRIBER_INVALID"),
        "password": ({"password": "not-the-password"}, "CA_AUTH_FAILED"),
        "name": ({}, "name"),
    }
    for field, (overrides, code) in cases.items():
        data, files = multipart(connector_json(sim, EmcaVersion.V4_2_3, "ca-one", **overrides), csrf)
        if field == "name":
            data["name"] = "Bad Name!"
        refused = await client.post("/console/integrations/connectors/new", data=data, files=files)
        assert refused.status_code == 422, refused.text
        assert code in field_error(refused.text, field) or (code == "name" and field_error(refused.text, field)), field
        assert not any(s in refused.text for s in secrets)  # the password is never echoed back
        assert 'name="password" type="password"' in refused.text and 'value="not-the-password"' not in refused.text
    assert "Use “certrail Sim Issuing CA P-256”" in (await client.post(
        "/console/integrations/connectors/new",
        data=multipart(connector_json(sim, EmcaVersion.V4_2_3, "ca-one", issuing_ca="certrail Sim Issuing CA p-256"), csrf)[0],
        files=multipart(connector_json(sim, EmcaVersion.V4_2_3, "ca-one"), csrf)[1])).text

    data, files = multipart(connector_json(sim, EmcaVersion.V4_2_3, "ca-one"), csrf)
    data["aes_key"] = "belongs-to-another-version"  # ignored: not a field of V4.2.3
    created = await client.post("/console/integrations/connectors/new", data=data, files=files)
    assert (created.status_code, created.headers["location"]) == (303, "/console/integrations/connectors"), created.text
    listing = await client.get("/console/integrations/connectors")
    assert "validated against emCA and created: Active." in listing.text and "V4.2.3" in listing.text
    assert not any(s in listing.text for s in secrets)

    data, files = multipart(connector_json(sim, EmcaVersion.V4_2_3, "ca-off"), csrf)
    assert (await client.post("/console/integrations/connectors/new", data=data, files=files)).status_code == 303
    assert (await client.post("/console/integrations/connectors/ca-off/deactivate", data={"csrf": csrf})).status_code == 303
    assert "Inactive" in (await client.get("/console/integrations/connectors")).text

    bot = await client.get("/console/certificates/provisioning/new")
    assert re.findall(r'<option value="(ca-[^"]+)"', bot.text) == ["ca-one"]  # enabled connectors only
    body = {"csrf": csrf, "name": "web", "connector": "ca-one", "ca_profile": "TLS Server", "key_generation": "requester",
            "allowed_requesters": "alice", "dns_suffixes": "", "rsa_min_bits": "2048", "ec_curves": ["P-256"],
            "validity_days": "90", "renew_before_days": "30"}
    refused = await client.post("/console/certificates/provisioning/new", data=body)
    assert refused.status_code == 422 and "subjectAltName" in refused.text
    body["dns_suffixes"] = "example.com"
    saved = await client.post("/console/certificates/provisioning/new", data=body)
    assert saved.status_code == 303, saved.text
    profiles = await client.get("/console/certificates/provisioning")
    assert "configured on ca-one" in profiles.text and "P30D before expiry" in profiles.text
    edit = await client.get("/console/certificates/provisioning/web/edit")
    assert 'value="30"' in edit.text and '<option value="ca-one" data-default-profile="TLS Server" selected>' in edit.text

    await client.post("/console/integrations/connectors/ca-one/delete", data={"csrf": csrf})
    refused_delete = await client.get("/console/integrations/connectors")
    assert "Delete ca-one refused: CONNECTOR_IN_USE" in refused_delete.text and "web" in refused_delete.text

    # edit: secrets left blank are kept; the name cannot change
    edit_form = await client.get("/console/integrations/connectors/ca-one/edit")
    assert not any(s in edit_form.text for s in secrets) and "Leave blank to keep the stored one." in edit_form.text
    changed = await client.post("/console/integrations/connectors/ca-one/edit",
                                data={"csrf": csrf, "version": "V4.2.3", "concurrency": "4", "name": "renamed"})
    assert changed.status_code == 303, changed.text
    assert (await gateway.call("GET", "/v1/connectors/ca-one", gateway.token(Role.ADMIN, "a2"))).json()["concurrency"] == 4


async def test_roles_shape_the_console(gateway: Gateway, sim: SimServer) -> None:
    client = gateway.client
    await sign_in(client, gateway.token(Role.REQUESTER, "alice"))
    page = await client.get("/console/certificates")
    assert "CA Connectors" not in page.text and "Request a certificate" in page.text
    refused = await client.get("/console/integrations/connectors")
    assert refused.status_code == 403 and "REQUESTER_NOT_AUTHORISED" in refused.text
    missing = await client.get("/console/certificates/no-such-cert")
    assert missing.status_code == 404 and "CERTIFICATE_NOT_FOUND" in missing.text
    bad_filter = await client.get("/console/certificates?expiring_within_days=-3")
    assert bad_filter.status_code == 200 and "expiring_within_days" in bad_filter.text


def test_views_helpers() -> None:
    problem = Reply(422, {"code": "ISSUING_CA_NOT_FOUND", "message": "no CA named 'x'. Did you mean 'X' or \"Y's\"?"})
    errors = views.problem_errors(problem, {"issuing_ca"})
    assert errors.suggestions["issuing_ca"] == ["X", "Y's"] and "ISSUING_CA_NOT_FOUND" in errors.fields["issuing_ca"]
    schema = Reply(422, {"code": "SCHEMA_VIOLATION", "message": "m", "errors": [{"field": "body.pfx_base64", "message": "bad"},
                                                                                 {"field": "body", "message": "whole"}]})
    errors = views.problem_errors(schema, {"pfx"}, views.CONNECTOR_ALIASES)
    assert errors.fields == {"pfx": "bad"} and errors.general == ["whole"]
    invalid = Reply(422, {"code": "INVALID_INPUT", "message": "base_url: HTTPS only; secrets.client_id: missing"})
    assert views.problem_errors(invalid, {"base_url", "client_id"}).fields == {"base_url": "HTTPS only", "client_id": "missing"}

    form = Form()
    for name, value in [("version", "V4.0.17"), ("name", "x"), ("password", " pw "), ("client_id", "ignored"), ("aes_key", "k")]:
        form.add(name, value)
    form.files["pfx"] = b"\x30\x82"
    body = views.connector_body(form, create=True)
    assert body == {"version": "V4.0.17", "name": "x", "password": " pw ", "aes_key": "k", "pfx_base64": "MII="}
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert views.days_left((now + timedelta(days=10, hours=1)).isoformat(), now) == 10
    assert views.urgency(-1, "active") == "expired" and views.urgency(10, "active") == "soon" and views.urgency(10, "revoked") == "none"
    assert views.short_type("io.certrail.certificate.issued.v1") == "certificate issued"
