"""The runtime's dispatch loop (the gateway's and the deployer's consumer, decision 0017) against the real
broker: every record handled once per certificate in offset order, the resulting events published, a poison
record dead-lettered, the group's offsets committed to the end only after everything was published, a handler
failing once retried in place by the Dispatcher, and a fetch failing on transient trouble retried by the loop
(at-least-once) instead of committed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import GroupCoordinatorNotAvailableError
from faststream.kafka import KafkaBroker
from sqlalchemy.exc import OperationalError

from services.auditor.kafka_reader import committed_offsets
from services.common.consumer import Dispatcher, Outbound
from services.common.contracts.catalog import CATALOG
from services.common.contracts.deadletter import DeadLetter
from services.common.contracts.envelope import Envelope, decode, encode, make_event
from services.common.contracts.events import CertificateDeployed, CertificateIssued
from services.common.contracts.topics import Topics
from services.common.kafka_config import consumer_kwargs, faststream_broker_kwargs
from services.common.kafka_edge import FastStreamPublisher
from services.common.runtime.fetch_batches import DispatchLoop
from services.common.runtime.keyed_loop import LoopSettings
from services.common.settings import KafkaSettings
from services.common.topics_admin import delete_topics, ensure_topics
from tests.conftest import poll_until
from tests.unit.examples import NOW, examples

pytestmark = pytest.mark.integration

EXAMPLES = examples()
KEYS = [f"cert-{i}" for i in range(7)]
PER_KEY = 6


@pytest.fixture
async def topics(kafka_settings: KafkaSettings) -> AsyncIterator[Topics]:
    names = Topics(f"test.batch.{uuid.uuid4().hex[:10]}")
    created = [names.issuer_events, names.deployer_events, names.deadletter]
    await ensure_topics(kafka_settings, created, partitions=3)
    yield names
    await delete_topics(kafka_settings, created)


def _issued(event_id: str, key: str) -> bytes:
    return encode(make_event(EXAMPLES[CertificateIssued], id=event_id, source="/t", time=NOW, subject=key))


async def _read(kafka_settings: KafkaSettings, topic: str, count: int) -> list[tuple[bytes | None, bytes]]:
    consumer = AIOKafkaConsumer(topic, **consumer_kwargs(kafka_settings, f"reader-{uuid.uuid4().hex[:8]}"))
    await consumer.start()
    received: list[tuple[bytes | None, bytes]] = []
    try:
        async with asyncio.timeout(60):
            while len(received) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    received.extend((record.key, record.value) for record in records)
    finally:
        await consumer.stop()
    return received


async def _publish_inputs(kafka_settings: KafkaSettings, topics: Topics) -> None:
    producer = KafkaBroker(**faststream_broker_kwargs(kafka_settings))
    await producer.start()
    try:
        for n in range(PER_KEY):
            for key in KEYS:
                await producer.publish(_issued(f"{key}-{n}", key), topic=topics.issuer_events, key=key.encode())
        await producer.publish(b"{poison", topic=topics.issuer_events, key=b"cert-0")
    finally:
        await producer.stop()


async def _run_consumer(kafka_settings: KafkaSettings, topics: Topics, group: str, fail_once: set[str]) -> None:
    broker = KafkaBroker(**faststream_broker_kwargs(kafka_settings))
    handled: list[str] = []

    async def on_issued(envelope: Envelope) -> list[Outbound]:
        if envelope.id in fail_once:
            fail_once.discard(envelope.id)
            if envelope.id.endswith("-2"):
                raise OperationalError("INSERT", {}, Exception("database is locked"))  # the loop retries the fetch
            raise RuntimeError("a bug, once")  # the Dispatcher retries the record
        handled.append(envelope.id)
        key = envelope.subject or ""
        out = make_event(EXAMPLES[CertificateDeployed], id=f"out-{envelope.id}", source="/t", time=NOW, subject=key)
        return [Outbound(topic=topics.deployer_events, event=out, key=key)]

    dispatcher = Dispatcher(
        service="batch-test",
        catalog=CATALOG,
        topics=topics,
        publisher=FastStreamPublisher(broker),
        handlers={CertificateIssued: on_issued},
        clock=lambda: NOW,
    )
    loop = DispatchLoop(dispatcher, kafka=kafka_settings, consumer_name="batch-test", topics=[topics.issuer_events],
                        settings=LoopSettings(group_id=group, max_poll_records=20, poll_timeout_ms=50, max_in_flight=40),
                        clock=lambda: NOW)
    await broker.start()
    task = asyncio.create_task(loop.run())
    try:
        expected_end = PER_KEY * len(KEYS) + 1

        async def all_committed() -> bool:
            try:
                return sum((await committed_offsets(kafka_settings, group)).values()) >= expected_end
            except GroupCoordinatorNotAvailableError:  # the loop's consumer has not joined the group yet
                return False

        await poll_until(all_committed, f"the group to commit up to {expected_end}", 90, interval_s=0.2)
    finally:
        loop.stop()
        await asyncio.wait_for(task, 30)
        await broker.stop()


async def test_batches_are_handled_in_order_per_key_published_and_committed(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    await _publish_inputs(kafka_settings, topics)
    group = f"batch-{uuid.uuid4().hex[:8]}"
    fail_once = {"cert-3-2", "cert-5-4"}
    await _run_consumer(kafka_settings, topics, group, fail_once)
    assert fail_once == set()  # both failed once and were redelivered

    total = PER_KEY * len(KEYS)
    committed = await committed_offsets(kafka_settings, group)
    assert sum(committed.values()) == total + 1  # every record, the poison one too, committed exactly to the end

    outputs = await _read(kafka_settings, topics.deployer_events, total)
    firsts: dict[str, list[int]] = {}
    for key, value in outputs:
        event = decode(value, CATALOG)
        assert key is not None and event.id.startswith(f"out-{key.decode()}-")
        n = int(event.id.rsplit("-", 1)[1])
        seen = firsts.setdefault(key.decode(), [])
        if n not in seen:  # a redelivered batch may publish a certificate's event again (at-least-once)
            seen.append(n)
    assert firsts == {key: list(range(PER_KEY)) for key in KEYS}  # per certificate, in order

    letters = await _read(kafka_settings, topics.deadletter, 1)
    letter = decode(letters[0][1], CATALOG)
    assert isinstance(letter.data, DeadLetter)
    assert letter.data.source.topic == topics.issuer_events
    assert letter.data.source.key == "cert-0"
