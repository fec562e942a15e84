"""Deployment targets and bindings in the gateway's HTTP API (issue 19), over the deployer's internal API
(decision 0020): the gateway's API and the real deployer app (services/deployer/app.py's create_app, its
internal routes over a migrated SQLite database) in-process, joined by httpx's ASGI transport.

An admin adds a file target (the deployer probes it), binds it, lists, unbinds and removes it, each change
recorded in the deployer's admin outbox with the token's identity as the actor; requester and auditor
tokens may not write, and their refused changes are recorded there too (as are bodies the gateway refuses;
the deployer down does not change the refusal; a refusal report without the internal token is refused); ssh and webhook targets whose probe fails are refused with the deployer's code (and
recorded); the deployer down or refusing the gateway's token is 503 SERVICE_UNAVAILABLE with Retry-After;
and no secret value is in any answer."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import Engine, select

from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import decode
from services.common.db import read_session
from services.common.db_schema import DeployerAdminOutbox
from services.common.settings import KafkaSettings
from services.gateway.api import create_api
from services.gateway.api_throttle import throttle_from
from services.gateway.deployer_api import DeployerApi, Endpoint
from services.gateway.policy.tokens import Role
from tests.conftest import free_ports
from tests.gateway_fixtures import INTERNAL_TOKEN, InProcessDeployer, auditor_api, deployer_api, seed
from tests.integration.test_gateway_api import Gateway, RecordingTopics, open_gateway

pytestmark = [pytest.mark.integration]

KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:9", topic_prefix="t-nokafka.certrail")
HMAC = "hook-hmac-key-of-the-gateway-targets-test-0123456789"
SECRET_FIELD = "never-answered-secret-value-0123456789"


@dataclass
class Bench:
    gw: Gateway
    deployer: Any  # the deployer's ASGI app
    deployer_engine: Engine
    tmp_path: Path

    def with_deployer(self, api: DeployerApi) -> httpx.AsyncClient:
        """Another gateway API over the same database, calling the deployer through ``api``."""
        runtime = self.gw.runtime
        app = create_api(runtime, auditor=auditor_api(self.gw.engine), deployer=api, issuer=self.gw.connectors.api,
                         throttle=throttle_from(runtime.settings, CollectorRegistry()))
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")

    def outbox(self) -> list[str]:
        """The deployer's admin events as stored (its outbox, in order)."""
        with read_session(self.deployer_engine) as session:
            return list(session.scalars(select(DeployerAdminOutbox.value).order_by(DeployerAdminOutbox.seq)).all())

    def events(self) -> list[Any]:
        return [decode(value.encode(), CATALOG).data for value in self.outbox()]

    def recorded(self) -> list[tuple[str, str, str | None, str, str]]:
        """The deployer's admin events (its outbox, in order): type, target, profile, actor, outcome."""
        return [(type(data).__name__, data.target, getattr(data, "profile", None), data.actor, data.outcome.value)
                for data in self.events()]


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    deployer = InProcessDeployer.open(tmp_path)
    gw = open_gateway(tmp_path, KAFKA, registry_topics=RecordingTopics())
    await gw.client.aclose()
    bench = Bench(gw, deployer.app, deployer.engine, tmp_path)
    gw.client = bench.with_deployer(deployer_api(deployer.app))
    try:
        yield bench
    finally:
        await gw.client.aclose()
        gw.engine.dispose()
        deployer.close()


def assert_no_secret(texts: list[str], *secrets: str) -> None:
    for secret in secrets:
        assert not any(secret in text for text in texts), "a secret value was answered"


async def test_an_admin_adds_binds_lists_unbinds_and_removes_a_file_target(bench: Bench) -> None:
    gw = bench.gw
    admin = gw.token(Role.ADMIN, "root-admin")

    async def api(method: str, path: str, status: int, **kwargs: Any) -> Any:
        answer = await gw.call(method, path, admin, **kwargs)
        assert answer.status_code == status, (method, path, answer.text)
        return answer.json() if answer.content else None

    files = {"kind": "file", "config": {"dir": str(bench.tmp_path / "certs")}}
    added = await api("PUT", "/v1/targets/files", 201, json=files)
    assert added == {"name": "files", "kind": "file", "config": added["config"], "secrets": [], "profiles": []}
    assert added["config"]["dir"] == str(bench.tmp_path / "certs")
    replaced = await api("PUT", "/v1/targets/files", 200, json={**files, "config": {"dir": str(bench.tmp_path / "certs2")}})
    assert replaced["config"]["dir"] == str(bench.tmp_path / "certs2")
    assert [t["name"] for t in (await api("GET", "/v1/targets", 200))["targets"]] == ["files"]
    assert (await api("POST", "/v1/targets/files/probe", 200)) == {"target": "files", "reachable": True, "code": None,
                                                                     "message": None}

    assert await api("PUT", "/v1/profiles/web/targets/files", 201) == {"profile": "web", "target": "files"}
    await api("PUT", "/v1/profiles/web/targets/files", 200)  # already bound: nothing recorded
    assert await api("GET", "/v1/profiles/web/targets", 200) == {"profile": "web", "targets": ["files"]}
    assert await api("GET", "/v1/profiles/api/targets", 200) == {"profile": "api", "targets": []}
    assert (await api("GET", "/v1/targets/files", 200))["profiles"] == ["web"]
    assert (await api("DELETE", "/v1/targets/files", 409))["code"] == "TARGET_IN_USE"
    await api("DELETE", "/v1/profiles/web/targets/files", 204)
    assert (await api("DELETE", "/v1/profiles/web/targets/files", 404))["code"] == "BINDING_NOT_FOUND"
    assert (await api("PUT", "/v1/profiles/web/targets/nowhere", 404))["code"] == "TARGET_NOT_FOUND"
    await api("DELETE", "/v1/targets/files", 204)
    assert (await api("GET", "/v1/targets/files", 404))["code"] == "TARGET_NOT_FOUND"
    assert (await api("POST", "/v1/targets/files/probe", 404))["code"] == "TARGET_NOT_FOUND"

    me = "root-admin"
    assert bench.recorded() == [
        ("TargetCreated", "files", None, me, "succeeded"), ("TargetUpdated", "files", None, me, "succeeded"),
        ("TargetBound", "files", "web", me, "succeeded"), ("TargetDeleted", "files", None, me, "refused"),
        ("TargetUnbound", "files", "web", me, "succeeded"), ("TargetDeleted", "files", None, me, "succeeded")]


async def test_only_admins_write_and_requesters_do_not_read(bench: Bench) -> None:
    gw = bench.gw
    seed(gw.engine)  # profile web (a requester's token is scoped to existing profiles)
    admin, auditor = gw.token(Role.ADMIN, "root-admin"), gw.token(Role.AUDITOR, "audit-team")
    requester = gw.token(Role.REQUESTER, "ci-pipeline", profiles=["web"])
    files = {"kind": "file", "config": {"dir": str(bench.tmp_path / "certs")}}
    assert (await gw.call("PUT", "/v1/targets/files", admin, json=files)).status_code == 201
    writes = [("PUT", "/v1/targets/other", files), ("DELETE", "/v1/targets/files", None), ("POST", "/v1/targets/files/probe", None),
              ("PUT", "/v1/profiles/web/targets/files", None), ("DELETE", "/v1/profiles/web/targets/files", None)]
    for token in (requester, auditor):
        for method, path, body in writes:
            refused = await gw.call(method, path, token, json=body)
            assert (refused.status_code, refused.json()["code"]) == (403, "REQUESTER_NOT_AUTHORISED"), (method, path)
    for path in ("/v1/targets", "/v1/targets/files", "/v1/profiles/web/targets"):
        assert (await gw.call("GET", path, auditor)).status_code == 200
        assert (await gw.call("GET", path, requester)).status_code == 403
    assert (await gw.call("GET", "/v1/targets", None)).status_code == 401
    assert (await gw.call("DELETE", "/v1/targets/files", None)).status_code == 401  # not an admin change: not recorded
    # each refused change is recorded by the deployer with the token's identity; a probe changes nothing
    door = [(kind, target, profile, who, "refused") for who in ("ci-pipeline", "audit-team")
               for kind, target, profile in (("TargetCreated", "other", None), ("TargetDeleted", "files", None),
                                             ("TargetBound", "files", "web"), ("TargetUnbound", "files", "web"))]
    assert bench.recorded() == [("TargetCreated", "files", None, "root-admin", "succeeded"), *door]
    for data in bench.events()[1:]:
        assert (data.error.code, data.change) == ("REQUESTER_NOT_AUTHORISED", {})


async def test_targets_whose_probe_fails_are_refused_with_the_deployers_code(bench: Bench) -> None:
    gw = bench.gw
    admin = gw.token(Role.ADMIN, "root-admin")
    (closed_port,) = free_ports(1)
    ssh_key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    hook = {"kind": "webhook", "config": {"url": f"https://localhost:{closed_port}/in"}, "secrets": {"hmac_secret": HMAC}}
    ssh = {"kind": "ssh", "secrets": {"client_key": ssh_key},
           "config": {"host": "127.0.0.1", "port": closed_port, "user": "deploy", "dir": "/srv/certs", "connect_timeout_s": 3,
                      "host_key": asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()}}
    for name, body in (("hook", hook), ("web1", ssh)):
        refused = await gw.call("PUT", f"/v1/targets/{name}", admin, json=body)
        assert (refused.status_code, refused.json()["code"]) == (422, "TARGET_UNREACHABLE"), refused.text
    invalid = await gw.call("PUT", "/v1/targets/bad", admin, json={"kind": "file", "config": {"dir": "relative"}})
    assert (invalid.status_code, invalid.json()["code"]) == (422, "INVALID_INPUT")
    # the gateway's own strict body: unknown fields and wrong types, never echoed
    strict = await gw.call("PUT", "/v1/targets/bad", admin, json={**hook, "password": SECRET_FIELD})
    assert (strict.status_code, strict.json()["code"]) == (422, "SCHEMA_VIOLATION")
    wrong = await gw.call("PUT", "/v1/targets/bad", admin, json={**hook, "secrets": {"hmac_secret": [SECRET_FIELD]}})
    assert (wrong.status_code, wrong.json()["code"]) == (422, "SCHEMA_VIOLATION")
    assert (await gw.call("PUT", "/v1/targets/bad", admin, content=b"kind=file",
                          headers={"content-type": "text/plain"})).status_code == 415
    assert (await gw.call("GET", "/v1/targets", admin)).json() == {"targets": []}
    me = "root-admin"
    assert bench.recorded() == [("TargetCreated", "hook", None, me, "refused"), ("TargetCreated", "web1", None, me, "refused"),
                                *[("TargetCreated", "bad", None, me, "refused")] * 4]
    # the gateway's own refusals: the code, and the fields by name only
    door = bench.events()[3:]
    assert [d.error.code for d in door] == ["SCHEMA_VIOLATION", "SCHEMA_VIOLATION", "HANDLER_REJECTED"]
    assert [d.change for d in door] == [{"fields": ["body.password"]}, {"fields": ["body.secrets.hmac_secret"]}, {}]
    key_body = "".join(ssh_key.splitlines()[1:-1])  # the base64 body of the OpenSSH key
    assert_no_secret([a.text for a in gw.answers] + bench.outbox(), HMAC, key_body, SECRET_FIELD)


async def test_a_refusal_is_answered_when_the_deployer_cannot_record_it(bench: Bench, caplog: pytest.LogCaptureFixture) -> None:
    gw = bench.gw
    auditor = gw.token(Role.AUDITOR, "audit-team")
    (closed_port,) = free_ports(1)
    api = DeployerApi(Endpoint(f"http://127.0.0.1:{closed_port}", INTERNAL_TOKEN, timeout_s=2))
    client = bench.with_deployer(api)
    try:
        with caplog.at_level(logging.WARNING, logger="services.gateway.api_targets"):
            answer = await client.delete("/v1/targets/files", headers={"Authorization": f"Bearer {auditor}"})
        assert (answer.status_code, answer.json()["code"]) == (403, "REQUESTER_NOT_AUTHORISED")
        warned = [r.getMessage() for r in caplog.records if r.name == "services.gateway.api_targets"]
        assert len(warned) == 1 and "REQUESTER_NOT_AUTHORISED" in warned[0] and "not recorded" in warned[0]
    finally:
        await client.aclose()
        await api.aclose()
    assert bench.recorded() == []


async def test_a_refusal_report_needs_the_internal_token_and_an_actor(bench: Bench) -> None:
    report = {"action": "remove_target", "target": "files", "code": "REQUESTER_NOT_AUTHORISED", "message": "forged"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=bench.deployer), base_url="http://deployer") as deployer:
        for headers in ({}, {"Authorization": "Bearer " + "w" * 40}, {"Authorization": f"Basic {INTERNAL_TOKEN.get_secret_value()}"}):
            forged = await deployer.post("/internal/v1/refusals", json=report, headers={**headers, "X-Certrail-Actor": "mallory"})
            assert (forged.status_code, forged.json()["code"]) == (401, "UNAUTHENTICATED")
        internal = {"Authorization": f"Bearer {INTERNAL_TOKEN.get_secret_value()}"}
        anonymous = await deployer.post("/internal/v1/refusals", json=report, headers=internal)
        assert (anonymous.status_code, anonymous.json()["code"]) == (400, "ACTOR_REQUIRED")
        unnamed = await deployer.post("/internal/v1/refusals", json={**report, "action": "bind"},
                                      headers={**internal, "X-Certrail-Actor": "root-admin"})
        assert (unnamed.status_code, unnamed.json()["code"]) == (422, "INVALID_INPUT")
        assert bench.recorded() == []
        taken = await deployer.post("/internal/v1/refusals", json=report, headers={**internal, "X-Certrail-Actor": "root-admin"})
        assert (taken.status_code, taken.json()) == (201, {"recorded": True})
    assert bench.recorded() == [("TargetDeleted", "files", None, "root-admin", "refused")]


async def test_secrets_are_write_only(bench: Bench) -> None:
    """A stored target with a secret: every answer names the secret, none holds its value."""
    from tests.tls_listener import tls_listener

    gw = bench.gw
    admin = gw.token(Role.ADMIN, "root-admin")
    with tls_listener(bench.tmp_path) as (port, ca_file):
        hook = {"kind": "webhook", "config": {"url": f"https://localhost:{port}/in", "ca_file": str(ca_file)},
                "secrets": {"hmac_secret": HMAC}}
        added = await gw.call("PUT", "/v1/targets/hook", admin, json=hook)
        assert added.status_code == 201 and added.json()["secrets"] == ["hmac_secret"]
        assert (await gw.call("POST", "/v1/targets/hook/probe", admin)).json()["reachable"] is True
    gone = (await gw.call("POST", "/v1/targets/hook/probe", admin)).json()
    assert (gone["reachable"], gone["code"]) == (False, "TARGET_UNREACHABLE")
    assert (await gw.call("GET", "/v1/targets/hook", admin)).json()["secrets"] == ["hmac_secret"]
    assert (await gw.call("GET", "/v1/targets", admin)).json()["targets"][0]["secrets"] == ["hmac_secret"]
    assert_no_secret([a.text for a in gw.answers], HMAC)


@pytest.mark.parametrize("how", ["down", "wrong token", "no token"])
async def test_the_deployer_unavailable_is_503(bench: Bench, how: str) -> None:
    admin = bench.gw.token(Role.ADMIN, "root-admin")
    if how == "down":
        (closed_port,) = free_ports(1)
        api = DeployerApi(Endpoint(f"http://127.0.0.1:{closed_port}", INTERNAL_TOKEN, timeout_s=2))
    else:
        api = deployer_api(bench.deployer, SecretStr("w" * 40) if how == "wrong token" else None)
    client = bench.with_deployer(api)
    try:
        calls = [("GET", "/v1/targets"), ("GET", "/v1/targets/files"), ("PUT", "/v1/targets/files"),
                 ("DELETE", "/v1/targets/files"), ("POST", "/v1/targets/files/probe"), ("GET", "/v1/profiles/web/targets"),
                 ("PUT", "/v1/profiles/web/targets/files"), ("DELETE", "/v1/profiles/web/targets/files")]
        for method, path in calls:
            body = {"kind": "file", "config": {"dir": "/x"}} if (method, path) == ("PUT", "/v1/targets/files") else None
            answer = await client.request(method, path, json=body, headers={"Authorization": f"Bearer {admin}"})
            assert answer.status_code == 503, (method, path, answer.text)
            assert answer.json()["code"] == "SERVICE_UNAVAILABLE" and int(answer.headers["retry-after"]) > 0
            assert INTERNAL_TOKEN.get_secret_value() not in answer.text
    finally:
        await client.aclose()
        await api.aclose()
    assert bench.recorded() == []


async def test_openapi_documents_the_targets_routes(bench: Bench) -> None:
    document = (await bench.gw.client.get("/openapi.json")).json()
    operations = {(m, p): op for p, item in document["paths"].items() for m, op in item.items()
                  if p.startswith(("/v1/targets", "/v1/profiles/{profile}/targets"))}
    assert len(operations) == 8
    for (method, path), operation in operations.items():
        statuses = set(operation["responses"])
        assert {"401", "403", "429", "503"} <= statuses, (method, path)
        if "{" in path:
            assert "404" in statuses, (method, path)
        if method in ("put", "delete", "post"):
            assert {"409", "422"} <= statuses, (method, path)
    assert "201" in operations[("put", "/v1/targets/{name}")]["responses"]
    assert {"413", "415"} <= set(operations[("put", "/v1/targets/{name}")]["responses"])
    assert document["components"]["schemas"]["TargetBody"]["additionalProperties"] is False
