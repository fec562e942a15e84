"""CloudEvents produced by the shared publisher travel through the real broker
byte for byte: structured mode, the content-type header, keyed by certificate
id, and decode to the same typed message."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from faststream.kafka import KafkaBroker

from services.common.consumer import Outbound
from services.common.contracts.catalog import ALL_TYPES, CATALOG
from services.common.contracts.envelope import CONTENT_TYPE, decode, make_event
from services.common.contracts.identity import message_id
from services.common.kafka_config import consumer_kwargs, faststream_broker_kwargs
from services.common.kafka_edge import FastStreamPublisher
from services.common.settings import KafkaSettings
from tests.unit.examples import NOW, examples

pytestmark = pytest.mark.integration


async def test_every_message_type_round_trips_through_kafka(kafka_settings: KafkaSettings, unique_topic) -> None:
    topic = await unique_topic("cloudevents", partitions=3)
    items = examples()
    outbound = [
        Outbound(
            topic=topic,
            key=f"cert-{i % 5}",
            event=make_event(
                items[cls], id=message_id("cause", cls.TYPE, str(i)), source="/certrail/test", time=NOW,
                subject=f"cert-{i % 5}", correlationid="req-1", causationid="cause",
            ),
        )
        for i, cls in enumerate(ALL_TYPES)
    ]
    broker = KafkaBroker(**faststream_broker_kwargs(kafka_settings))
    await broker.start()
    try:
        await FastStreamPublisher(broker).publish(outbound)
    finally:
        await broker.stop()

    consumer = AIOKafkaConsumer(topic, **consumer_kwargs(kafka_settings, f"test-ce-{topic}"))
    await consumer.start()
    received = []
    try:
        async with asyncio.timeout(60):
            while len(received) < len(outbound):
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    received.extend(records)
    finally:
        await consumer.stop()

    by_id = {o.event.id: o for o in outbound}
    assert len(received) == len(outbound)
    for record in received:
        decoded = decode(record.value, CATALOG)
        sent = by_id[decoded.id]
        assert record.value == sent.value()
        assert record.key == sent.key.encode()
        assert dict(record.headers)["content-type"] == CONTENT_TYPE.encode()
        assert decoded.data == sent.event.data
