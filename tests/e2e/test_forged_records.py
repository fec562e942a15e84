"""Issue 17: whoever can produce to certrail's topics (before SASL and ACLs: anyone; with them: a
leaked service credential) forges records, and the deployer holds on its own. On `certrail up --detach`
(real Kafka, the emCA simulator, the four services):

- a forged CertificateIssued for the deployed demo certificate (same certificate id, same SANs,
  even the same serial and the same bot-held public key) from the forger's own CA: nothing
  installed (the target's files unchanged), DeploymentFailed CERTIFICATE_UNTRUSTED;
- the same CertificateIssued with the gateway's credential on the gateway's events topic (the one
  other events topic the deployer reads): dead-lettered PRODUCER_NOT_ALLOWED before any check; with
  the deployer's credential on the deployer's own events topic (the only events topic it may
  write): read by no service, stored and flagged by the auditor (PRODUCER_NOT_ALLOWED), never in
  the inventory (decision 0016);
- a forged ProvisionCertificate for a requester-held profile: the deployer makes no key and
  dead-letters it (REQUESTER_NOT_AUTHORISED); a request signed with the deployer's own key for
  that profile is rejected by the gateway (REQUESTER_NOT_AUTHORISED); the simulator issued nothing;
- afterwards a genuine renewal is issued and deployed as before."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.common.consumer import Outbound
from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import ProvisionCertificate
from services.common.contracts.deadletter import DeadLetter
from services.common.contracts.envelope import Message, decode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateIssued, DeploymentFailed, RequestAccepted, RequestRejected
from services.common.contracts.fields import KeyAlgorithm
from services.common.contracts.identity import issuance_id
from services.common.contracts.requests import IssueRequested
from services.common.contracts.signing import signed
from services.common.contracts.topics import Topics
from services.common.kafka_config import consumer_kwargs, producer_kwargs
from services.common.settings import KafkaSettings
from services.deployer.botkeys import generate_key, make_csr
from services.deployer.targets.base import public_key_sha256
from tests.conftest import poll_until, wait_until
from tests.deployer_support import MiniCA
from tests.e2e.support import EmbeddedStack, wait_deployed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOPICS = Topics("certrail")
HELD_PROFILE = "held-web"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    embedded = EmbeddedStack(tmp_path_factory.mktemp("forged") / "var")
    embedded.up()
    try:
        yield embedded
    finally:
        embedded.down()


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _issued_total(stack: EmbeddedStack) -> int:
    with stack.sim_admin() as sim:
        return sum(sim.get("/admin/counters").json()["issued_by_application_id"].values())


def _metric(text: str, name: str, labels: dict[str, str]) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _publish(kafka: KafkaSettings, topic: str, key: str, data: Message) -> None:
    producer = AIOKafkaProducer(**producer_kwargs(kafka))
    await producer.start()
    try:
        out = Outbound(topic, make_event(data, id=str(uuid.uuid4()), source="/forger", time=datetime.now(UTC), subject=key), key=key)
        await producer.send_and_wait(topic, out.value(), key=key.encode(),
                                     headers=[(k, v.encode()) for k, v in out.headers().items()])
    finally:
        await producer.stop()


async def _collect(kafka: KafkaSettings, done: Any, timeout_s: float = 90) -> list[Message]:
    """Every record of the events topics and certrail.deadletter from the start, until ``done(seen)``."""
    consumer = AIOKafkaConsumer(*TOPICS.events_topics(), TOPICS.deadletter,
                                **consumer_kwargs(kafka, f"test-forged-{uuid.uuid4().hex[:8]}"))
    await consumer.start()
    seen: list[Message] = []

    async def finished() -> bool:
        if not done(seen):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                seen.extend(decode(record.value, CATALOG).data for record in records)
        return bool(done(seen))

    try:
        await poll_until(finished, lambda: f"the records looked for; saw {[type(m).__name__ for m in seen][-30:]}", timeout_s,
                         interval_s=0)
    finally:
        await consumer.stop()
    return seen


def test_forged_records_install_nothing_issue_nothing_and_a_good_request_still_deploys(stack: EmbeddedStack) -> None:
    match = re.search(r"demo certificate (\S+) serial", stack.up_output)
    assert match, stack.up_output
    certificate_id = match.group(1)
    current = stack.var_dir / "deploy" / "demo-web" / "current"
    with stack.api("admin") as admin:
        deployed = wait_deployed(admin, certificate_id)
        answer = admin.post("/v1/profiles", json={
            "name": HELD_PROFILE, "connector": "emca-demo", "ca_profile": "TLS Server", "key_generation": "requester",
            "allowed_requesters": ["demo-requester"], "domain_rules": {"dns_suffixes": ["demo.certrail.test"]},
            "validity_days": 90})
        assert answer.status_code == 201, answer.text
    before = _files(current)
    issued_before = _issued_total(stack)

    # 1. the forger's own CA signs the deployed certificate's names, serial and (public) key
    genuine = x509.load_pem_x509_certificate(before["cert.pem"])
    bot_key = serialization.load_pem_private_key(before["privkey.pem"], None)
    evil = MiniCA()
    forged_pem, _ = evil.leaf([certificate_id], bot_key, serial=genuine.serial_number)  # type: ignore[arg-type]
    forged_cert = x509.load_pem_x509_certificate(forged_pem.encode())
    forged_issued = CertificateIssued(
        issuance_id=issuance_id(certificate_id, 1), certificate_id=certificate_id, request_id="forged-issued",
        connector="emca-demo", profile="demo-web", serial=deployed["serial"], certificate=forged_pem, chain=list(evil.chain),
        subject=forged_cert.subject.rfc4514_string(), issuer=forged_cert.issuer.rfc4514_string(),
        sans=[f"dns:{certificate_id}"], not_before=forged_cert.not_valid_before_utc,
        not_after=forged_cert.not_valid_after_utc, public_key_sha256=public_key_sha256(forged_cert))
    # 2. an unsigned ProvisionCertificate for a requester-held profile
    forged_id = f"forged-{uuid.uuid4().hex[:6]}.demo.certrail.test"
    provision = ProvisionCertificate(certificate_id=forged_id, request_id="forged-provision", profile=HELD_PROFILE,
                                     connector="emca-demo", key_algorithm=KeyAlgorithm.EC_P256, sans=[f"dns:{forged_id}"])
    # 3. what a deployer that had not heard of the profile would have sent: refused by the gateway
    deployer_key = (stack.var_dir / "deployer-request.key").read_text().strip().encode()
    as_deployer = signed(IssueRequested(
        request_id="forged-as-deployer", requester="certrail-deployer", profile=HELD_PROFILE, certificate_id=forged_id,
        csr=make_csr(generate_key(KeyAlgorithm.EC_P256), [f"dns:{forged_id}"]), sans=[f"dns:{forged_id}"]),
        "deployer-1", deployer_key)
    # the broker authenticates producers now: the forgeries come with a leaked service credential each
    asyncio.run(_publish(stack.kafka_settings("issuer"), TOPICS.issuer_events, certificate_id, forged_issued))
    # the same with the gateway's and the deployer's credentials, on the only events topics they may write
    asyncio.run(_publish(stack.kafka_settings("gateway"), TOPICS.gateway_events, certificate_id, forged_issued))
    asyncio.run(_publish(stack.kafka_settings("deployer"), TOPICS.deployer_events, certificate_id, forged_issued))
    asyncio.run(_publish(stack.kafka_settings("gateway"), TOPICS.provisioning, forged_id, provision))
    asyncio.run(_publish(stack.kafka_settings("deployer"), TOPICS.requests, forged_id, as_deployer))

    def outcomes(seen: list[Message]) -> bool:
        refused = [m for m in seen if isinstance(m, DeploymentFailed) and m.certificate_id == certificate_id
                   and m.error.code is ErrorCode.CERTIFICATE_UNTRUSTED]
        dead = [m for m in seen if isinstance(m, DeadLetter) and m.source.topic == TOPICS.provisioning
                and m.code is ErrorCode.REQUESTER_NOT_AUTHORISED]
        rejected = [m for m in seen if isinstance(m, RequestRejected) and m.request_id == "forged-as-deployer"]
        misrouted = [m for m in seen if isinstance(m, DeadLetter) and m.source.topic == TOPICS.gateway_events
                     and m.code is ErrorCode.PRODUCER_NOT_ALLOWED]
        return bool(refused and dead and rejected and misrouted)

    seen = asyncio.run(_collect(stack.kafka_settings("admin"), outcomes))
    (failed,) = [m for m in seen if isinstance(m, DeploymentFailed) and m.certificate_id == certificate_id]
    assert failed.target.name == "demo-files" and failed.serial == deployed["serial"]
    (misrouted,) = [m for m in seen if isinstance(m, DeadLetter) and m.code is ErrorCode.PRODUCER_NOT_ALLOWED]
    assert misrouted.consumer == "deployer" and misrouted.reason == (
        f"{CertificateIssued.TYPE} may only come from {TOPICS.issuer_events}, it arrived on {TOPICS.gateway_events}")
    (rejected,) = [m for m in seen if isinstance(m, RequestRejected) and m.request_id == "forged-as-deployer"]
    assert rejected.error.code is ErrorCode.REQUESTER_NOT_AUTHORISED
    assert not [m for m in seen if isinstance(m, RequestAccepted) and m.certificate_id == forged_id]
    assert _files(current) == before  # the genuine certificate and key stay installed
    assert _issued_total(stack) == issued_before  # emCA issued nothing for the forgeries
    metrics = stack.metrics("deployer")
    assert _metric(metrics, "certrail_deployer_refusals_total", {"code": "CERTIFICATE_UNTRUSTED"}) == 1
    assert _metric(metrics, "certrail_deployer_refusals_total", {"code": "REQUESTER_NOT_AUTHORISED"}) == 1
    log = (stack.var_dir / "log" / "deployer.log").read_text(errors="replace")
    assert "refused to install" in log and "BEGIN CERTIFICATE" not in log

    def auditor_flagged() -> bool:
        text = stack.metrics("auditor")
        return _metric(text, "certrail_audit_invalid_records_total",
                       {"channel": "events.deployer", "code": "PRODUCER_NOT_ALLOWED"}) == 1 and \
            _metric(text, "certrail_audit_invalid_records_total",
                    {"channel": "events.gateway", "code": "PRODUCER_NOT_ALLOWED"}) == 1

    wait_until(auditor_flagged, "the auditor to flag the forged CertificateIssued records", 60, interval_s=1)
    with stack.api("admin") as admin:  # the inventory still shows the genuine serial
        assert admin.get(f"/v1/certificates/{certificate_id}").json()["inventory"]["serial"] == deployed["serial"]

    # a genuine renewal afterwards is issued by the simulator and deployed
    with stack.api("requester") as requester, stack.api("admin") as admin:
        renew = requester.post(f"/v1/certificates/{certificate_id}/renew", json={"request_id": f"renew-{deployed['serial']}"})
        assert renew.status_code == 202, renew.text
        renewed = wait_deployed(admin, certificate_id, not_serial=deployed["serial"])
    installed = x509.load_pem_x509_certificate((current / "cert.pem").read_bytes())
    assert format(installed.serial_number, "x") == renewed["serial"]
    assert installed.issuer == genuine.issuer and installed.public_key() != forged_cert.public_key()
    assert _issued_total(stack) == issued_before + 1
