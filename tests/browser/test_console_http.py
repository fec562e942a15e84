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
from typing import Any

import httpx
import pytest

from emca_sim.server import SimServer, start_in_thread
from services.common.emca.types import EmcaVersion
from services.common.settings import KafkaSettings
from services.gateway.console import bindings, target_views, views
from services.gateway.console.client import Reply
from services.gateway.console.forms import Form
from services.gateway.policy import ProvisioningProfile
from services.gateway.policy.tokens import Role
from tests.gateway_fixtures import InProcessDeployer, deployer_api, seed
from tests.integration.test_gateway_api import Gateway, RecordingTopics, connector_json, open_gateway, secrets_of
from tests.integration.test_gateway_targets_api import Bench

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

    # an edit keeps what the form does not show (subject rules, the RSA ceiling: the PUT replaces the whole
    # profile) and carries the revocation choices it does show
    admin = gateway.token(Role.ADMIN, "a3")
    spec = {k: v for k, v in (await gateway.call("GET", "/v1/profiles/web", admin)).json().items()
            if k in ProvisioningProfile.model_fields}
    spec["subject_rules"] = {**spec["subject_rules"], "allowed_attributes": ["CN", "O"]}
    spec["key_policy"] = {**spec["key_policy"], "rsa_max_bits": 3072}
    spec["on_external_revocation"] = "replace"
    assert (await gateway.call("PUT", "/v1/profiles/web", admin, json=spec)).status_code == 200
    shown = await client.get("/console/certificates/provisioning/web/edit")
    assert 'id="f-oer-replace" name="on_external_revocation" value="replace" checked' in shown.text
    assert 'id="f-or-keep" name="on_revocation" value="keep" checked' in shown.text
    edited = await client.post("/console/certificates/provisioning/web/edit",
                               data={**body, "validity_days": "60", "on_revocation": "remove", "on_external_revocation": "replace"})
    assert edited.status_code == 303, edited.text
    after = (await gateway.call("GET", "/v1/profiles/web", admin)).json()
    assert (after["validity_days"], after["on_revocation"], after["on_external_revocation"]) == (60, "remove", "replace")
    assert after["key_policy"]["rsa_max_bits"] == 3072 and after["subject_rules"] == spec["subject_rules"]

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


# -- Integrations -> Deployment Targets and Configure Bot's targets, over the real deployer (in-process) ------------------

HMAC = "console-webhook-hmac-secret-0123456789-abcdef"  # never in any page


@pytest.fixture
async def deployed(tmp_path: Path) -> AsyncIterator[Bench]:
    """The gateway (API and console) over the real deployer's internal app, as tests/integration/test_gateway_targets_api.py
    wires it: the deployer's own routes over its migrated SQLite database, through the gateway's DeployerApi."""
    deployer = InProcessDeployer.open(tmp_path)
    gw = open_gateway(tmp_path, KafkaSettings(bootstrap_servers="127.0.0.1:9", topic_prefix="t-nokafka.certrail"),
                      registry_topics=RecordingTopics())
    await gw.client.aclose()
    bench = Bench(gw, deployer.app, deployer.engine, tmp_path)
    gw.client = bench.with_deployer(deployer_api(deployer.app))
    try:
        yield bench
    finally:
        await gw.client.aclose()
        gw.engine.dispose()
        deployer.close()


class Pages:
    """Every page the console answered in a test, to look for secrets in all of them."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.seen: list[str] = []

    async def __call__(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        answer = await self.client.request(method, path, **kwargs)
        self.seen.append(answer.text)
        if answer.status_code == 303 and answer.headers["location"].startswith("/console/") and method == "POST":
            follow = await self.client.get(answer.headers["location"])
            self.seen.append(follow.text)
        return answer

    def assert_never(self, *secrets: str) -> None:
        for secret in secrets:
            assert not any(secret in text for text in self.seen), "a secret value is in a page"


def flashes(html: str) -> list[str]:
    return [re.sub(r"\s+", " ", text).strip() for text in re.findall(r'<div class="flash [a-z]+" role="[a-z]+">([^<]*)</div>', html)]


def checked_targets(html: str) -> list[str]:
    return re.findall(r'type="checkbox" name="targets" value="([^"]+)" checked', html)


async def targets_of(gw: Gateway, token: str, profile: str) -> list[str]:
    return list((await gw.call("GET", f"/v1/profiles/{profile}/targets", token)).json()["targets"])


async def test_targets_screen_adds_edits_probes_and_removes_through_the_api(deployed: Bench) -> None:
    gw, tmp = deployed.gw, deployed.tmp_path
    admin = gw.token(Role.ADMIN, "root-admin")
    csrf = await sign_in(gw.client, admin)
    get = Pages(gw.client)

    empty = await get("GET", "/console/integrations/targets")
    assert empty.status_code == 200 and "No deployment target yet" in empty.text and "Deployment Targets</a>" in empty.text
    form = await get("GET", "/console/integrations/targets/new")
    for f in target_views.TARGET_FIELDS:  # every field labelled, each marked with its kinds
        assert f'<label for="f-{f.name}"' in form.text and f'data-kinds="{"|".join(f.kinds)}"' in form.text
    assert '<select id="f-kind" name="kind"' in form.text

    # refused: the deployer's validation and its probe, each next to its field; nothing stored
    (tmp / "afile").write_text("not a directory")
    refusals = {"dir": ({"kind": "file", "name": "files", "dir": "relative/certs"}, "absolute path"),
                "url": ({"kind": "webhook", "name": "hook", "url": "http://127.0.0.1:1/in", "hmac_secret": HMAC}, "https://")}
    for field, (data, text) in refusals.items():
        refused = await get("POST", "/console/integrations/targets/new", data={**data, "csrf": csrf})
        assert refused.status_code == 422 and text in field_error(refused.text, field), (field, refused.text)
    probe_failed = await get("POST", "/console/integrations/targets/new",
                             data={"csrf": csrf, "kind": "file", "name": "files", "dir": str(tmp / "afile" / "certs")})
    assert probe_failed.status_code == 422 and "is not a directory" in field_error(probe_failed.text, "dir")
    assert "INSTALL_FAILED" in probe_failed.text and 'value="files"' in probe_failed.text  # the user's input kept
    unreachable = await get("POST", "/console/integrations/targets/new",
                            data={"csrf": csrf, "kind": "webhook", "name": "hook", "url": "https://127.0.0.1:1/in", "hmac_secret": HMAC})
    assert unreachable.status_code == 422 and "TARGET_UNREACHABLE" in unreachable.text
    assert 'name="hmac_secret" type="password"' in unreachable.text
    bad_key = await get("POST", "/console/integrations/targets/new",
                        data={"csrf": csrf, "kind": "ssh", "name": "box", "host": "127.0.0.1", "user": "deploy",
                              "dir": "/srv/certs", "known_hosts": "/etc/ssh/known_hosts"},
                        files={"client_key": ("id_ed25519", b"-----BEGIN SECRET KEY MATERIAL-----", "application/octet-stream")})
    assert bad_key.status_code == 422 and "client_key cannot be used" in field_error(bad_key.text, "client_key")
    assert (await gw.call("GET", "/v1/targets", admin)).json() == {"targets": []}

    # added (the probe passes), then refused under the same name: a PUT would replace it
    added = await get("POST", "/console/integrations/targets/new",
                      data={"csrf": csrf, "kind": "file", "name": "files", "dir": str(tmp / "certs"), "url": "ignored-other-kind"})
    assert (added.status_code, added.headers["location"]) == (303, "/console/integrations/targets"), added.text
    assert "Target files probed and added (file)." in flashes(get.seen[-1])  # the list, after the redirect
    listing = await get("GET", "/console/integrations/targets")
    assert '<th scope="row">files</th>' in listing.text and str(tmp / "certs") in listing.text and "no bot bound" in listing.text
    assert (await gw.call("GET", "/v1/targets/files", admin)).json()["config"] == {
        **(await gw.call("GET", "/v1/targets/files", admin)).json()["config"], "dir": str(tmp / "certs"), "per_certificate": False}
    again = await get("POST", "/console/integrations/targets/new",
                      data={"csrf": csrf, "kind": "file", "name": "files", "dir": str(tmp / "elsewhere")})
    assert again.status_code == 409 and "TARGET_EXISTS" in field_error(again.text, "name")
    assert (await gw.call("GET", "/v1/targets/files", admin)).json()["config"]["dir"] == str(tmp / "certs")

    # edit: the stored values shown; saved (probed again) through PUT
    edit = await get("GET", "/console/integrations/targets/files/edit")
    assert f'value="{tmp / "certs"}"' in edit.text and 'data-kind-fixed="file"' in edit.text
    saved = await get("POST", "/console/integrations/targets/files/edit",
                      data={"csrf": csrf, "dir": str(tmp / "certs2"), "per_certificate": "on", "reload_command": "/bin/true\n--now\n"})
    assert saved.status_code == 303, saved.text
    config = (await gw.call("GET", "/v1/targets/files", admin)).json()["config"]
    assert (config["dir"], config["per_certificate"], config["reload_command"]) == (str(tmp / "certs2"), True, ["/bin/true", "--now"])
    assert "/bin/true\n--now</textarea>" in (await get("GET", "/console/integrations/targets/files/edit")).text

    # Probe now: the stored target probed again, the outcome flashed
    await get("POST", "/console/integrations/targets/files/probe", data={"csrf": csrf})
    assert "Probe of files: reachable." in flashes(get.seen[-1])
    (tmp / "certs2").write_text("now a file")
    await get("POST", "/console/integrations/targets/files/probe", data={"csrf": csrf})
    assert any(f.startswith("Probe of files failed: INSTALL_FAILED") for f in flashes(get.seen[-1])), get.seen[-1]

    # every POST carries the session's CSRF token
    for path in ("/files/delete", "/files/probe", "/files/edit", "/new"):
        forged = await get("POST", f"/console/integrations/targets{path}", data={"kind": "file", "name": "x", "dir": "/tmp/x"})
        assert forged.status_code == 403 and "CSRF_FAILED" in forged.text, path
    assert [t["name"] for t in (await gw.call("GET", "/v1/targets", admin)).json()["targets"]] == ["files"]

    # remove: refused while bound (409 TARGET_IN_USE, flashed), then removed
    assert (await gw.call("PUT", "/v1/profiles/web/targets/files", admin)).status_code == 201
    confirm = await get("GET", "/console/integrations/targets/files/delete")
    assert "Remove target files?" in confirm.text and "It is bound to web" in confirm.text
    await get("POST", "/console/integrations/targets/files/delete", data={"csrf": csrf})
    assert any(f.startswith("Remove files refused: TARGET_IN_USE") for f in flashes(get.seen[-1])), get.seen[-1]
    assert (await gw.call("DELETE", "/v1/profiles/web/targets/files", admin)).status_code == 204
    await get("POST", "/console/integrations/targets/files/delete", data={"csrf": csrf})
    assert "Target files removed." in flashes(get.seen[-1]) and "No deployment target yet" in get.seen[-1]
    get.assert_never(HMAC, "SECRET KEY MATERIAL", admin)
    me = "root-admin"
    assert [r for r in deployed.recorded() if r[4] == "succeeded"] == [
        ("TargetCreated", "files", None, me, "succeeded"), ("TargetUpdated", "files", None, me, "succeeded"),
        ("TargetBound", "files", "web", me, "succeeded"), ("TargetUnbound", "files", "web", me, "succeeded"),
        ("TargetDeleted", "files", None, me, "succeeded")]


async def test_configure_bot_chooses_the_ca_and_binds_and_unbinds_targets(deployed: Bench, sim: SimServer) -> None:
    gw, tmp = deployed.gw, deployed.tmp_path
    admin = gw.token(Role.ADMIN, "root-admin")
    assert (await gw.call("POST", "/v1/connectors", admin, json=connector_json(sim, EmcaVersion.V4_2_3, "ca-one"))).status_code == 201
    for name in ("alpha", "beta", "gone"):
        put = await gw.call("PUT", f"/v1/targets/{name}", admin, json={"kind": "file", "config": {"dir": str(tmp / name)}})
        assert put.status_code == 201, put.text
    csrf = await sign_in(gw.client, admin)
    client = gw.client

    new = await client.get("/console/certificates/provisioning/new")
    assert re.findall(r'<option value="(ca-[^"]+)"', new.text) == ["ca-one"]
    assert re.findall(r'name="targets" value="([^"]+)"', new.text) == ["alpha", "beta", "gone"] and checked_targets(new.text) == []
    body = {"csrf": csrf, "name": "web", "connector": "ca-one", "ca_profile": "TLS Server", "key_generation": "requester",
            "allowed_requesters": "alice", "dns_suffixes": "example.com", "rsa_min_bits": "2048", "ec_curves": ["P-256"],
            "validity_days": "90", "renew_before_days": "30", "targets_listed": "1", "shown_targets": ["alpha", "beta", "gone"],
            "targets": ["alpha"]}
    created = await client.post("/console/certificates/provisioning/new", data=body)
    assert (created.status_code, created.headers["location"]) == (303, "/console/certificates/provisioning"), created.text
    listing = await client.get("/console/certificates/provisioning")
    assert "Provisioning bot web configured on ca-one. Targets: deploys now to alpha." in flashes(listing.text)
    assert await targets_of(gw, admin, "web") == ["alpha"]
    assert (await gw.call("GET", "/v1/profiles/web", admin)).json()["deployment_target"] == "alpha"

    edit = await client.get("/console/certificates/provisioning/web/edit")
    assert checked_targets(edit.text) == ["alpha"]
    assert '<option value="ca-one" data-default-profile="TLS Server" selected>' in edit.text
    moved = await client.post("/console/certificates/provisioning/web/edit", data={**body, "targets": ["beta"]})
    assert moved.status_code == 303, moved.text
    assert any("Targets: deploys now to beta; no longer to alpha." in f for f in flashes((await client.get(moved.headers["location"])).text))
    assert await targets_of(gw, admin, "web") == ["beta"]
    assert (await gw.call("GET", "/v1/profiles/web", admin)).json()["deployment_target"] == "beta"
    # a binding made elsewhere to a target the page did not show is left alone
    assert (await gw.call("PUT", "/v1/targets/later", admin, json={"kind": "file", "config": {"dir": str(tmp / "l")}})).status_code == 201
    assert (await gw.call("PUT", "/v1/profiles/web/targets/later", admin)).status_code == 201

    # a refused binding: flashed with its code; the page again (an edit now) with the user's choices
    assert (await gw.call("DELETE", "/v1/targets/gone", admin)).status_code == 204  # removed while the page was open
    refused = await client.post("/console/certificates/provisioning/web/edit",
                                data={**body, "validity_days": "60", "targets": ["beta", "gone"]})
    assert refused.status_code == 404, refused.text
    assert any(f.startswith("Binding web to target gone refused: TARGET_NOT_FOUND") for f in flashes(refused.text)), refused.text
    assert checked_targets(refused.text) == ["beta"] and 'value="60"' in refused.text
    assert "/certificates/provisioning/web/edit" in refused.text
    assert sorted(await targets_of(gw, admin, "web")) == ["beta", "later"]
    assert (await gw.call("GET", "/v1/profiles/web", admin)).json()["validity_days"] == 60  # the profile was saved first

    # a bot-held key needs a target: the API's refusal is shown next to the targets
    bots = {**body, "name": "bots", "key_generation": "bot", "bot_key_algorithm": "EC-P256", "targets": []}
    no_target = await client.post("/console/certificates/provisioning/new", data=bots)
    assert no_target.status_code == 422 and "deployment_target is required" in field_error(no_target.text, "targets")
    assert checked_targets(no_target.text) == []
    assert (await client.post("/console/certificates/provisioning/new", data={**bots, "targets": ["alpha"]})).status_code == 303
    assert await targets_of(gw, admin, "bots") == ["alpha"]
    listing = await client.get("/console/certificates/provisioning")
    assert "<td>beta, later</td>" in listing.text and "<td>alpha</td>" in listing.text


async def test_without_the_deployer_configure_bot_still_saves_the_profile(gateway: Gateway, sim: SimServer) -> None:
    """No internal token for the deployer is configured here: every /v1/targets call is 503 SERVICE_UNAVAILABLE."""
    admin = gateway.token(Role.ADMIN, "root-admin")
    assert (await gateway.call("POST", "/v1/connectors", admin,
                               json=connector_json(sim, EmcaVersion.V4_2_3, "ca-one"))).status_code == 201
    csrf = await sign_in(gateway.client, admin)
    client = gateway.client
    page = await client.get("/console/certificates/provisioning/new")
    assert page.status_code == 200 and "The deployment targets could not be loaded (SERVICE_UNAVAILABLE" in page.text
    assert 'name="targets_listed"' not in page.text and '<option value="ca-one"' in page.text
    body = {"csrf": csrf, "name": "web", "connector": "ca-one", "ca_profile": "TLS Server", "key_generation": "requester",
            "allowed_requesters": "alice", "dns_suffixes": "example.com", "rsa_min_bits": "2048", "ec_curves": ["P-256"],
            "validity_days": "90", "renew_before_days": "30", "stored_target": ""}
    saved = await client.post("/console/certificates/provisioning/new", data=body)
    assert saved.status_code == 303, saved.text
    assert "Provisioning bot web configured on ca-one." in flashes((await client.get(saved.headers["location"])).text)
    screen = await client.get("/console/integrations/targets")
    assert screen.status_code == 503 and "SERVICE_UNAVAILABLE" in screen.text


async def test_targets_screen_follows_the_api_roles(deployed: Bench) -> None:
    gw = deployed.gw
    admin = gw.token(Role.ADMIN, "root-admin")
    assert (await gw.call("PUT", "/v1/targets/files", admin,
                          json={"kind": "file", "config": {"dir": str(deployed.tmp_path / "c")}})).status_code == 201
    seed(gw.engine)  # profile web: a requester's token is scoped to existing profiles
    csrf = await sign_in(gw.client, gw.token(Role.AUDITOR, "audit-team"))
    listing = await gw.client.get("/console/integrations/targets")
    assert listing.status_code == 200 and '<th scope="row">files</th>' in listing.text  # auditors read
    assert "+ Add target" not in listing.text and "Probe now" not in listing.text and "/files/edit" not in listing.text
    for path in ("/new", "/files/edit", "/files/delete"):
        form = await gw.client.get(f"/console/integrations/targets{path}")
        assert form.status_code == 403 and "REQUESTER_NOT_AUTHORISED" in form.text, path
    probe = await gw.client.post("/console/integrations/targets/files/probe", data={"csrf": csrf})
    assert probe.status_code == 303
    assert any(f.startswith("Probe of files refused: REQUESTER_NOT_AUTHORISED") for f in
               flashes((await gw.client.get(probe.headers["location"])).text))
    put = await gw.client.post("/console/integrations/targets/new", data={"csrf": csrf, "kind": "file", "name": "x", "dir": "/tmp/x"})
    assert put.status_code == 403 and "REQUESTER_NOT_AUTHORISED" in put.text

    await sign_in(gw.client, gw.token(Role.REQUESTER, "alice", profiles=["web"]))
    page = await gw.client.get("/console/certificates")
    assert "Deployment Targets" not in page.text
    refused = await gw.client.get("/console/integrations/targets")
    assert refused.status_code == 403 and "REQUESTER_NOT_AUTHORISED" in refused.text
    assert (await gw.call("GET", "/v1/targets", admin)).json()["targets"][0]["name"] == "files"  # nothing changed


def test_target_and_binding_helpers() -> None:
    form = Form()
    for name, value in [("kind", "webhook"), ("url", " https://h/in "), ("hmac_secret", " s "), ("attempts", "3"),
                        ("timeout_s", "2.5"), ("include_private_key", "on"), ("dir", "/not/a/webhook/field"), ("ca_file", "")]:
        form.add(name, value)
    assert target_views.target_body(form, "webhook") == {
        "kind": "webhook", "secrets": {"hmac_secret": " s "},
        "config": {"url": "https://h/in", "attempts": 3, "timeout_s": 2.5, "include_private_key": True}}
    assert target_views.form_values(form).get("hmac_secret") is None
    view = {"name": "box", "kind": "ssh", "secrets": ["client_key"], "profiles": [],
            "config": {"host": "h", "port": 22, "user": "u", "dir": "/srv", "reload_command": ["a", "b"], "per_certificate": False,
                       "known_hosts": None}}
    assert target_views.where(view) == "u@h:22:/srv"
    assert target_views.stored_values(view) == {"name": "box", "kind": "ssh", "host": "h", "port": "22", "user": "u", "dir": "/srv",
                                                "reload_command": "a\nb", "per_certificate": ""}

    for message, field in [("the probe failed: /srv/a is not a directory (target dir /srv/a/b)", "dir"),
                           ("a webhook target needs the secret hmac_secret", "hmac_secret"),
                           ("target name 'Bad Name!' must match ^[A-Za-z0-9]", "name"),
                           ("url: Value error, a webhook URL must be https://", "url"),
                           ("config: Value error, give exactly one of known_hosts and host_key", None)]:
        refusal = Form()
        for name, value in [("name", "Bad Name!"), ("dir", "/srv/a/b"), ("url", "http://x")]:
            refusal.add(name, value)
        errors = target_views.refusal_errors(Reply(422, {"code": "INVALID_INPUT", "message": message}), refusal, "webhook"
                                             if field in ("hmac_secret", "url") else "file")
        assert (list(errors.fields), errors.general) == (([field], []) if field else ([], [message])), message

    def bot(targets: list[str], shown: list[str], stored: str, listed: bool = True) -> Form:
        f = Form()
        for t in targets:
            f.add("targets", t)
        for t in shown:
            f.add("shown_targets", t)
        f.add("stored_target", stored)
        if listed:
            f.add("targets_listed", "1")
        return f

    cases = {  # name: (form, deployment_target, (to bind, to unbind) against current ["a", "z"])
        "kept while chosen": (bot(["a", "b"], ["a", "b"], "b"), "b", (["b"], [])),
        "first chosen": (bot(["b", "a"], ["a", "b"], "c"), "b", (["b"], [])),
        "none chosen: cleared": (bot([], ["a", "b"], "a"), None, ([], ["a"])),
        "none chosen, stored not a listed target: kept": (bot([], ["a"], "nginx-1"), "nginx-1", ([], ["a"])),
        "targets not listed: kept, nothing changed": (bot([], [], "a", listed=False), "a", ([], [])),
    }
    for name, (f, target, diff) in cases.items():
        assert views.deployment_target(f) == target, name
        assert bindings.wanted(f, ["a", "z"]) == diff, name
