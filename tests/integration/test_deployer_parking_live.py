"""The deployer as a real process on the real broker (decision 0016): a CertificateIssued that
arrives on certrail.events.issuer before its RequestAccepted on certrail.events.gateway is parked,
not refused, and installed once the acceptance arrives; one that is never accepted is refused
for good at its deadline with DeploymentFailed CERTIFICATE_NOT_REQUESTED, and nothing of it is
installed. /health stays ok throughout."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import DecodeError, Envelope, decode, encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateDeployed, CertificateIssued, DeploymentFailed, RequestAccepted
from services.common.contracts.fields import RequestKind
from services.common.contracts.identity import issuance_id
from services.common.contracts.topics import Topics
from services.common.db import make_engine, write_session
from services.common.kafka_config import consumer_kwargs, producer_kwargs
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.stack import ServiceProcess
from services.common.topics_admin import delete_topics, ensure_topics
from services.deployer import projection, store
from services.deployer.targets.base import public_key_sha256
from services.deployer.targets.config import TargetKind
from tests.conftest import free_ports, poll_until
from tests.deployer_support import MiniCA
from tests.unit.examples import NOW

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PARK_SECONDS = 8


def _issued(ca: MiniCA, certificate_id: str) -> Envelope:
    certificate, _ = ca.leaf([f"{certificate_id}.unit.test"])
    cert = x509.load_pem_x509_certificate(certificate.encode())
    data = CertificateIssued(
        issuance_id=issuance_id(certificate_id, 1), certificate_id=certificate_id, request_id=f"req-{certificate_id}",
        connector="sim", profile="web", serial=format(cert.serial_number, "x"), certificate=certificate,
        chain=list(ca.chain), subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
        sans=[f"dns:{certificate_id}.unit.test"], not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
        public_key_sha256=public_key_sha256(cert))
    return make_event(data, id=str(uuid.uuid4()), source="/certrail/issuer", time=NOW, subject=certificate_id)


def _accepted(certificate_id: str) -> Envelope:
    data = RequestAccepted(request_id=f"req-{certificate_id}", requester="ci", kind=RequestKind.ISSUE,
                           certificate_id=certificate_id, profile="web", connector="sim",
                           issuance_id=issuance_id(certificate_id, 1))
    return make_event(data, id=str(uuid.uuid4()), source="/certrail/gateway", time=NOW, subject=certificate_id)


def _metric(text: str, name: str, labels: dict[str, str]) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_certificate_before_its_acceptance_is_parked_then_installed_and_a_stranger_is_refused_at_its_deadline(
        kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}.certrail"
    topics = Topics(prefix)
    await ensure_topics(kafka_settings, list(topics.fixed()), partitions=2)
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'deployer.db'}")
    upgrade(db)
    key = generate_key()
    ca, target_dir = MiniCA(), tmp_path / "target"
    engine = make_engine(db)
    with write_session(engine) as session:  # the deployer's own state: a file target for profile web, the pin of sim
        store.add_target(session, SecretBox([key]), "files", TargetKind.FILE,
                         {"dir": str(target_dir), "per_certificate": True}, {}, NOW)
        store.bind(session, "web", "files", NOW)
        projection.set_pin(session, "sim", ca.issuing.fingerprint(hashes.SHA256()).hex(), "seed", NOW, replace=False)
    engine.dispose()
    (port,) = free_ports(1)
    deployer = ServiceProcess("deployer", port, "127.0.0.1", tmp_path / "var", {
        "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "CERTRAIL_KAFKA_TOPIC_PREFIX": prefix,
        "CERTRAIL_DB_URL": db.url,
        "CERTRAIL_DEPLOYER_KEYS": key,
        "CERTRAIL_DEPLOYER_REQUEST_KEY": "r" * 32,
        "CERTRAIL_DEPLOYER_PARK_SECONDS": str(PARK_SECONDS),
    })
    late, stranger = _issued(ca, "web-late"), _issued(ca, "web-stranger")
    producer = AIOKafkaProducer(**producer_kwargs(kafka_settings))
    outcomes = AIOKafkaConsumer(topics.deployer_events, **consumer_kwargs(kafka_settings, f"test-{prefix}"))
    seen: list[CertificateDeployed | DeploymentFailed] = []

    async def read_outcomes() -> list[CertificateDeployed | DeploymentFailed]:
        for records in (await outcomes.getmany(timeout_ms=200)).values():
            for record in records:
                try:
                    data = decode(record.value, CATALOG).data
                except DecodeError:
                    continue
                if isinstance(data, CertificateDeployed | DeploymentFailed):
                    seen.append(data)
        return seen

    async def outcomes_for(certificate_id: str, timeout_s: float) -> list[CertificateDeployed | DeploymentFailed]:
        async with asyncio.timeout(timeout_s):
            while not (mine := [o for o in seen if o.certificate_id == certificate_id]):
                await read_outcomes()
        return mine

    def installed_pems() -> list[str]:
        """Every certificate the target holds (one directory per certificate id)."""
        return [path.read_text() for path in sorted(target_dir.rglob("cert.pem"))] if target_dir.exists() else []

    def metrics() -> str:
        return httpx.get(deployer.base_url + "/metrics", timeout=5).text

    deployer.start()
    await producer.start()
    await outcomes.start()
    try:
        await poll_until(deployer.healthy, "the deployer to be healthy", 90, interval_s=0.3, in_thread=True)
        # the issuer's event first, on its own topic: parked, nothing installed
        await producer.send_and_wait(topics.issuer_events, encode(late), key=b"web-late")
        await producer.send_and_wait(topics.issuer_events, encode(stranger), key=b"web-stranger")
        await poll_until(lambda: _metric(metrics(), "certrail_deployer_parked_total",
                                         {"code": "CERTIFICATE_NOT_REQUESTED"}) == 2, "both certificates parked", 60,
                         interval_s=0.2, in_thread=True)
        assert installed_pems() == []
        # the gateway's acceptance of one of them arrives: it is installed
        await producer.send_and_wait(topics.gateway_events, encode(_accepted("web-late")), key=b"web-late")
        deployed = await outcomes_for("web-late", 60)
        assert [type(o) for o in deployed] == [CertificateDeployed]
        assert deployed[0].serial == late.data.serial
        assert [late.data.certificate.strip()] == [pem.strip() for pem in installed_pems()]

        # the stranger is never accepted: refused at its deadline, nothing installed
        refused = await outcomes_for("web-stranger", PARK_SECONDS + 60)
        assert [(o.target.name, type(o), o.error.code if isinstance(o, DeploymentFailed) else None) for o in refused] == [
            ("files", DeploymentFailed, ErrorCode.CERTIFICATE_NOT_REQUESTED)]
        assert [late.data.certificate.strip()] == [pem.strip() for pem in installed_pems()]  # the stranger's is not
        text = metrics()
        assert _metric(text, "certrail_deployer_parked_certificates", {}) == 0
        assert _metric(text, "certrail_deployer_refusals_total", {"code": "CERTIFICATE_NOT_REQUESTED"}) == 1
        assert httpx.get(deployer.base_url + "/health", timeout=5).json()["status"] == "ok"
    finally:
        await outcomes.stop()
        await producer.stop()
        if deployer.process is not None:
            deployer.process.terminate()
            deployer.process.wait(30)
        await delete_topics(kafka_settings, list(topics.fixed()))
