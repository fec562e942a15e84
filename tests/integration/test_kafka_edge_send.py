"""`send_all` against the real broker: with a connected broker the records go to its aiokafka producer
directly (FastStream's published counter does not move), arrive byte for byte with the headers FastStream
would have sent (less its random ``correlation_id``), and a record the broker refuses fails its
acknowledgement, awaited at once or at the end of the batch (`PENDING_ACKS`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import MessageSizeTooLargeError
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry

from services.common.consumer import PENDING_ACKS, PendingAcks
from services.common.contracts.envelope import record_headers
from services.common.kafka_config import admin_kwargs, consumer_kwargs
from services.common.kafka_edge import make_broker, raw_producer, send_all
from services.common.settings import KafkaSettings
from services.common.topics_admin import delete_topics
from tests.conftest import poll_until

pytestmark = pytest.mark.integration

UniqueTopic = Callable[..., Awaitable[str]]
Record = tuple[str | None, bytes, dict[str, str]]

RECORDS: list[Record] = [
    ("cert-1", b'{"type":"io.certrail.x.v1","n":1}', record_headers("io.certrail.x.v1")),
    (None, b'{"n":2}', record_headers(None)),  # keyless, no ce_type
    ("cert-\u00e9", b"\x00\xff raw bytes", {"ce_type": "io.certrail.y.v1", "x-extra": "caf\u00e9"}),  # no content-type given
    ("cert-1", b"", record_headers("io.certrail.x.v1")),  # an empty value
]


def _published_by_faststream(registry: CollectorRegistry) -> float:
    """Every ``certrail_faststream_published_messages_total`` sample, summed (0 before the first publish)."""
    return sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "certrail_faststream_published_messages_total"
    )


async def _read(settings: KafkaSettings, topic: str, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(topic, **consumer_kwargs(settings, f"reader-{uuid.uuid4().hex[:8]}"))
    await consumer.start()
    received: list[ConsumerRecord[bytes, bytes]] = []

    async def arrived() -> bool:
        for records in (await consumer.getmany(timeout_ms=500)).values():
            received.extend(records)
        return len(received) >= count

    try:
        await poll_until(arrived, f"{count} records on {topic}", 60, interval_s=0)
    finally:
        await consumer.stop()
    return sorted(received, key=lambda r: r.offset)


@pytest.fixture
async def broker(kafka_settings: KafkaSettings) -> AsyncIterator[tuple[KafkaBroker, CollectorRegistry]]:
    registry = CollectorRegistry()
    made = make_broker(kafka_settings, registry, "send-test")
    await made.start()
    try:
        yield made, registry
    finally:
        await made.stop()


async def test_send_all_uses_the_producer_directly_and_the_records_arrive_byte_for_byte(
    kafka_settings: KafkaSettings, unique_topic: UniqueTopic, broker: tuple[KafkaBroker, CollectorRegistry]
) -> None:
    kafka, registry = broker
    direct, through_faststream = await unique_topic("send-direct", partitions=1), await unique_topic("send-fs", partitions=1)
    assert raw_producer(kafka) is not None

    await send_all(kafka, [(direct, key, value, headers) for key, value, headers in RECORDS])
    assert _published_by_faststream(registry) == 0  # FastStream's publish machinery was not used

    # the same records the way send_all published them before: through FastStream's broker.publish
    for key, value, headers in RECORDS:
        await kafka.publish(value, topic=through_faststream, key=key.encode() if key is not None else None, headers=headers)
    assert _published_by_faststream(registry) == len(RECORDS)

    sent, published = await _read(kafka_settings, direct, len(RECORDS)), await _read(kafka_settings, through_faststream, len(RECORDS))
    for (key, value, headers), record, old in zip(RECORDS, sent, published, strict=True):
        assert record.key == (key.encode("utf-8") if key is not None else None) == old.key
        assert record.value == value == old.value
        expected = [("content-type", headers.get("content-type", "").encode())]
        expected += [(name, text.encode()) for name, text in headers.items() if name != "content-type"]
        assert list(record.headers) == expected
        # the one difference on the wire: FastStream's random correlation_id (second, after content-type)
        assert [name for name, _ in old.headers].index("correlation_id") == 1
        assert [h for h in old.headers if h[0] != "correlation_id"] == list(record.headers)


@pytest.fixture
async def small_topic(kafka_settings: KafkaSettings) -> AsyncIterator[str]:
    """A topic whose broker refuses records over 1 KiB (one replica, so any cluster accepts acks=all)."""
    name = f"test.send-small.{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(**admin_kwargs(kafka_settings))
    await admin.start()
    try:
        configs = {"max.message.bytes": "1024", "min.insync.replicas": "1"}
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs=configs)])
    finally:
        await admin.close()
    yield name
    await delete_topics(kafka_settings, [name])


async def test_a_refused_record_fails_its_acknowledgement(
    small_topic: str, broker: tuple[KafkaBroker, CollectorRegistry]
) -> None:
    kafka, _ = broker
    too_big = (small_topic, "cert-1", b"x" * 4096, record_headers("io.certrail.x.v1"))

    with pytest.raises(MessageSizeTooLargeError):  # acknowledgements awaited at once
        await send_all(kafka, [too_big])

    pending = PendingAcks()
    token = PENDING_ACKS.set(pending)
    try:
        await send_all(kafka, [too_big])  # inside a batch: sent, the acknowledgement left to the batch
    finally:
        PENDING_ACKS.reset(token)
    with pytest.raises(MessageSizeTooLargeError):
        await pending.wait()
