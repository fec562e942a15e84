"""The four services as real processes against the real broker and a SQLite
file: healthy, exposing their metrics, dead-lettering poison records with the
reason and carrying on, and stopping cleanly with nothing left behind."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.common.contracts.catalog import CATALOG
from services.common.contracts.deadletter import DeadLetter
from services.common.contracts.envelope import decode, encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateDeployed, IssuancePending
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session
from services.common.db_schema import list_heartbeats
from services.common.kafka_config import consumer_kwargs, producer_kwargs
from services.common.migrate import upgrade
from services.common.proc import port_free
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.stack import SERVICES, Stack
from services.common.topics_admin import delete_topics, ensure_topics
from tests.conftest import free_ports, poll_until
from tests.unit.examples import CERT_ID, NOW, examples

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _metric(text: str, name: str, labels: dict[str, str]) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_four_services_dead_letter_poison_and_go_on(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}.certrail"
    topics = Topics(prefix)
    connector_topic = topics.commands("emca-test")
    await ensure_topics(kafka_settings, [*topics.fixed(), connector_topic], partitions=2)
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    upgrade(db)
    ports = dict(zip(SERVICES, free_ports(4), strict=True))
    env = {
        "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "CERTRAIL_KAFKA_TOPIC_PREFIX": prefix,
        "CERTRAIL_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "CERTRAIL_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "CERTRAIL_DB_URL": db.url,
        "CERTRAIL_GATEWAY_HEARTBEAT_INTERVAL_S": "1",
        "CERTRAIL_AUDITOR_SIGNING_KEY_FILE": str(tmp_path / "auditor" / "checkpoint-signing-key.pem"),
    }
    stack = Stack(var_dir=tmp_path / "var", ports=ports, env=env)
    try:
        await asyncio.to_thread(stack.start, 120.0)
        for svc in stack.services:
            health = httpx.get(svc.base_url + "/health", timeout=5).json()
            assert health["status"] == "ok" and health["checks"] == {"kafka": "ok", "database": "ok"}

        producer = AIOKafkaProducer(**producer_kwargs(kafka_settings))
        await producer.start()
        valid = encode(make_event(examples()[IssuancePending], id="e-1", source="/t", time=NOW, subject=CERT_ID))
        forged = encode(make_event(examples()[CertificateDeployed], id="e-2", source="/t", time=NOW, subject=CERT_ID))
        try:
            await producer.send_and_wait(topics.requests, b"\xffpoison", key=b"req-poison")
            await producer.send_and_wait(connector_topic, b'{"specversion": "1.0"}', key=b"cmd-poison")
            await producer.send_and_wait(topics.provisioning, b"[1,2]", key=b"prov-poison")
            await producer.send_and_wait(topics.issuer_events, forged, key=CERT_ID.encode())  # the deployer's type
            await producer.send_and_wait(topics.issuer_events, valid, key=CERT_ID.encode())
        finally:
            await producer.stop()

        # every consumer dead-letters the poison on its topics (the auditor stores it instead: decision 0006)
        expected = {
            ("gateway", topics.requests, ErrorCode.UNDECODABLE),
            ("issuer", connector_topic, ErrorCode.NOT_CLOUDEVENT),
            ("deployer", topics.provisioning, ErrorCode.UNDECODABLE),
            ("deployer", topics.issuer_events, ErrorCode.PRODUCER_NOT_ALLOWED),
            ("gateway", topics.issuer_events, ErrorCode.PRODUCER_NOT_ALLOWED),  # its projection of issued certificates
        }
        consumer = AIOKafkaConsumer(topics.deadletter, **consumer_kwargs(kafka_settings, f"test-dl-{prefix}"))
        await consumer.start()
        letters: list[DeadLetter] = []
        try:
            async with asyncio.timeout(90):
                while len(letters) < len(expected):
                    for records in (await consumer.getmany(timeout_ms=1000)).values():
                        for record in records:
                            data = decode(record.value, CATALOG).data
                            assert isinstance(data, DeadLetter)
                            letters.append(data)
        finally:
            await consumer.stop()
        assert {(d.consumer, d.source.topic, d.code) for d in letters} == expected
        assert all(d.reason for d in letters)

        # the valid event after the forged one was consumed (ignored: the deployer does not handle it)
        def deployer_went_on() -> bool:
            text = httpx.get(stack.services[2].base_url + "/metrics", timeout=5).text
            return _metric(text, "certrail_messages_consumed_total", {"type": IssuancePending.TYPE, "outcome": "ignored"}) >= 1

        await poll_until(deployer_went_on, "the deployer to consume the valid event", 60, interval_s=0.3, in_thread=True)
        metrics = httpx.get(stack.services[0].base_url + "/metrics", timeout=5).text
        assert _metric(metrics, "certrail_dead_letters_total", {"service": "gateway", "code": "UNDECODABLE"}) == 1

        # the gateway consumes with the runtime's loop: each partition's lag behind what it finished
        def gateway_lag_reported() -> bool:
            text = httpx.get(stack.services[0].base_url + "/metrics", timeout=5).text
            return any(line.startswith("certrail_consumer_lag_records{") and f'topic="{topics.requests}"' in line
                       and line.endswith(" 0.0") for line in text.splitlines())

        await poll_until(gateway_lag_reported, "the gateway's lag on requests, 0", 30, interval_s=0.3, in_thread=True)

        engine = make_engine(db)
        try:
            def all_heartbeats() -> bool:
                with read_session(engine) as session:
                    return {h.service for h in list_heartbeats(session)} == set(SERVICES)

            await poll_until(all_heartbeats, "a heartbeat row from each service", 30, interval_s=0.3, in_thread=True)
        finally:
            engine.dispose()
    finally:
        stopped = await asyncio.to_thread(stack.stop)
        await delete_topics(kafka_settings, [*topics.fixed(), connector_topic])
    assert sorted(stopped) == sorted(SERVICES)
    assert stack.running_pids() == {}
    assert all(port_free("127.0.0.1", p) for p in ports.values())
