"""The gateway's HTTP API (`create_api(runtime)`) over httpx's ASGI transport, with a real SQLite
database, the emCA simulator for connectors, and a real Kafka where records must be read back:
the connector lifecycle (every validation failure code), profiles, issuance, dedupe, renewal and
revocation requests, request status and timeline, tokens and their roles and scopes, requester
keys, malformed input (always a 4xx problem, never a 5xx) and secrets never answered."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from emca_sim.server import SimServer, start_in_thread
from services.auditor.records import RawRecord
from services.auditor.store import store_records
from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.consumer import Outbound
from services.common.contracts.admin import AdminOutcome
from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import IssueCertificate, RevokeCertificate
from services.common.contracts.envelope import CONTENT_TYPE, Envelope, decode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateIssued, CertificateRevoked, RequestAccepted, RequestRejected
from services.common.contracts.topics import Topics
from services.common.db import make_engine
from services.common.emca.client import connect
from services.common.emca.types import EmcaVersion
from services.common.kafka_config import admin_kwargs, consumer_kwargs, producer_kwargs
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.topics_admin import delete_topics, ensure_topics
from services.gateway import issued, request_status
from services.gateway.api import create_api
from services.gateway.api_tokens import create_token
from services.gateway.app import GatewayRuntime
from services.gateway.auditor_api import AuditorApi
from services.gateway.intake import Intake, stored_records
from services.gateway.policy.tokens import Role
from services.gateway.settings import GatewaySettings
from services.gateway.store import SqlRequesterKeys
from services.issuer.registry.registry import KafkaTopicCreator
from tests.conftest import free_ports, poll_until
from tests.emca_sim_helpers import sim_spec
from tests.gateway_fixtures import InProcessConnectors, auditor_api, issuer_connectors

ISSUING_CA = "certrail Sim Issuing CA P-256"


# -- the bench -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    with start_in_thread(tmp_path_factory.mktemp("emca-sim-gateway"), port=0, crl_port=0, admin_port=0) as server:
        yield server


class RecordingTopics:
    """A TopicCreator without Kafka (the connector tests that need no records)."""

    async def ensure_command_topic(self, connector: str) -> str:
        return f"recorded.commands.{connector}"


@dataclass
class FakeService:
    engine: Engine
    topics: Any
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    broker: Any = None


class Published:
    """``publish_records`` for tests: keeps every record; optionally also produces it to Kafka."""

    def __init__(self, producer: AIOKafkaProducer | None = None) -> None:
        self.records: list[tuple[str, str | None, bytes]] = []
        self.producer = producer

    async def __call__(self, outbound: Any) -> None:
        for topic, key, value in stored_records(outbound):
            self.records.append((topic, key, value))
            if self.producer is not None:
                await self.producer.send_and_wait(topic, value, key=key.encode() if key else None,
                                                  headers=[("content-type", CONTENT_TYPE.encode())])

    def events(self, topic: str | None = None) -> list[Envelope]:
        return [decode(value, CATALOG) for t, _, value in self.records if topic is None or t == topic]

    def of_type(self, cls: type) -> list[Any]:
        return [e for e in self.events() if isinstance(e.data, cls)]


@dataclass
class Gateway:
    """An API over a fresh database; tokens made straight in the database."""

    engine: Engine
    runtime: GatewayRuntime
    published: Published
    client: httpx.AsyncClient
    connectors: InProcessConnectors  # the issuer's registry and routes (decision 0034); its events in its outbox
    answers: list[httpx.Response] = field(default_factory=list)

    def admin_events(self) -> list[Envelope]:
        """Every admin event: the gateway's published ones and the issuer's (connectors) recorded ones."""
        return [e for e in [*self.published.events(), *self.connectors.events()] if hasattr(e.data, "actor")]

    @property
    def topics(self) -> Any:
        return self.runtime.topics

    def token(self, role: Role, identity: str, profiles: list[str] | None = None, expires_at: datetime | None = None) -> str:
        new, _ = create_token(self.engine, identity=identity, role=role, profiles=profiles, description=None,
                              created_by="tests", now=datetime.now(UTC) - timedelta(seconds=1), expires_at=expires_at)
        return new.token

    async def call(self, method: str, path: str, token: str | None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = await self.client.request(method, path, headers=headers, **kwargs)
        self.answers.append(response)
        assert response.status_code < 500, f"{method} {path} answered {response.status_code}: {response.text}"
        if response.status_code >= 400:
            problem = response.json()
            assert set(problem) >= {"code", "message"}, problem
        return response



def open_gateway(tmp_path: Path, kafka: KafkaSettings, *, published: Published | None = None,
                 registry_topics: Any = None, auditor: Callable[[Engine], AuditorApi] = auditor_api) -> Gateway:
    """The API over a new SQLite database. ``registry_topics``: a TopicCreator for the issuer's connector
    registry, served in-process over the same database (default: the real one, creating command topics on
    ``kafka``); ``auditor``: the client of the auditor's internal API over the database (default: its real
    routes, in-process)."""
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / f'gw-{uuid.uuid4().hex[:6]}.db'}")
    upgrade(db)
    engine = make_engine(db)
    box = SecretBox([generate_key()])
    settings = GatewaySettings(kafka=kafka, db=db, scheduler_enabled=False)
    service = FakeService(engine, Topics(kafka.topic_prefix))
    intake = Intake(engine=engine, topics=service.topics, keys=SqlRequesterKeys(engine, box), clock=lambda: datetime.now(UTC))
    published = published or Published()
    runtime = GatewayRuntime(service, settings, intake, box, published)  # type: ignore[arg-type]
    connectors = issuer_connectors(engine, box, connect=connect, topics=registry_topics or KafkaTopicCreator(kafka))
    app = create_api(runtime, auditor=auditor(engine), issuer=connectors.api)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
    return Gateway(engine, runtime, published, client, connectors)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """No Kafka: records are only recorded; connector topics are not created."""
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9", topic_prefix="t-nokafka.certrail")
    gw = open_gateway(tmp_path, kafka, registry_topics=RecordingTopics())
    yield gw
    await gw.client.aclose()
    gw.engine.dispose()


@pytest.fixture
async def kafka_gateway(tmp_path: Path, kafka_settings: KafkaSettings) -> AsyncIterator[Gateway]:
    """A real Kafka under a unique prefix: records are produced; connectors create their topics."""
    prefix = f"t{uuid.uuid4().hex[:8]}.certrail"
    kafka = kafka_settings.model_copy(update={"topic_prefix": prefix})
    topics = Topics(prefix)
    await ensure_topics(kafka, list(topics.fixed()), partitions=1)
    producer = AIOKafkaProducer(**producer_kwargs(kafka))
    await producer.start()
    gw = open_gateway(tmp_path, kafka, published=Published(producer))
    try:
        yield gw
    finally:
        await gw.client.aclose()
        await producer.stop()
        gw.engine.dispose()
        admin = AIOKafkaAdminClient(**admin_kwargs(kafka))
        await admin.start()
        try:
            ours = [t for t in await admin.list_topics() if t.startswith(prefix + ".")]
        finally:
            await admin.close()
        if ours:
            await delete_topics(kafka, ours)


async def read_back(kafka: KafkaSettings, topics: list[str], count: int, timeout_s: float = 30.0) -> list[Envelope]:
    """At least ``count`` records from ``topics`` (from the beginning), decoded."""
    consumer = AIOKafkaConsumer(*topics, **consumer_kwargs(kafka, f"reader-{uuid.uuid4().hex[:8]}"))
    await consumer.start()
    found: list[Envelope] = []

    async def enough() -> bool:
        if len(found) < count:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                found.extend(decode(r.value, CATALOG) for r in records)
        return len(found) >= count

    try:
        await poll_until(enough, lambda: f"{count} records from {topics} (read {len(found)})", timeout_s, interval_s=0)
    finally:
        await consumer.stop()
    return found


# -- material ----------------------------------------------------------------------------------------


def make_key_and_csr(name: str, *, curve: ec.EllipticCurve | None = None) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def make_csr(name: str) -> str:
    return make_key_and_csr(name)[1]


def sign(csr_pem: str, serial: int = 0x1A2B3C) -> tuple[str, str]:
    """A certificate for the CSR from a throwaway CA (leaf PEM, CA PEM): the issuer's part, played here."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Test CA")])
    now = datetime.now(UTC)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    leaf = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(name).public_key(csr.public_key())
            .serial_number(serial).not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=30))
            .sign(ca_key, hashes.SHA256()))
    return (leaf.public_bytes(serialization.Encoding.PEM).decode(), ca.public_bytes(serialization.Encoding.PEM).decode())


def profile_body(name: str = "web", connector: str = "ca-one", requesters: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "connector": connector, "ca_profile": "TLS Server", "key_generation": "requester",
            "allowed_requesters": requesters or ["alice"], "domain_rules": {"dns_suffixes": ["example.com"]},
            "validity_days": 90, **extra}


def connector_json(sim: SimServer, version: EmcaVersion, name: str, **overrides: Any) -> dict[str, Any]:
    """A create body as JSON (files base64) from what the simulator handed over."""
    spec = sim_spec(sim, version, name)
    s = spec.secrets
    body: dict[str, Any] = {"name": name, "version": version.value, "base_url": spec.base_url, "username": spec.username,
                            "issuing_ca": spec.issuing_ca, "subscriber_id": spec.subscriber_id,
                            "default_profile": spec.default_profile, "password": s.password.get_secret_value()}
    if spec.ca_bundle_pem:
        body["ca_bundle_base64"] = base64.b64encode(spec.ca_bundle_pem.encode()).decode()
    if s.client_id is not None:
        body["client_id"] = s.client_id.get_secret_value()
    if s.aes_key is not None:
        body["aes_key"] = s.aes_key.get_secret_value()
    if s.pfx is not None:
        body["pfx_base64"] = base64.b64encode(s.pfx.get_secret_value()).decode()
    if s.pfx_password is not None:
        body["pfx_password"] = s.pfx_password.get_secret_value()
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def secrets_of(sim: SimServer, version: EmcaVersion) -> list[str]:
    """Every secret value the simulator handed over for ``version`` (to look for in answers)."""
    spec = sim_spec(sim, version, "x")
    values = [v.get_secret_value() for v in (spec.secrets.password, spec.secrets.client_id, spec.secrets.aes_key,
                                             spec.secrets.pfx_password) if v is not None]
    if spec.secrets.pfx is not None:
        values.append(base64.b64encode(spec.secrets.pfx.get_secret_value()).decode())
    return [v for v in values if len(v) >= 6]


def assert_no_secrets(texts: list[str], secrets: list[str]) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, "a secret appeared in an answer or an event"


async def with_connector(gw: Gateway, sim: SimServer, admin: str, name: str = "ca-one",
                         version: EmcaVersion = EmcaVersion.V4_2_3) -> None:
    response = await gw.call("POST", "/v1/connectors", admin, json=connector_json(sim, version, name))
    assert response.status_code == 201, response.text


async def with_profile(gw: Gateway, admin: str, **kwargs: Any) -> dict[str, Any]:
    response = await gw.call("POST", "/v1/profiles", admin, json=profile_body(**kwargs))
    assert response.status_code == 201, response.text
    return response.json()


def play_auditor(gw: Gateway, extra: list[Envelope] = ()) -> None:  # type: ignore[assignment]
    """Store every published record (and ``extra`` events) as the auditor would: audit log + inventory; and fold
    the issuer's events among them into the gateway's projections as its events.issuer consumer would (issued.py,
    request_status.py)."""
    values = [(t, k, v) for t, k, v in gw.published.records]
    values += [(gw.topics.topic_of(type(e.data)), e.subject, Outbound(gw.topics.topic_of(type(e.data)), e, key=e.subject).value())
               for e in extra]
    already = getattr(gw, "_stored", 0)
    records = [RawRecord(topic, 0, offset, int(datetime.now(UTC).timestamp() * 1000), 0,
                         key.encode() if key else None, value, ())
               for offset, (topic, key, value) in enumerate(values) if offset >= already]
    store_records(gw.engine, records, inventory_topics=gw.topics, now=datetime.now(UTC))
    for record in records:
        if record.topic == gw.topics.issuer_events:
            envelope = decode(record.value, CATALOG)
            if isinstance(envelope.data, CertificateIssued | CertificateRevoked):
                issued.apply_event(gw.engine, envelope)
            if isinstance(envelope.data, request_status.OUTCOME_EVENTS):
                request_status.apply_event(gw.engine, envelope)
    gw._stored = len(values)  # type: ignore[attr-defined]


def issued_event(command: IssueCertificate, leaf: str, chain: list[str], serial: str) -> Envelope:
    cert = x509.load_pem_x509_certificate(leaf.encode())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    data = CertificateIssued(
        issuance_id=command.issuance_id, certificate_id=command.certificate_id, request_id=command.request_id,
        connector=command.connector, profile=command.profile, serial=serial, certificate=leaf, chain=chain,
        subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(), sans=list(command.sans),
        not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc, public_key_sha256=digest.finalize().hex())
    return make_event(data, id=str(uuid.uuid4()), source="/tests/issuer", time=datetime.now(UTC),
                      subject=command.certificate_id, correlationid=command.request_id)


# -- connectors ---------------------------------------------------------------------------------------


def multipart_of(body: dict[str, Any]) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]]]:
    """The JSON create body as form fields and file parts (the PFX and the CA bundle as files)."""
    data = {k: str(v) for k, v in body.items() if k not in ("pfx_base64", "ca_bundle_base64")}
    files = {}
    if "pfx_base64" in body:
        files["pfx"] = ("app.pfx", base64.b64decode(body["pfx_base64"]), "application/x-pkcs12")
    if "ca_bundle_base64" in body:
        files["ca_bundle"] = ("tls-ca.pem", base64.b64decode(body["ca_bundle_base64"]), "application/x-pem-file")
    return data, files


@pytest.mark.parametrize("version", list(EmcaVersion), ids=str)
async def test_connector_lifecycle(gateway: Gateway, sim: SimServer, version: EmcaVersion) -> None:
    gw, admin = gateway, gateway.token(Role.ADMIN, "root-admin")
    body = connector_json(sim, version, "ca-one")
    if version is EmcaVersion.V4_0_17:  # the PFX and the CA bundle uploaded as files
        data, files = multipart_of(body)
        created = await gw.call("POST", "/v1/connectors", admin, data=data, files=files)
    else:
        created = await gw.call("POST", "/v1/connectors", admin, json=body)
    assert created.status_code == 201, created.text
    shown = created.json()
    assert (shown["status"], shown["issuing_ca"], shown["password"]) == ("enabled", ISSUING_CA, "***")
    assert len(shown["pinned_ca_sha256"]) == 64
    assert (await gw.call("POST", "/v1/connectors", admin, json=body)).json()["code"] == "CONNECTOR_EXISTS"

    listed = (await gw.call("GET", "/v1/connectors", admin)).json()
    assert [c["name"] for c in listed] == ["ca-one"]
    one = await gw.call("GET", "/v1/connectors/ca-one", admin)
    assert one.json()["password"] == "***" and "pfx_base64" not in one.json()
    missing = await gw.call("GET", "/v1/connectors/nope", admin)
    assert (missing.status_code, missing.json()["code"]) == (404, "CONNECTOR_NOT_FOUND")

    edited = await gw.call("PATCH", "/v1/connectors/ca-one", admin, json={"concurrency": 4})
    assert (edited.status_code, edited.json()["changed"], edited.json()["concurrency"]) == (200, {"concurrency": 4}, 4)
    wrong = await gw.call("PATCH", "/v1/connectors/ca-one", admin, json={"password": "not-the-password"})
    assert (wrong.status_code, wrong.json()["code"]) == (422, "CA_AUTH_FAILED")
    assert (await gw.call("GET", "/v1/connectors/ca-one", admin)).json()["revision"] == 2  # the refused edit stored nothing

    tested = (await gw.call("POST", "/v1/connectors/ca-one/test", admin)).json()
    assert tested["ok"] and {c["check"] for c in tested["checks"]} == {"connection", "issuing_ca", "profile", "subscriber"}
    assert (await gw.call("POST", "/v1/connectors/ca-one/deactivate", admin)).json()["status"] == "disabled"
    assert (await gw.call("POST", "/v1/connectors/ca-one/activate", admin)).json()["status"] == "enabled"

    await with_profile(gw, admin)
    in_use = await gw.call("DELETE", "/v1/connectors/ca-one", admin)
    assert (in_use.status_code, in_use.json()["code"]) == (409, "CONNECTOR_IN_USE")
    assert "provisioning profiles: 1 profile(s): web" in in_use.json()["message"]
    assert (await gw.call("DELETE", "/v1/profiles/web", admin)).status_code == 204
    assert (await gw.call("DELETE", "/v1/connectors/ca-one", admin)).status_code == 204
    assert (await gw.call("GET", "/v1/connectors/ca-one", admin)).status_code == 404

    assert not [e for e in gw.published.events() if type(e.data).__name__.startswith("Connector")]  # the issuer's now
    events = [(type(e.data).__name__, e.data.outcome.value) for e in gw.connectors.events()]
    assert events == [("ConnectorCreated", "succeeded"), ("ConnectorCreated", "refused"), ("ConnectorUpdated", "succeeded"),
                      ("ConnectorUpdated", "refused"), ("ConnectorDeactivated", "succeeded"),
                      ("ConnectorActivated", "succeeded"), ("ConnectorDeleted", "refused"), ("ConnectorDeleted", "succeeded")]
    admin_events = gw.admin_events()
    assert {e.data.actor for e in admin_events} == {"root-admin"}
    assert len({e.id for e in admin_events}) == len(admin_events)
    refused_edit = [e for e in admin_events if type(e.data).__name__ == "ConnectorUpdated" and e.data.outcome == "refused"][0]
    assert refused_edit.data.change == {"password": "***"} and refused_edit.data.error.code == ErrorCode.CA_AUTH_FAILED
    in_use_event = [e for e in admin_events if type(e.data).__name__ == "ConnectorDeleted"][0]
    assert in_use_event.data.error.message.startswith("CONNECTOR_IN_USE: ")
    assert_no_secrets([r.text for r in gw.answers] + [v.decode() for _, _, v in gw.published.records]
                      + [e.model_dump_json() for e in gw.connectors.events()], secrets_of(sim, version))


FAILURES: list[tuple[str, dict[str, Any], str, str]] = [
    ("unreachable", {"base_url": "PORT"}, ErrorCode.CA_UNREACHABLE, "unreachable"),
    ("tls-untrusted", {"ca_bundle_base64": None}, ErrorCode.CA_TLS_UNTRUSTED, "not trusted"),
    ("wrong-password", {"password": "not-the-password"}, ErrorCode.CA_AUTH_FAILED, "emCA"),
    ("ca-wrong-case", {"issuing_ca": "certrail Sim Issuing CA p-256"}, ErrorCode.ISSUING_CA_NOT_FOUND,
     "Did you mean 'certrail Sim Issuing CA P-256'?"),
    ("unknown-subscriber", {"subscriber_id": "SUB-9999"}, ErrorCode.SUBSCRIBER_INVALID, "ubscriber"),
    ("unknown-profile", {"default_profile": "TLS Servers"}, ErrorCode.CA_PROFILE_NOT_FOUND, "'TLS Server'"),
    ("plain-http", {"base_url": "http://127.0.0.1:1"}, "INVALID_INPUT", "HTTPS only"),
    ("pfx-for-4-2", {"pfx_base64": base64.b64encode(b"not a pfx").decode()}, "INVALID_INPUT", "belong to V4.0.17"),
]


@pytest.mark.parametrize(("case", "overrides", "code", "text"), FAILURES, ids=[f[0] for f in FAILURES])
async def test_each_validation_failure_code(gateway: Gateway, sim: SimServer, case: str, overrides: dict[str, Any], code: str,
                                            text: str) -> None:
    if overrides.get("base_url") == "PORT":
        overrides = {"base_url": f"https://127.0.0.1:{free_ports(1)[0]}"}
    admin = gateway.token(Role.ADMIN, "root-admin")
    body = connector_json(sim, EmcaVersion.V4_2_3, f"bad-{case}", **overrides)
    if "ca_bundle_base64" in overrides and overrides["ca_bundle_base64"] is None:
        body.pop("ca_bundle_base64", None)
    refused = await gateway.call("POST", "/v1/connectors", admin, json=body)
    assert (refused.status_code, refused.json()["code"]) == (422, code), refused.text
    assert text in refused.json()["message"]
    assert (await gateway.call("GET", "/v1/connectors", admin)).json() == []  # nothing invalid is stored
    [event] = gateway.connectors.events()
    assert (type(event.data).__name__, event.data.outcome, event.data.connector) == ("ConnectorCreated", AdminOutcome.REFUSED,
                                                                                     f"bad-{case}")
    assert event.data.change["password"] == "***"
    assert_no_secrets([refused.text, event.model_dump_json()], secrets_of(sim, EmcaVersion.V4_2_3))


# -- profiles -----------------------------------------------------------------------------------------


async def test_profiles_crud(gateway: Gateway, sim: SimServer) -> None:
    gw, admin = gateway, gateway.token(Role.ADMIN, "root-admin")
    await with_connector(gw, sim, admin)
    created = await with_profile(gw, admin)
    assert (created["name"], created["revision"], created["connector"]) == ("web", 1, "ca-one")
    again = await gw.call("POST", "/v1/profiles", admin, json=profile_body())
    assert (again.status_code, again.json()["code"]) == (409, "PROFILE_EXISTS")
    no_connector = await gw.call("POST", "/v1/profiles", admin, json=profile_body("api", connector="nope"))
    assert (no_connector.status_code, no_connector.json()["code"]) == (422, "CONNECTOR_NOT_FOUND")
    weak = await gw.call("POST", "/v1/profiles", admin, json=profile_body("api", key_policy={"rsa_min_bits": 1024}))
    assert (weak.status_code, weak.json()["code"]) == (422, "SCHEMA_VIOLATION")
    assert weak.json()["errors"][0]["field"] == "body.key_policy.rsa_min_bits"

    replaced = await gw.call("PUT", "/v1/profiles/web", admin, json=profile_body(validity_days=30))
    assert (replaced.status_code, replaced.json()["revision"], replaced.json()["validity_days"]) == (200, 2, 30)
    other_name = await gw.call("PUT", "/v1/profiles/web", admin, json=profile_body("api"))
    assert (other_name.status_code, other_name.json()["code"]) == (422, "SCHEMA_VIOLATION")
    unknown = await gw.call("PUT", "/v1/profiles/api", admin, json=profile_body("api"))
    assert (unknown.status_code, unknown.json()["code"]) == (404, "PROFILE_NOT_FOUND")
    await with_profile(gw, admin, name="api")
    assert [p["name"] for p in (await gw.call("GET", "/v1/profiles", admin)).json()] == ["api", "web"]
    assert (await gw.call("GET", "/v1/profiles/web", admin)).json()["validity_days"] == 30

    alice = gw.token(Role.REQUESTER, "alice")
    issued = await gw.call("POST", "/v1/certificates", alice, json={
        "request_id": "r-1", "profile": "web", "certificate_id": "www", "csr": make_csr("www.example.com")})
    assert issued.status_code == 202, issued.text
    in_use = await gw.call("DELETE", "/v1/profiles/web", admin)
    assert (in_use.status_code, in_use.json()["code"]) == (409, "PROFILE_IN_USE")
    assert (await gw.call("DELETE", "/v1/profiles/api", admin)).status_code == 204
    assert (await gw.call("DELETE", "/v1/profiles/api", admin)).status_code == 404

    events = [(type(e.data).__name__, e.data.outcome.value) for e in gw.published.events() if type(e.data).__name__.startswith("Profile")]
    assert events == [("ProfileCreated", "succeeded"), ("ProfileCreated", "refused"), ("ProfileCreated", "refused"),
                      ("ProfileCreated", "refused"), ("ProfileUpdated", "succeeded"), ("ProfileUpdated", "refused"),
                      ("ProfileUpdated", "refused"), ("ProfileCreated", "succeeded"), ("ProfileDeleted", "refused"),
                      ("ProfileDeleted", "succeeded")]
    update = [e for e in gw.published.events() if type(e.data).__name__ == "ProfileUpdated"][0]
    assert update.data.change == {"validity_days": 30}


# -- certificates and requests ------------------------------------------------------------------------


@pytest.mark.integration
async def test_issuance_dedupe_renewal_and_revocation_on_kafka(kafka_gateway: Gateway, sim: SimServer) -> None:
    gw = kafka_gateway
    admin, alice = gw.token(Role.ADMIN, "root-admin"), gw.token(Role.REQUESTER, "alice")
    await with_connector(gw, sim, admin)  # creates certrail.commands.ca-one on Kafka
    await with_profile(gw, admin)
    csr = make_csr("www.example.com")
    body = {"request_id": "req-1", "profile": "web", "certificate_id": "www", "csr": csr, "sans": ["dns:www.example.com"]}
    accepted = await gw.call("POST", "/v1/certificates", alice, json=body)
    assert accepted.status_code == 202, accepted.text
    answer = accepted.json()
    assert (answer["status"], answer["status_url"], accepted.headers["location"]) == ("accepted", "/v1/requests/req-1",
                                                                                       "/v1/requests/req-1")

    kafka = gw.runtime.settings.kafka
    commands = await read_back(kafka, [gw.topics.commands("ca-one")], 1)
    [command] = [e for e in commands if isinstance(e.data, IssueCertificate)]
    assert (command.id, command.data.request_id, command.data.certificate_id, command.data.sans) == (
        answer["command_id"], "req-1", "www", ["dns:www.example.com"])
    events = await read_back(kafka, [gw.topics.gateway_events], 2)
    [request_accepted] = [e for e in events if isinstance(e.data, RequestAccepted)]
    assert (request_accepted.id, request_accepted.data.requester, request_accepted.data.connector) == (
        answer["event_id"], "alice", "ca-one")

    same = await gw.call("POST", "/v1/certificates", alice, json=body)
    assert same.status_code == 202 and same.json()["replayed"] is True
    assert {k: same.json()[k] for k in ("command_id", "event_id", "issuance_id")} == {
        k: answer[k] for k in ("command_id", "event_id", "issuance_id")}
    conflict = await gw.call("POST", "/v1/certificates", alice, json={**body, "csr": make_csr("www.example.com")})
    assert (conflict.status_code, conflict.json()["code"]) == (409, "DUPLICATE_REQUEST_CONFLICT")

    status = (await gw.call("GET", "/v1/requests/req-1", alice)).json()
    assert (status["status"], status["state"], status["certificate"]) == ("accepted", "queued", None)
    leaf, ca = sign(csr)
    play_auditor(gw, [issued_event(command.data, leaf, [ca], "1a2b3c")])
    status = (await gw.call("GET", "/v1/requests/req-1", alice)).json()
    assert (status["state"], status["result"]["serial"], status["result"]["certificate"]) == ("issued", "1a2b3c", leaf)
    assert status["result"]["chain"] == [ca] and status["certificate"]["status"] == "active"
    timeline = (await gw.call("GET", "/v1/requests/req-1/timeline", alice)).json()
    assert {RequestAccepted.TYPE, IssueCertificate.TYPE, CertificateIssued.TYPE, RequestRejected.TYPE} <= {
        e["event_type"] for e in timeline["entries"]}  # the conflict's rejection is in the trail too

    listed = (await gw.call("GET", "/v1/certificates?status=active&expiring_within_days=31&connector=ca-one", alice)).json()
    assert [c["certificate_id"] for c in listed["certificates"]] == ["www"]
    assert (await gw.call("GET", "/v1/certificates?expiring_within_days=7", alice)).json()["certificates"] == []
    shown = (await gw.call("GET", "/v1/certificates/www", alice)).json()
    assert (shown["status"], shown["managed"]["profile"], shown["inventory"]["serial"]) == ("active", "web", "1a2b3c")

    renewed = await gw.call("POST", "/v1/certificates/www/renew", alice,
                            json={"request_id": "req-2", "csr": make_csr("www.example.com")})
    assert renewed.status_code == 202, renewed.text
    revoked = await gw.call("POST", "/v1/certificates/www/revoke", admin, json={"request_id": "req-3", "reason": "keyCompromise"})
    assert revoked.status_code == 202, revoked.text
    commands = await read_back(kafka, [gw.topics.commands("ca-one")], 3)
    [revoke] = [e.data for e in commands if isinstance(e.data, RevokeCertificate)]
    assert (revoke.serial, revoke.reason, revoke.request_id, revoke.replace) == ("1a2b3c", "keyCompromise", "req-3", False)
    assert [type(e.data).__name__ for e in commands].count("RenewCertificate") == 1


async def test_rejections_are_precise_and_recorded(gateway: Gateway, sim: SimServer) -> None:
    gw, admin, alice = gateway, gateway.token(Role.ADMIN, "root-admin"), gateway.token(Role.REQUESTER, "alice")
    await with_connector(gw, sim, admin)
    await with_profile(gw, admin)

    def issue(request_id: str, csr: str, profile: str = "web", certificate_id: str = "www") -> dict[str, Any]:
        return {"request_id": request_id, "profile": profile, "certificate_id": certificate_id, "csr": csr}

    key, csr = make_key_and_csr("www.example.com")
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    pasted = await gw.call("POST", "/v1/certificates", alice, json=issue("k-1", csr + key_pem))
    assert (pasted.status_code, pasted.json()["code"]) == (422, "PRIVATE_KEY_SUBMITTED")
    assert "PRIVATE KEY" not in pasted.text
    assert (await gw.call("GET", "/v1/requests/k-1", alice)).status_code == 404  # not recorded
    assert not any(b"PRIVATE KEY" in v for _, _, v in gw.published.records)

    cases = [
        (issue("r-san", make_csr("www.other.org")), 422, "SAN_NOT_ALLOWED"),
        (issue("r-curve", make_key_and_csr("www.example.com", curve=ec.SECP521R1())[1]), 422, "KEY_POLICY_VIOLATION"),
        (issue("r-profile", csr, profile="nope"), 404, "PROFILE_NOT_FOUND"),
    ]
    for body, status, code in cases:
        refused = await gw.call("POST", "/v1/certificates", alice, json=body)
        assert (refused.status_code, refused.json()["code"]) == (status, code), refused.text
        assert refused.json()["status_url"] == f"/v1/requests/{body['request_id']}"
        recorded = (await gw.call("GET", refused.json()["status_url"], alice)).json()
        assert (recorded["status"], recorded["state"], recorded["answer"]["error"]["code"]) == ("rejected", "rejected", code)
    rejected = [e.data for e in gw.published.of_type(RequestRejected)]
    assert [r.error.code for r in rejected] == ["SAN_NOT_ALLOWED", "KEY_POLICY_VIOLATION", "PROFILE_NOT_FOUND"]

    await gw.call("POST", "/v1/connectors/ca-one/deactivate", admin)
    disabled = await gw.call("POST", "/v1/certificates", alice, json=issue("r-disabled", csr))
    assert (disabled.status_code, disabled.json()["code"]) == (409, "CONNECTOR_DISABLED")
    no_cert = await gw.call("POST", "/v1/certificates/ghost/revoke", alice, json={"request_id": "r-ghost", "reason": "superseded"})
    assert (no_cert.status_code, no_cert.json()["code"]) == (404, "CERTIFICATE_NOT_FOUND")


# -- tokens, roles and scopes ----------------------------------------------------------------------------


async def test_token_roles_and_scopes(gateway: Gateway, sim: SimServer) -> None:
    gw, admin = gateway, gateway.token(Role.ADMIN, "root-admin")
    await with_connector(gw, sim, admin)
    await with_profile(gw, admin, requesters=["alice", "bob"])
    await with_profile(gw, admin, name="api", requesters=["bob", "carol"])

    async def new_token(**body: Any) -> dict[str, Any]:
        response = await gw.call("POST", "/v1/tokens", admin, json=body)
        assert response.status_code == 201, response.text
        return response.json()

    alice = (await new_token(identity="alice", role="requester"))["token"]
    bob_web = (await new_token(identity="bob", role="requester", profiles=["web"], expires_in_days=30))["token"]
    auditor = (await new_token(identity="audit-team", role="auditor", description="read-only"))["token"]

    def issue(request_id: str, profile: str) -> dict[str, Any]:
        return {"request_id": request_id, "profile": profile, "certificate_id": f"c-{request_id}",
                "csr": make_csr(f"{request_id}.example.com")}

    # requester: no connector or token management, no profile writes
    for method, path, body in [("POST", "/v1/connectors", connector_json(sim, EmcaVersion.V4_2_3, "ca-two")),
                               ("GET", "/v1/connectors", None), ("POST", "/v1/connectors/ca-one/deactivate", None),
                               ("DELETE", "/v1/connectors/ca-one", None), ("POST", "/v1/tokens", {"identity": "x", "role": "admin"}),
                               ("GET", "/v1/tokens", None), ("POST", "/v1/profiles", profile_body("new")),
                               ("DELETE", "/v1/profiles/web", None), ("POST", "/v1/requesters/alice/keys", {"key_id": "k"})]:
        denied = await gw.call(method, path, alice, json=body)
        assert (denied.status_code, denied.json()["code"]) == (403, "REQUESTER_NOT_AUTHORISED"), (method, path, denied.text)
    refused_create = [e for e in gw.connectors.events() if type(e.data).__name__ == "ConnectorCreated"][-1]
    assert (refused_create.data.actor, refused_create.data.outcome, refused_create.data.connector) == ("alice", "refused", "ca-two")

    # auditor: reads everything, changes nothing, asks for nothing
    assert (await gw.call("GET", "/v1/connectors", auditor)).status_code == 200
    assert (await gw.call("GET", "/v1/profiles/api", auditor)).status_code == 200
    for method, path, body in [("PATCH", "/v1/connectors/ca-one", {"concurrency": 2}), ("POST", "/v1/connectors/ca-one/test", None),
                               ("PUT", "/v1/profiles/web", profile_body()), ("POST", "/v1/certificates", issue("a-1", "web")),
                               ("DELETE", "/v1/tokens/abcdefabcdef", None)]:
        denied = await gw.call(method, path, auditor, json=body)
        assert (denied.status_code, denied.json()["code"]) == (403, "REQUESTER_NOT_AUTHORISED"), (method, path, denied.text)
    assert (await gw.call("GET", "/v1/requests/a-1", admin)).status_code == 404  # a refused role does not own the id

    # scopes and the profiles' allowed requesters
    assert (await gw.call("POST", "/v1/certificates", bob_web, json=issue("b-1", "web"))).status_code == 202
    scoped = await gw.call("POST", "/v1/certificates", bob_web, json=issue("b-2", "api"))
    assert (scoped.status_code, scoped.json()["code"]) == (403, "REQUESTER_NOT_AUTHORISED")
    assert "not scoped to profile 'api'" in scoped.json()["message"]
    not_listed = await gw.call("POST", "/v1/certificates", alice, json=issue("a-2", "api"))
    assert (not_listed.status_code, not_listed.json()["code"]) == (403, "REQUESTER_NOT_AUTHORISED")
    assert [p["name"] for p in (await gw.call("GET", "/v1/profiles", bob_web)).json()] == ["web"]
    assert (await gw.call("GET", "/v1/profiles/api", bob_web)).status_code == 403
    assert (await gw.call("GET", "/v1/requests/b-1", bob_web)).status_code == 200
    assert (await gw.call("GET", "/v1/requests/b-1", alice)).status_code == 404  # someone else's request
    assert (await gw.call("GET", "/v1/requests/b-1", auditor)).status_code == 200

    # tokens: listed without secrets; revoked, expired, unknown and malformed tokens are 401
    listed = (await gw.call("GET", "/v1/tokens", admin)).json()
    assert {t["identity"] for t in listed} >= {"alice", "bob", "audit-team"}
    assert all("token" not in t and "token_hash" not in t for t in listed)
    bob_id = next(t["token_id"] for t in listed if t["identity"] == "bob")
    assert (await gw.call("DELETE", f"/v1/tokens/{bob_id}", admin)).status_code == 204
    assert (await gw.call("DELETE", "/v1/tokens/000000000000", admin)).status_code == 404
    expired = gw.token(Role.ADMIN, "old-admin", expires_at=datetime.now(UTC) - timedelta(milliseconds=500))
    unknown = "ctr_0123456789ab_" + "A" * 43
    for token, header in [(bob_web, None), (expired, None), (unknown, None), ("ctr_nonsense", None), (None, None),
                          (None, "Basic YWxpY2U6c2VjcmV0"), (None, "Bearer"), (admin[:-1] + ("B" if admin[-1] != "B" else "C"), None)]:
        headers = {"Authorization": header} if header else {}
        answer = await gw.call("GET", "/v1/profiles", token, headers=headers)
        assert (answer.status_code, answer.json()["code"]) == (401, "UNAUTHENTICATED"), (token, header)
        assert answer.headers["www-authenticate"] == "Bearer"

    token_events = [(type(e.data).__name__, e.data.outcome.value, e.data.actor) for e in gw.published.events()
                    if type(e.data).__name__.startswith("Token")]
    assert token_events[:3] == [("TokenCreated", "succeeded", "root-admin")] * 3
    assert ("TokenCreated", "refused", "alice") in token_events and ("TokenRevoked", "succeeded", "root-admin") in token_events
    tokens = [alice, bob_web, auditor]  # answered once each, by POST /v1/tokens, and nowhere else
    token_answers = [r for r in gw.answers if r.request.url.path == "/v1/tokens" and r.request.method == "POST"]
    assert_no_secrets([r.text for r in gw.answers if r not in token_answers], tokens)
    assert_no_secrets([v.decode() for _, _, v in gw.published.records], tokens)


async def test_requester_keys(gateway: Gateway) -> None:
    gw, admin = gateway, gateway.token(Role.ADMIN, "root-admin")
    generated = await gw.call("POST", "/v1/requesters/ci-bot/keys", admin, json={"key_id": "k1"})
    assert generated.status_code == 201, generated.text
    secret = base64.b64decode(generated.json()["secret_base64"])
    found = SqlRequesterKeys(gw.engine, gw.runtime.box).get("ci-bot", "k1")
    assert found is not None and found.secret == secret
    duplicate = await gw.call("POST", "/v1/requesters/ci-bot/keys", admin, json={"key_id": "k1"})
    assert (duplicate.status_code, duplicate.json()["code"]) == (409, "REQUESTER_KEY_EXISTS")
    given = base64.b64encode(b"s" * 32).decode()
    chosen = await gw.call("POST", "/v1/requesters/ci-bot/keys", admin, json={"key_id": "k2", "secret_base64": given})
    assert chosen.status_code == 201 and "secret_base64" not in chosen.json()
    short = await gw.call("POST", "/v1/requesters/ci-bot/keys", admin,
                          json={"key_id": "k3", "secret_base64": base64.b64encode(b"short").decode()})
    assert (short.status_code, short.json()["code"]) == (422, "SCHEMA_VIOLATION") and "c2hvcnQ" not in short.text
    public = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    jws = await gw.call("POST", "/v1/requesters/ci-bot/keys", admin, json={"key_id": "j1", "scheme": "jws", "public_key_pem": public})
    assert jws.status_code == 201, jws.text
    bad_pem = await gw.call("POST", "/v1/requesters/ci-bot/keys", admin,
                            json={"key_id": "j2", "scheme": "jws", "public_key_pem": "-----BEGIN PUBLIC KEY-----\nAA==\n"})
    assert (bad_pem.status_code, bad_pem.json()["code"]) == (422, "SCHEMA_VIOLATION")
    assert (await gw.call("DELETE", "/v1/requesters/ci-bot/keys/k1", admin)).status_code == 204
    assert SqlRequesterKeys(gw.engine, gw.runtime.box).get("ci-bot", "k1") is None
    missing = await gw.call("DELETE", "/v1/requesters/ci-bot/keys/nope", admin)
    assert (missing.status_code, missing.json()["code"]) == (404, "REQUESTER_KEY_NOT_FOUND")


# -- malformed input ------------------------------------------------------------------------------------

BIG = "x" * (3 * 1024 * 1024)
MALFORMED: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("POST", "/v1/certificates", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "SCHEMA_VIOLATION"),
    ("POST", "/v1/certificates", {"json": ["a", "list"]}, 422, "SCHEMA_VIOLATION"),
    ("POST", "/v1/certificates", {"json": {"profile": "web"}}, 422, "SCHEMA_VIOLATION"),
    ("POST", "/v1/certificates", {"json": {"request_id": "r", "profile": "web", "certificate_id": "c", "csr": 5}}, 422,
     "SCHEMA_VIOLATION"),
    ("POST", "/v1/certificates", {"json": {"request_id": "r", "profile": "web", "certificate_id": "c", "extra": 1}}, 422,
     "SCHEMA_VIOLATION"),
    ("POST", "/v1/certificates", {"json": {"request_id": "r", "profile": "web", "certificate_id": "c", "csr": "hello"}}, 422,
     "SCHEMA_VIOLATION"),
    ("POST", "/v1/certificates", {"json": {"request_id": "bad id", "profile": "web", "certificate_id": "c"}}, 422, "SCHEMA_VIOLATION"),
    ("POST", "/v1/certificates", {"content": b"request_id=r", "headers": {"content-type": "text/plain"}}, 415,
     "UNSUPPORTED_MEDIA_TYPE"),
    ("POST", "/v1/certificates", {"content": BIG.encode(), "headers": {"content-type": "application/json"}}, 413, "BODY_TOO_LARGE"),
    ("POST", "/v1/certificates/www/revoke", {"json": {"request_id": "r", "reason": "certificateHold"}}, 422, "SCHEMA_VIOLATION"),
    ("POST", "/v1/certificates/bad%20id/renew", {"json": {"request_id": "r"}}, 422, "SCHEMA_VIOLATION"),
    ("GET", "/v1/certificates?expiring_within_days=-1", {}, 422, "SCHEMA_VIOLATION"),
    ("GET", "/v1/certificates?expiring_within_days=soon", {}, 422, "SCHEMA_VIOLATION"),
    ("GET", "/v1/certificates?status=bogus", {}, 422, "SCHEMA_VIOLATION"),
    ("GET", "/v1/certificates?limit=0", {}, 422, "SCHEMA_VIOLATION"),
    ("GET", "/v1/certificates/nothing-here", {}, 404, "CERTIFICATE_NOT_FOUND"),
    ("GET", "/v1/requests/nothing-here", {}, 404, "REQUEST_NOT_FOUND"),
    ("GET", "/v1/requests/nothing-here/timeline", {}, 404, "REQUEST_NOT_FOUND"),
    ("GET", "/v1/nope", {}, 404, "NOT_FOUND"),
    ("PUT", "/v1/connectors", {}, 405, "METHOD_NOT_ALLOWED"),
    ("POST", "/v1/connectors", {"json": {"name": "Bad Name!"}}, 422, "SCHEMA_VIOLATION"),
    ("POST", "/v1/connectors", {"json": {"name": "x", "version": "V9", "password": "p"}}, 422, "SCHEMA_VIOLATION"),
    ("POST", "/v1/connectors", {"content": b"--xx\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=xx"}},
     422, "SCHEMA_VIOLATION"),
    ("POST", "/v1/connectors", {"content": b"<xml/>", "headers": {"content-type": "application/xml"}}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("PATCH", "/v1/connectors/ghost", {"json": {"concurrency": 2}}, 404, "CONNECTOR_NOT_FOUND"),
    ("PATCH", "/v1/connectors/ghost", {"json": {"concurrency": "many"}}, 422, "SCHEMA_VIOLATION"),
    ("PATCH", "/v1/connectors/ghost", {"json": {"pfx_base64": "***not base64***"}}, 422, "SCHEMA_VIOLATION"),
    ("POST", "/v1/connectors/ghost/activate", {}, 404, "CONNECTOR_NOT_FOUND"),
    ("POST", "/v1/connectors/ghost/test", {}, 404, "CONNECTOR_NOT_FOUND"),
    ("DELETE", "/v1/connectors/ghost", {}, 404, "CONNECTOR_NOT_FOUND"),
    ("POST", "/v1/profiles", {"json": {"name": "p"}}, 422, "SCHEMA_VIOLATION"),
    ("POST", "/v1/profiles", {"json": profile_body(key_generation="telepathy")}, 422, "SCHEMA_VIOLATION"),
    ("GET", "/v1/profiles/ghost", {}, 404, "PROFILE_NOT_FOUND"),
    ("POST", "/v1/tokens", {"json": {"identity": "x", "role": "root"}}, 422, "SCHEMA_VIOLATION"),
    ("POST", "/v1/tokens", {"json": {"identity": "x", "role": "admin", "expires_at": "2001-01-01T00:00:00Z"}}, 422,
     "SCHEMA_VIOLATION"),
    ("POST", "/v1/tokens", {"json": {"identity": "x", "role": "admin", "expires_in_days": 0}}, 422, "SCHEMA_VIOLATION"),
    ("POST", "/v1/tokens", {"json": {"identity": "x", "role": "admin", "profiles": ["ghost"]}}, 422, "PROFILE_NOT_FOUND"),
    ("POST", "/v1/requesters/bad%20name/keys", {"json": {"key_id": "k"}}, 422, "SCHEMA_VIOLATION"),
    ("POST", "/v1/requesters/ci/keys", {"json": {"key_id": "k", "scheme": "jws"}}, 422, "SCHEMA_VIOLATION"),
]


async def test_malformed_input_is_a_precise_4xx(gateway: Gateway) -> None:
    admin = gateway.token(Role.ADMIN, "root-admin")
    alice = gateway.token(Role.REQUESTER, "alice")
    for method, path, kwargs, status, code in MALFORMED:
        token = alice if path.startswith("/v1/certificates") and method == "POST" else admin
        answer = await gateway.call(method, path, token, **kwargs)
        assert (answer.status_code, answer.json()["code"]) == (status, code), (method, path, answer.text[:300])
    invalid = await gateway.call("POST", "/v1/certificates", alice, json={"request_id": "r", "profile": "web", "certificate_id": 7})
    assert invalid.json()["errors"][0]["field"] == "body.certificate_id"
    # unauthenticated callers are answered 401 before their bodies are looked at
    assert (await gateway.call("POST", "/v1/certificates", None, content=b"{not json")).status_code == 401


async def test_openapi_is_served(gateway: Gateway) -> None:
    document = (await gateway.client.get("/openapi.json")).json()
    assert {"/v1/connectors", "/v1/profiles", "/v1/certificates", "/v1/requests/{request_id}", "/v1/tokens",
            "/v1/requesters/{requester}/keys"} <= set(document["paths"])
    assert {"IssueBody", "ConnectorCreateBody", "ProvisioningProfile", "KeyPolicy"} <= set(document["components"]["schemas"])
    issue = document["paths"]["/v1/certificates"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert issue == {"$ref": "#/components/schemas/IssueBody"}
    assert "multipart/form-data" in document["paths"]["/v1/connectors"]["post"]["requestBody"]["content"]
    assert (await gateway.client.get("/docs")).status_code == 200
