"""certrail's Kafka client settings against a real broker: producer, consumer groups,
topic administration and the SASL_SSL listener."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError
from faststream.kafka import KafkaBroker
from pydantic import SecretStr

from services.common.kafka_config import admin_kwargs, consumer_kwargs, faststream_broker_kwargs, producer_kwargs
from services.common.settings import KafkaSettings
from services.common.topics_admin import DEFAULT_RETENTION_MS, delete_topics, ensure_topics
from tests.conftest import poll_until

pytestmark = pytest.mark.integration

UniqueTopic = Callable[..., Awaitable[str]]
Records = list[ConsumerRecord[bytes, bytes]]


async def _consume_until(consumer: AIOKafkaConsumer, count: int, deadline_s: float = 30.0) -> Records:
    """Poll until exactly ``count`` records arrived (or fail at the deadline); commit nothing."""
    records: Records = []

    async def arrived() -> bool:
        if len(records) < count:
            batch = await consumer.getmany(timeout_ms=1000, max_records=count - len(records))
            for partition_records in batch.values():
                records.extend(partition_records)
        return len(records) >= count

    await poll_until(arrived, lambda: f"{count} records (got {len(records)})", deadline_s, interval_s=0)
    return records


async def _produce(settings: KafkaSettings, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**producer_kwargs(settings))
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def test_idempotent_producer_delivers_every_record_once(
    kafka_settings: KafkaSettings, unique_topic: UniqueTopic
) -> None:
    topic = await unique_topic("idempotent", partitions=3)
    kwargs = producer_kwargs(kafka_settings)
    assert kwargs["enable_idempotence"] is True and kwargs["acks"] == "all"
    producer = AIOKafkaProducer(**kwargs)
    await producer.start()
    try:
        metadata = [await producer.send_and_wait(topic, f"v{i}".encode(), key=f"k{i % 7}".encode()) for i in range(50)]
    finally:
        await producer.stop()
    assert all(m.offset >= 0 for m in metadata)

    consumer = AIOKafkaConsumer(topic, **consumer_kwargs(kafka_settings, group_id=f"g-{uuid.uuid4().hex}"))
    await consumer.start()
    try:
        records = await _consume_until(consumer, 50)
    finally:
        await consumer.stop()
    values = sorted(r.value for r in records)
    assert values == sorted(f"v{i}".encode() for i in range(50)), "a record was lost or duplicated"


async def test_per_key_order_is_kept_across_partitions(
    kafka_settings: KafkaSettings, unique_topic: UniqueTopic
) -> None:
    topic = await unique_topic("order", partitions=6)
    keys, per_key = 40, 30
    # interleaved: k0#0, k1#0, ..., k0#1, ... so that batches mix keys and partitions
    messages = [(f"key-{k}".encode(), f"{k}:{n}".encode()) for n in range(per_key) for k in range(keys)]
    await _produce(kafka_settings, topic, messages)

    consumer = AIOKafkaConsumer(topic, **consumer_kwargs(kafka_settings, group_id=f"g-{uuid.uuid4().hex}"))
    await consumer.start()
    try:
        records = await _consume_until(consumer, keys * per_key)
    finally:
        await consumer.stop()

    seen: dict[bytes, list[int]] = defaultdict(list)
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    for record in records:
        assert record.key is not None and record.value is not None
        seen[record.key].append(int(record.value.split(b":")[1]))
        partitions_of_key[record.key].add(record.partition)
    assert len(seen) == keys
    assert {p for parts in partitions_of_key.values() for p in parts} == set(range(6)), "keys should spread"
    for key, sequence in seen.items():
        assert sequence == list(range(per_key)), f"{key!r} arrived out of order: {sequence}"
        assert len(partitions_of_key[key]) == 1


async def test_consumer_group_resumes_from_its_committed_offsets(
    kafka_settings: KafkaSettings, unique_topic: UniqueTopic
) -> None:
    topic = await unique_topic("resume", partitions=2)
    group = f"g-{uuid.uuid4().hex}"
    first_half = [(f"k{i % 5}".encode(), f"a{i}".encode()) for i in range(20)]
    await _produce(kafka_settings, topic, first_half)

    # the first consumer handles what it got in its first batches and commits exactly that
    consumer = AIOKafkaConsumer(topic, **consumer_kwargs(kafka_settings, group_id=group))
    await consumer.start()
    try:
        handled = await _consume_until(consumer, 8)
        offsets: dict[TopicPartition, int] = {}
        for record in handled:
            tp = TopicPartition(record.topic, record.partition)
            offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
        await consumer.commit(offsets)
    finally:
        await consumer.stop()

    second_half = [(f"k{i % 5}".encode(), f"b{i}".encode()) for i in range(10)]
    await _produce(kafka_settings, topic, second_half)

    everything = {v for _, v in first_half + second_half}
    handled_values = {r.value for r in handled}
    expected = everything - handled_values
    successor = AIOKafkaConsumer(topic, **consumer_kwargs(kafka_settings, group_id=group))
    await successor.start()
    try:
        resumed = await _consume_until(successor, len(expected))
        extra = await successor.getmany(timeout_ms=500)  # nothing else may come
    finally:
        await successor.stop()
    resumed_values = [r.value for r in resumed]
    assert len(resumed_values) == len(set(resumed_values)), "a record was delivered twice"
    assert set(resumed_values) == expected, "committed records were re-delivered or records were lost"
    assert not any(extra.values())


async def _topic_configs(settings: KafkaSettings, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(**admin_kwargs(settings))
    await admin.start()
    try:
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    (resource,) = response.to_object()["resources"]
    return {e["config_names"]: e["config_value"] for e in resource["config_entries"]}


async def _partition_count(settings: KafkaSettings, topic: str) -> int:
    admin = AIOKafkaAdminClient(**admin_kwargs(settings))
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return len(described["partitions"])


async def test_ensure_topics_is_idempotent_and_sets_partitions_and_configs(kafka_settings: KafkaSettings) -> None:
    names = [f"test.ensure.{uuid.uuid4().hex[:10]}.{suffix}" for suffix in ("requests", "events")]
    try:
        created = await ensure_topics(kafka_settings, names, partitions=3)
        assert created.created == names and not created.updated and not created.unchanged
        for name in names:
            assert await _partition_count(kafka_settings, name) == 3
            configs = await _topic_configs(kafka_settings, name)
            assert configs["retention.ms"] == str(DEFAULT_RETENTION_MS)
            # min(2, replication factor): 1 on the single test broker, 2 on the opt-in three-node cluster
            assert configs["min.insync.replicas"] == ("2" if os.environ.get("CERTRAIL_TEST_KAFKA_BROKERS", "1") == "3" else "1")

        again = await ensure_topics(kafka_settings, names, partitions=3)
        assert again.unchanged == names and not again.created and not again.updated

        grown = await ensure_topics(kafka_settings, names, partitions=5, retention_ms=-1)
        assert grown.updated == names
        assert any("partitions 3 -> 5" in change for change in grown.changes[names[0]])
        for name in names:
            assert await _partition_count(kafka_settings, name) == 5
            assert (await _topic_configs(kafka_settings, name))["retention.ms"] == "-1"

        never_shrinks = await ensure_topics(kafka_settings, names, partitions=2, retention_ms=-1)
        assert never_shrinks.unchanged == names
        assert await _partition_count(kafka_settings, names[0]) == 5
    finally:
        await delete_topics(kafka_settings, names)


async def test_ensure_topics_keeps_other_topic_overrides(kafka_settings: KafkaSettings) -> None:
    name = f"test.overrides.{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(**admin_kwargs(kafka_settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs={"max.message.bytes": "2097152"})])
    finally:
        await admin.close()
    try:
        report = await ensure_topics(kafka_settings, [name], partitions=1, retention_ms=86_400_000)
        assert report.updated == [name]
        configs = await _topic_configs(kafka_settings, name)
        assert configs["retention.ms"] == "86400000"
        assert configs["max.message.bytes"] == "2097152", "an override the topic had was dropped"
    finally:
        await delete_topics(kafka_settings, [name])


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
async def test_sasl_ssl_settings_produce_and_consume(
    kafka_sasl_ssl: KafkaSettings, unique_topic: UniqueTopic, mechanism: str
) -> None:
    settings = kafka_sasl_ssl.model_copy(update={"sasl_mechanism": mechanism})
    topic = await unique_topic("sasl", partitions=2, settings=settings)  # the admin client over SASL_SSL too
    await _produce(settings, topic, [(b"k", b"over SASL_SSL")])
    consumer = AIOKafkaConsumer(topic, **consumer_kwargs(settings, group_id=f"g-{uuid.uuid4().hex}"))
    await consumer.start()
    try:
        records = await _consume_until(consumer, 1)
    finally:
        await consumer.stop()
    assert [r.value for r in records] == [b"over SASL_SSL"]


async def test_sasl_ssl_with_a_wrong_password_fails_authentication(
    kafka_sasl_ssl: KafkaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = kafka_sasl_ssl.model_copy(update={"sasl_password": SecretStr("not-the-password")})
    producer = AIOKafkaProducer(**producer_kwargs(wrong))
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()
    assert "Authentication failed" in caplog.text
    assert "not-the-password" not in caplog.text


async def test_faststream_broker_kwargs_publish_over_sasl_ssl(
    kafka_sasl_ssl: KafkaSettings, unique_topic: UniqueTopic
) -> None:
    topic = await unique_topic("faststream", partitions=1, settings=kafka_sasl_ssl)
    broker = KafkaBroker(**faststream_broker_kwargs(kafka_sasl_ssl))
    await broker.start()
    try:
        await broker.publish(b"published by FastStream", topic=topic, key=b"k")
    finally:
        await broker.stop()
    consumer = AIOKafkaConsumer(topic, **consumer_kwargs(kafka_sasl_ssl, group_id=f"g-{uuid.uuid4().hex}"))
    await consumer.start()
    try:
        records = await _consume_until(consumer, 1)
    finally:
        await consumer.stop()
    assert [r.value for r in records] == [b"published by FastStream"]
