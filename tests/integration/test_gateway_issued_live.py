"""The gateway's projection of issued certificates on the real broker (decision 0017): a
CertificateIssued the issuer publishes on events.issuer is folded by the gateway's own consumer
(channel events.issuer), so a later RevokeRequested that names only the serial finds its
certificate without the auditor; a CertificateIssued for an id the gateway never accepted is
ignored, and the issuer's IssuancePending is handled too (the request's status: request_status.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography import x509
from pydantic import SecretStr

from services.common.certificate_trust import public_key_sha256
from services.common.connectors.secretbox import SecretsSettings
from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import IssueCertificate, RevokeCertificate
from services.common.contracts.envelope import Envelope, Message, decode, encode, make_event, record_headers
from services.common.contracts.events import CertificateIssued, IssuancePending
from services.common.contracts.fields import RevocationReason
from services.common.contracts.requests import IssueRequested, RevokeRequested
from services.common.contracts.signing import signed
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session
from services.common.kafka_config import consumer_kwargs, producer_kwargs
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.topics_admin import delete_topics, ensure_topics
from services.gateway import issued
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.conftest import poll_until
from tests.deployer_support import MiniCA
from tests.gateway_fixtures import HMAC_KEY, NOW, SECRETS_KEY, _csr, seed

pytestmark = pytest.mark.integration


def _issued(command: IssueCertificate, ca: MiniCA, serial: int, certificate_id: str | None = None) -> CertificateIssued:
    """What the issuer publishes for ``command`` (or, with ``certificate_id``, a forgery about another id)."""
    pem, _ = ca.leaf(["www.example.com"], serial=serial)
    cert = x509.load_pem_x509_certificate(pem.encode())
    return CertificateIssued(
        issuance_id=command.issuance_id, certificate_id=certificate_id or command.certificate_id,
        request_id=command.request_id, connector=command.connector, profile=command.profile, serial=format(serial, "x"),
        certificate=pem, chain=list(ca.chain), subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
        sans=list(command.sans), not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
        public_key_sha256=public_key_sha256(cert))


async def _send(producer: AIOKafkaProducer, topic: str, key: str, data: Message, event_id: str) -> None:
    value = encode(make_event(data, id=event_id, source="/tests", time=NOW, subject=key))
    headers = [(name, text.encode()) for name, text in record_headers(data.TYPE).items()]
    await producer.send_and_wait(topic, value, key=key.encode(), headers=headers)


async def _commands(kafka: KafkaSettings, topic: str, request_id: str) -> Envelope:
    """The command the gateway published for ``request_id``."""
    consumer = AIOKafkaConsumer(topic, **consumer_kwargs(kafka, f"reader-{uuid.uuid4().hex[:8]}"))
    await consumer.start()
    found: list[Envelope] = []

    async def read() -> Envelope | None:
        for records in (await consumer.getmany(timeout_ms=500)).values():
            found.extend(decode(r.value, CATALOG) for r in records)
        return next((e for e in found if getattr(e.data, "request_id", None) == request_id), None)

    try:
        command = await poll_until(read, lambda: f"the command of {request_id}; saw {[e.type for e in found]}", 60, interval_s=0)
    finally:
        await consumer.stop()
    assert isinstance(command, Envelope)
    return command


async def test_a_revoke_by_serial_finds_the_certificate_issued_on_events_issuer(
        kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}.certrail")
    kafka = kafka_settings.model_copy(update={"topic_prefix": topics.prefix})
    created = [*topics.fixed(), topics.commands("emca")]
    await ensure_topics(kafka_settings, created, partitions=1)
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'gw.db'}")
    upgrade(db)
    seeded = make_engine(db)
    seed(seeded)  # connector emca, profile web (requester ci-pipeline, HMAC key k1)
    seeded.dispose()
    settings = GatewaySettings(kafka=kafka, db=db, group_id=f"gw-{uuid.uuid4().hex[:8]}", scheduler_enabled=False,
                               secrets=SecretsSettings(keys=SecretStr(SECRETS_KEY)))
    _app, runtime = create_app(settings)
    engine = runtime.engine
    producer = AIOKafkaProducer(**producer_kwargs(kafka))
    await producer.start()
    await runtime.broker.start()
    runtime.service.start_consumers()
    try:
        issue = signed(IssueRequested(request_id="req-1", requester="ci-pipeline", profile="web", certificate_id="www",
                                      csr=_csr(), sans=["dns:www.example.com"]), "k1", HMAC_KEY)
        await _send(producer, topics.requests, "www", issue, "ev-req-1")
        command = (await _commands(kafka, topics.commands("emca"), "req-1")).data
        assert isinstance(command, IssueCertificate)

        # the issuer's records, as it publishes them: its pending approval, a forgery about an id
        # the gateway never accepted, and the certificate
        ca = MiniCA()
        pending = IssuancePending(issuance_id=command.issuance_id, certificate_id="www", request_id="req-1",
                                  connector="emca", ca_request_id="ca-1")
        await _send(producer, topics.issuer_events, "www", pending, "ev-pending")
        await _send(producer, topics.issuer_events, "foreign", _issued(command, ca, 0xF0, "foreign"), "ev-foreign")
        await _send(producer, topics.issuer_events, "www", _issued(command, ca, 0x1A2B), "ev-issued")

        def folded() -> list[str]:
            with read_session(engine) as session:
                return issued.certificates_with_serial(session, "1a2b")

        assert await poll_until(folded, "the gateway to fold the CertificateIssued", 60, interval_s=0.2,
                                in_thread=True) == ["www"]

        def consumed(message_type: str, outcome: str) -> float | None:
            return runtime.registry.get_sample_value("certrail_messages_consumed_total", {
                "service": "gateway", "channel": "events.issuer", "type": message_type, "outcome": outcome})

        await poll_until(lambda: consumed(CertificateIssued.TYPE, "handled") == 2, "both CertificateIssued handled", 30)
        with read_session(engine) as session:
            assert issued.current_serial(session, "www") == "1a2b"
            assert issued.certificates_with_serial(session, "f0") == []  # the forgery: ignored
        assert consumed(IssuancePending.TYPE, "handled") == 1.0  # folded into the request's status

        revoke = signed(RevokeRequested(request_id="rv-1", requester="ci-pipeline", serial="1a2b",
                                        reason=RevocationReason.KEY_COMPROMISE), "k1", HMAC_KEY)
        await _send(producer, topics.requests, "rv-1", revoke, "ev-rv-1")
        revocation = (await _commands(kafka, topics.commands("emca"), "rv-1")).data
        assert isinstance(revocation, RevokeCertificate)
        assert (revocation.certificate_id, revocation.serial, revocation.connector) == ("www", "1a2b", "emca")
    finally:
        await runtime.service.stop_consumers()
        await runtime.broker.stop()
        await producer.stop()
        engine.dispose()
        await delete_topics(kafka_settings, created)
