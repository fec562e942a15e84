"""Key retention on the real broker (issue 20, decision 0026): the deployer as a real process with a grace
period of a few seconds and a file target. A bot-held certificate is provisioned and deployed, renewed (the
deployer's own RenewRequested, a new serial deployed), and once the grace period has passed the old key is
gone from the deployer's store (a tombstone row without key material) and its version from the target, and
BotKeyDestroyed is on certrail.events.deployer without a byte of any key. A keyCompromise revocation of the
live serial destroys its key at once (well inside the grace period) and leaves the served files in place.
The issuer's and the gateway's events are published by the test, as those services would."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import select

from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import ProvisionCertificate
from services.common.contracts.envelope import DecodeError, Envelope, Message, decode, encode, make_event
from services.common.contracts.events import (
    CertificateDeployed,
    CertificateIssued,
    CertificateRevoked,
    RenewalDue,
    RequestAccepted,
)
from services.common.contracts.fields import KeyAlgorithm, KeyGeneration, RequestKind, RevocationReason
from services.common.contracts.identity import issuance_id
from services.common.contracts.keys import BotKeyDestroyed, KeyCopyOutcome, KeyRetirementReason
from services.common.contracts.requests import IssueRequested, RenewRequested
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import DeployerBotKeyRow
from services.common.kafka_config import consumer_kwargs, producer_kwargs
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.stack import ServiceProcess
from services.common.topics_admin import delete_topics, ensure_topics
from services.deployer import projection, store
from services.deployer.targets.base import public_key_sha256
from services.deployer.targets.config import TargetKind, certificate_dir_name
from tests.conftest import free_ports, poll_until
from tests.deployer_support import MiniCA

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RETENTION_S = 6
CID = "bot.retention.test"


@dataclass
class Live:
    topics: Topics
    producer: AIOKafkaProducer
    reader: AIOKafkaConsumer
    deployer: ServiceProcess
    db: DatabaseSettings
    box: SecretBox
    ca: MiniCA
    target_dir: Path
    records: list[tuple[bytes, Envelope]] = field(default_factory=list)  # everything read so far, raw and decoded

    async def publish(self, topic: str, data: Message, subject: str = CID) -> Envelope:
        envelope = make_event(data, id=str(uuid.uuid4()), source="/test", time=datetime.now(UTC), subject=subject,
                              correlationid=f"corr-{uuid.uuid4().hex[:8]}")
        await self.producer.send_and_wait(topic, encode(envelope), key=subject.encode())
        return envelope

    async def read(self) -> None:
        for records in (await self.reader.getmany(timeout_ms=200)).values():
            for record in records:
                try:
                    self.records.append((record.value, decode(record.value, CATALOG)))
                except DecodeError:
                    continue

    async def wait_for(self, kind: type[Message], what: str, timeout_s: float = 60, **match: object) -> Envelope:
        async def found() -> Envelope | None:
            await self.read()
            return next((e for _, e in self.records if isinstance(e.data, kind)
                         and all(getattr(e.data, k) == v for k, v in match.items())), None)
        envelope = await poll_until(found, what, timeout_s, interval_s=0.05)
        assert isinstance(envelope, Envelope)
        return envelope

    async def issue(self, csr_pem: str, revision: int, request_id: str) -> CertificateIssued:
        """The gateway's acceptance and the issuer's certificate for the deployer's CSR; waits until deployed."""
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        serial = x509.random_serial_number()
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(self.ca.issuing.subject)
                .public_key(csr.public_key()).serial_number(serial)
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=30))
                .add_extension(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, critical=False)
                .sign(self.ca.issuing_key, hashes.SHA256()))
        await self.publish(self.topics.gateway_events, RequestAccepted(
            request_id=request_id, requester="certrail-deployer", kind=RequestKind.RENEW if revision > 1 else RequestKind.ISSUE,
            certificate_id=CID, profile="web", connector="sim", issuance_id=issuance_id(CID, revision),
            public_key_sha256=public_key_sha256(cert)))
        issued = CertificateIssued(
            issuance_id=issuance_id(CID, revision), certificate_id=CID, request_id=request_id, connector="sim", profile="web",
            serial=format(serial, "x"), certificate=cert.public_bytes(serialization.Encoding.PEM).decode(),
            chain=list(self.ca.chain), subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
            sans=[f"dns:{CID}"], not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
            public_key_sha256=public_key_sha256(cert))
        await self.publish(self.topics.issuer_events, issued)
        await self.wait_for(CertificateDeployed, f"serial {issued.serial} deployed", serial=issued.serial)
        return issued

    def key_row(self, serial: str) -> DeployerBotKeyRow | None:
        engine = make_engine(self.db)
        try:
            with read_session(engine) as session:
                row = session.scalars(select(DeployerBotKeyRow).where(DeployerBotKeyRow.serial == serial)).first()
                if row is not None:
                    session.expunge(row)
                return row
        finally:
            engine.dispose()

    def versions(self) -> list[str]:
        directory = self.target_dir / certificate_dir_name(CID) / "versions"
        return sorted(p.name.rsplit("-", 1)[0] for p in directory.iterdir()) if directory.exists() else []

    def metrics(self) -> str:
        return httpx.get(self.deployer.base_url + "/metrics", timeout=5).text


@pytest.fixture
async def live(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[Live]:
    prefix = f"t{uuid.uuid4().hex[:8]}.certrail"
    topics = Topics(prefix)
    await ensure_topics(kafka_settings, list(topics.fixed()), partitions=2)
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'deployer.db'}")
    upgrade(db)
    key, ca, target_dir = generate_key(), MiniCA(), tmp_path / "target"
    engine = make_engine(db)
    now = datetime.now(UTC)
    with write_session(engine) as session:  # the deployer's own state: a file target for bot profile web, sim's pin
        store.add_target(session, SecretBox([key]), "files", TargetKind.FILE, {"dir": str(target_dir), "per_certificate": True},
                         {}, now)
        store.bind(session, "web", "files", now)
        projection.set_pin(session, "sim", ca.issuing.fingerprint(hashes.SHA256()).hex(), "seed", now, replace=False)
        projection.set_profile_kind(session, "web", "bot", "seed", now)
    engine.dispose()
    (port,) = free_ports(1)
    deployer = ServiceProcess("deployer", port, "127.0.0.1", tmp_path / "var", {
        "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers, "CERTRAIL_KAFKA_TOPIC_PREFIX": prefix,
        "CERTRAIL_DB_URL": db.url, "CERTRAIL_DEPLOYER_KEYS": key, "CERTRAIL_DEPLOYER_REQUEST_KEY": "r" * 32,
        "CERTRAIL_DEPLOYER_KEY_RETENTION_S": str(RETENTION_S), "CERTRAIL_DEPLOYER_KEY_SWEEP_INTERVAL_S": "0.5",
    })
    producer = AIOKafkaProducer(**producer_kwargs(kafka_settings))
    reader = AIOKafkaConsumer(topics.requests, topics.deployer_events, **consumer_kwargs(kafka_settings, f"test-{prefix}"))
    deployer.start()
    await producer.start()
    await reader.start()
    try:
        await poll_until(deployer.healthy, "the deployer to be healthy", 90, interval_s=0.3, in_thread=True)
        yield Live(topics, producer, reader, deployer, db, SecretBox([key]), ca, target_dir)
    finally:
        await reader.stop()
        await producer.stop()
        if deployer.process is not None:
            deployer.process.terminate()
            deployer.process.wait(30)
        await delete_topics(kafka_settings, list(topics.fixed()))


def _metric(text: str, name: str, labels: dict[str, str]) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _pem_body(pem: bytes) -> bytes:
    return b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))


async def test_a_renewed_key_is_destroyed_after_its_grace_and_a_compromised_one_at_once(live: Live) -> None:
    await live.publish(live.topics.provisioning, ProvisionCertificate(
        certificate_id=CID, request_id="prov-1", profile="web", connector="sim", key_algorithm=KeyAlgorithm.EC_P256,
        common_name=CID, sans=[f"dns:{CID}"]))
    request = await live.wait_for(IssueRequested, "the deployer's IssueRequested", certificate_id=CID)
    first = await live.issue(request.data.csr, 1, request.data.request_id)
    row = live.key_row(first.serial)
    assert row is not None and row.private_key is not None
    first_key = live.box.decrypt(row.private_key)

    # renewed: the deployer's RenewRequested with a fresh key, the new serial deployed
    await live.publish(live.topics.gateway_events, RenewalDue(
        certificate_id=CID, serial=first.serial, profile="web", connector="sim", key_generation=KeyGeneration.BOT,
        renew_at=datetime.now(UTC), not_after=first.not_after))
    renew = await live.wait_for(RenewRequested, "the deployer's RenewRequested", replaces_serial=first.serial)
    second = await live.issue(renew.data.csr, 2, renew.data.request_id)
    superseded = live.key_row(first.serial)
    assert superseded is not None and superseded.superseded_at is not None and superseded.private_key is not None
    assert sorted(live.versions()) == sorted([first.serial, second.serial])

    # after the grace period: gone from the store and from the target, audited on events.deployer
    destroyed = await live.wait_for(BotKeyDestroyed, "the superseded key destroyed", RETENTION_S + 30, serial=first.serial)
    assert destroyed.data.reason is KeyRetirementReason.SUPERSEDED
    assert destroyed.data.destroyed_at >= destroyed.data.superseded_at + timedelta(seconds=RETENTION_S)
    assert [(c.target.name, c.outcome) for c in destroyed.data.copies] == [("files", KeyCopyOutcome.REMOVED)]
    tombstone = live.key_row(first.serial)
    assert tombstone is not None and tombstone.private_key is None and tombstone.destroyed_at is not None
    assert live.versions() == [second.serial]
    current = live.target_dir / certificate_dir_name(CID) / "current"
    assert format(x509.load_pem_x509_certificate((current / "cert.pem").read_bytes()).serial_number, "x") == second.serial

    # keyCompromise of the live serial: destroyed at once (the grace would end 6 s after), files served stay
    second_key = live.box.decrypt(live.key_row(second.serial).private_key or b"")  # type: ignore[union-attr]
    revoked = await live.publish(live.topics.issuer_events, CertificateRevoked(
        certificate_id=CID, serial=second.serial, request_id="rv-1", connector="sim", reason=RevocationReason.KEY_COMPROMISE,
        revoked_at=datetime.now(UTC)))
    compromised = await live.wait_for(BotKeyDestroyed, "the compromised key destroyed", 30, serial=second.serial)
    assert compromised.data.reason is KeyRetirementReason.KEY_COMPROMISE and compromised.causationid == revoked.id
    assert compromised.data.destroyed_at - compromised.data.superseded_at < timedelta(seconds=RETENTION_S)
    assert [(c.target.name, c.outcome) for c in compromised.data.copies] == [("files", KeyCopyOutcome.IN_USE)]
    assert live.key_row(second.serial).private_key is None  # type: ignore[union-attr]
    assert (current / "privkey.pem").exists()

    # no key material in any record the deployer published (requests and events), and the metrics say what happened
    for raw, _ in live.records:
        assert b"PRIVATE KEY" not in raw
        assert _pem_body(first_key) not in raw.replace(b"\\n", b"") and _pem_body(second_key) not in raw.replace(b"\\n", b"")
    text = live.metrics()
    assert _metric(text, "certrail_deployer_keys_destroyed_total", {"reason": "superseded"}) == 1
    assert _metric(text, "certrail_deployer_keys_destroyed_total", {"reason": "key_compromise"}) == 1
    await poll_until(lambda: _metric(live.metrics(), "certrail_deployer_keys_held", {}) == 0, "the gauge of keys held at 0",
                     10, interval_s=0.2, in_thread=True)
