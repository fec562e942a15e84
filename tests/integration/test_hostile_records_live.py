"""The hostile tester's records of issue 17 against the four services as real processes on the real
broker: 200 kB of nested JSON and a 50,000-digit number on certrail.requests, certrail.provisioning
and certrail.events.issuer are each dead-lettered once with JSON_LIMIT_EXCEEDED and their coordinates, a
good request published after them is still handled, the auditor stores them and what follows, and
every service's /health stays 200."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import select

from services.common.contracts.catalog import CATALOG
from services.common.contracts.deadletter import DeadLetter
from services.common.contracts.envelope import DecodeError, decode, encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import IssuancePending, RequestRejected
from services.common.contracts.requests import IssueRequested
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session
from services.common.db_schema import AuditRecord
from services.common.kafka_config import consumer_kwargs, producer_kwargs
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.stack import SERVICES, Stack
from services.common.topics_admin import delete_topics, ensure_topics
from tests.conftest import free_ports, poll_until
from tests.unit.examples import CERT_ID, NOW, examples

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE_NUMBER = b'{"specversion":"1.0","n":' + b"7" * 50_000 + b"}"


def _data(record) -> object:  # type: ignore[no-untyped-def]
    try:
        return decode(record.value, CATALOG).data
    except DecodeError:
        return None


async def _read_all(kafka_settings: KafkaSettings, topic: str, until, settle_s: float) -> list:  # type: ignore[no-untyped-def]
    """Records of ``topic`` until ``until(records)`` holds, then whatever else arrives within ``settle_s``."""
    consumer = AIOKafkaConsumer(topic, **consumer_kwargs(kafka_settings, f"test-read-{uuid.uuid4().hex[:8]}"))
    await consumer.start()
    records: list = []
    try:
        async with asyncio.timeout(120):
            while not until(records):
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        settle_until = time.monotonic() + settle_s
        while time.monotonic() < settle_until:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def test_hostile_json_is_dead_lettered_once_per_record_and_every_service_goes_on(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}.certrail"
    topics = Topics(prefix)
    await ensure_topics(kafka_settings, topics.fixed(), partitions=1)
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    upgrade(db)
    ports = dict(zip(SERVICES, free_ports(4), strict=True))
    env = {
        "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "CERTRAIL_KAFKA_TOPIC_PREFIX": prefix,
        "CERTRAIL_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "CERTRAIL_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "CERTRAIL_DB_URL": db.url,
        "CERTRAIL_AUDITOR_SIGNING_KEY_FILE": str(tmp_path / "auditor" / "checkpoint-signing-key.pem"),
    }
    stack = Stack(var_dir=tmp_path / "var", ports=ports, env=env)
    request = examples()[IssueRequested].model_copy(update={"request_id": f"after-poison-{uuid.uuid4().hex[:6]}"})
    good_request = encode(make_event(request, id="evt-good", source="/t", time=NOW, subject=CERT_ID))
    good_event = encode(make_event(examples()[IssuancePending], id="e-good", source="/t", time=NOW, subject=CERT_ID))
    hostile_topics = (topics.requests, topics.provisioning, topics.issuer_events)
    try:
        await asyncio.to_thread(stack.start, 120.0)
        producer = AIOKafkaProducer(**producer_kwargs(kafka_settings))
        await producer.start()
        try:
            for topic in hostile_topics:  # offsets 0 and 1 of each topic
                await producer.send_and_wait(topic, DEEP, key=b"deep")
                await producer.send_and_wait(topic, HUGE_NUMBER, key=b"huge")
            await producer.send_and_wait(topics.requests, good_request, key=CERT_ID.encode())  # requests@2
            await producer.send_and_wait(topics.issuer_events, good_event, key=CERT_ID.encode())  # events.issuer@2
        finally:
            await producer.stop()

        # each hostile record dead-lettered exactly once, with its code and coordinates
        expected = Counter({("gateway", topics.requests, 0): 1, ("gateway", topics.requests, 1): 1,
                            ("deployer", topics.provisioning, 0): 1, ("deployer", topics.provisioning, 1): 1,
                            ("deployer", topics.issuer_events, 0): 1, ("deployer", topics.issuer_events, 1): 1,
                            ("gateway", topics.issuer_events, 0): 1, ("gateway", topics.issuer_events, 1): 1})
        records = await _read_all(kafka_settings, topics.deadletter, lambda got: len(got) >= len(expected), settle_s=3)
        envelopes = [decode(r.value, CATALOG) for r in records]
        letters = [e.data for e in envelopes]
        assert all(isinstance(letter, DeadLetter) for letter in letters)
        # once per record: its dead letter has one id (a rebalance in the group's first seconds may redeliver
        # a batch, and the letter is then published again under the same id, as every redelivered effect is)
        ids: dict[tuple[str, str, int], set[str]] = {}
        for envelope in envelopes:
            ids.setdefault((envelope.data.consumer, envelope.data.source.topic, envelope.data.source.offset),
                           set()).add(envelope.id)
        assert Counter({coordinates: len(found) for coordinates, found in ids.items()}) == expected
        assert {d.code for d in letters} == {ErrorCode.JSON_LIMIT_EXCEEDED}
        assert {d.original_size for d in letters} == {len(DEEP), len(HUGE_NUMBER)}

        # the good request behind them was handled by the gateway (refused: it is not signed by a known requester)
        def rejected(got: list) -> bool:
            return any(isinstance(data, RequestRejected) and data.request_id == request.request_id
                       for data in map(_data, got))

        await _read_all(kafka_settings, topics.gateway_events, rejected, settle_s=0)

        # the auditor stored the hostile records with their code, and what came after them
        engine = make_engine(db)
        try:
            def audited() -> dict[tuple[str, int], str | None] | None:
                with read_session(engine) as session:
                    rows = session.execute(select(AuditRecord.topic, AuditRecord.offset, AuditRecord.decode_error)
                                           .where(AuditRecord.topic.in_(hostile_topics))).all()
                found = {(row.topic, row.offset): row.decode_error for row in rows}
                return found if {(topics.requests, 2), (topics.issuer_events, 2)} <= set(found) else None

            found = await poll_until(audited, "the auditor to store the records after the hostile ones", 90, interval_s=0.3, in_thread=True)
        finally:
            engine.dispose()
        for topic in hostile_topics:
            assert found[(topic, 0)] == found[(topic, 1)] == ErrorCode.JSON_LIMIT_EXCEEDED
        assert found[(topics.requests, 2)] is None and found[(topics.issuer_events, 2)] is None

        for svc in stack.services:
            health = httpx.get(svc.base_url + "/health", timeout=5)
            assert health.status_code == 200, (svc.name, health.text)
            assert health.json()["status"] == "ok" and set(health.json().get("consumers", {}).values()) <= {"ok"}
    finally:
        await asyncio.to_thread(stack.stop)
        await delete_topics(kafka_settings, topics.fixed())
