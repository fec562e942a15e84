"""ACME orders up to "ready" driven by a real ACME client nobody here wrote (the `acme` package, certbot's client
library) against the gateway's HTTP app served by uvicorn (as tests/integration/test_acme_accounts_live.py), on
SQLite and on PostgreSQL, with http-01 answered by a REAL HTTP server on a loopback port (the standard library's,
the way certbot's standalone plugin answers): the gateway's challenge policy asks that port, maps the ordered
names to 127.0.0.1 (a static map, test only) and allows loopback. The right answer makes the order ready; a
wrong one makes the challenge, its authorization and the order invalid with the validator's problem. Each state
change is an admin event the gateway published."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import josepy as jose
import pytest
from acme import challenges as acme_challenges
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.responses import PlainTextResponse
from typer.testing import CliRunner

from services.cli.acme_cmd import app as acme_cli
from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.contracts import admin
from services.common.contracts.topics import Topics
from services.common.db import make_engine, write_session
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.gateway import store
from services.gateway.acme.challenges import ChallengePolicy
from services.gateway.acme.settings import AcmeSettings
from services.gateway.api import create_api
from services.gateway.api_tokens import create_token
from services.gateway.app import GatewayRuntime, PrefixRouter
from services.gateway.intake import Intake
from services.gateway.policy.tokens import Role
from services.gateway.settings import GatewaySettings
from services.gateway.store import SqlRequesterKeys
from tests.conftest import wait_until
from tests.gateway_fixtures import NOW, _connector, _profile, auditor_api
from tests.integration.test_gateway_api import FakeService, Published
from tests.integration.test_gateway_api_cli import Served

runner = CliRunner()
NAMES = ("www.example.com", "api.example.com")


@dataclass
class ChallengeServer:
    """Answers ``/.well-known/acme-challenge/<token>`` with what ``answers`` holds; records every path asked."""

    answers: dict[str, bytes] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)


def _handler(state: ChallengeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            state.seen.append(self.path)
            body = state.answers.get(self.path)
            self.send_response(404 if body is None else 200)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@dataclass
class Door:
    url: str
    env: dict[str, str]
    published: Published
    challenges: ChallengeServer

    def eab_key(self) -> tuple[str, str]:
        result = runner.invoke(acme_cli, ["eab", "create", "--requester", "ci-pipeline", "--profile", "web", "--json"],
                               env=self.env)
        assert result.exit_code == 0, result.output
        created = json.loads(result.stdout)
        return created["key_id"], created["hmac_key"]

    def registered(self) -> acme_client.ClientV2:
        key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        net = acme_client.ClientNetwork(key=key, alg=jose.ES256, user_agent="certrail-acme-test")
        client = acme_client.ClientV2(acme_client.ClientV2.get_directory(f"{self.url}/acme/directory", net), net)
        key_id, hmac_key = self.eab_key()
        binding = messages.ExternalAccountBinding.from_data(account_public_key=key.public_key(), kid=key_id,
                                                            hmac_key=hmac_key, directory=client.directory)
        regr = client.new_account(messages.NewRegistration.from_data(
            email="ops@example.com", terms_of_service_agreed=True, external_account_binding=binding))
        client.net.account = regr
        return client


@pytest.fixture
def door(tmp_path: Path, db_settings: DatabaseSettings) -> Iterator[Door]:
    upgrade(db_settings)
    engine = make_engine(db_settings)
    _connector(engine, "emca")
    with write_session(engine) as session:
        store.put_profile(session, _profile("web", "emca"), NOW)
    box = SecretBox([generate_key()])
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9", topic_prefix="t-acme.certrail")
    published = Published()
    holder: dict[str, Any] = {}
    state = ChallengeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    answering = threading.Thread(target=httpd.serve_forever, name="http-01", daemon=True)
    answering.start()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await holder["app"](scope, receive, send)

    served = Served(app)
    policy = ChallengePolicy.model_validate({"http01_port": httpd.server_address[1], "timeout_s": 10,
                                             "resolve": dict.fromkeys(NAMES, "127.0.0.1"), "allowed_networks": ["127.0.0.0/8"]})
    settings = GatewaySettings(kafka=kafka, db=db_settings, scheduler_enabled=False, http_port=served.port,
                               acme=AcmeSettings(nonce_lifetime_s=300, challenges=policy))
    service = FakeService(engine, Topics(kafka.topic_prefix))
    intake = Intake(engine=engine, topics=service.topics, keys=SqlRequesterKeys(engine, box), clock=lambda: datetime.now(UTC))
    runtime = GatewayRuntime(service, settings, intake, box, published)  # type: ignore[arg-type]
    api = create_api(runtime, auditor=auditor_api(engine))
    holder["app"] = PrefixRouter(PlainTextResponse("the service app", status_code=404), api)  # type: ignore[arg-type]
    token, _ = create_token(engine, identity="root-admin", role=Role.ADMIN, profiles=None, description=None,
                            created_by="tests", now=datetime.now(UTC) - timedelta(seconds=1), expires_at=None)
    try:
        with served:
            yield Door(served.url, {"CERTRAIL_GATEWAY_URL": served.url, "CERTRAIL_TOKEN": token.token}, published, state)
    finally:
        httpd.shutdown()
        httpd.server_close()
        engine.dispose()


def csr_for(*names: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def order_status(client: acme_client.ClientV2, orderr: messages.OrderResource) -> dict[str, Any]:
    response = client.net.post(orderr.uri, None, new_nonce_url=client.directory["newNonce"])  # POST-as-GET
    return dict(response.json())


def http01(authzr: messages.AuthorizationResource) -> messages.ChallengeBody:
    [challb] = [c for c in authzr.body.challenges if isinstance(c.chall, acme_challenges.HTTP01)]
    return challb


def test_a_real_acme_client_gets_an_order_ready_with_http01_on_loopback(door: Door) -> None:
    client = door.registered()
    orderr = client.new_order(csr_for(NAMES[0]))
    assert orderr.body.status == messages.STATUS_PENDING and orderr.uri.startswith(f"{door.url}/acme/order/")
    assert [i.value for i in orderr.body.identifiers] == [NAMES[0]]
    [authzr] = orderr.authorizations
    challb = http01(authzr)
    response, validation = challb.response_and_validation(client.net.key)
    door.challenges.answers[challb.chall.path] = validation.encode()
    client.answer_challenge(challb, response)

    done = client.poll_authorizations(orderr, datetime.now() + timedelta(seconds=30))
    assert [a.body.status for a in done.authorizations] == [messages.STATUS_VALID]
    ready = wait_until(lambda: (s := order_status(client, orderr))["status"] == "ready" and s, "the order to be ready", 30)
    assert tuple(ready["authorizations"]) == orderr.body.authorizations  # type: ignore[index]
    assert door.challenges.seen == [challb.chall.path]  # the gateway asked the loopback server, once

    # a second order for the same name reuses the valid authorization: ready at once
    again = client.new_order(csr_for(NAMES[0]))
    assert again.body.status == messages.STATUS_READY and again.body.authorizations == orderr.body.authorizations

    steps = [type(e.data).__name__ for e in door.published.events() if type(e.data).__name__.startswith("AcmeO")
             or type(e.data).__name__.startswith("AcmeChall")]
    assert steps == ["AcmeOrderCreated", "AcmeChallengeStarted", "AcmeChallengeValidated", "AcmeOrderCreated"]
    [validated] = [e.data for e in door.published.events() if isinstance(e.data, admin.AcmeChallengeValidated)]
    assert validated.change["orders_ready"] == [orderr.uri.rsplit("/", 1)[1]] and validated.change["addresses"] == ["127.0.0.1"]


def test_a_wrong_http01_answer_makes_the_order_invalid(door: Door) -> None:
    client = door.registered()
    orderr = client.new_order(csr_for(NAMES[1]))
    challb = http01(orderr.authorizations[0])
    response, _ = challb.response_and_validation(client.net.key)
    door.challenges.answers[challb.chall.path] = b"not-the-key-authorization"
    client.answer_challenge(challb, response)

    with pytest.raises(acme_errors.ValidationError) as failed:
        client.poll_authorizations(orderr, datetime.now() + timedelta(seconds=30))
    [authzr] = failed.value.failed_authzrs
    assert authzr.body.status == messages.STATUS_INVALID
    [error] = [c.error for c in authzr.body.challenges if c.error is not None]
    assert error.code in ("unauthorized", "incorrectResponse") and "key authorization" in str(error.detail)
    order = order_status(client, orderr)
    assert order["status"] == "invalid" and NAMES[1] in order["error"]["detail"]
    # one attempt: answering again does not validate again
    client.answer_challenge(challb, response)
    assert door.challenges.seen == [challb.chall.path]
    [failure] = [e.data for e in door.published.events() if isinstance(e.data, admin.AcmeChallengeFailed)]
    assert failure.change["orders_invalid"] == [orderr.uri.rsplit("/", 1)[1]]
