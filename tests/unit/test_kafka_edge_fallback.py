"""`send_all` without a connected producer falls back to FastStream's ``broker.publish``: an unconnected
broker has no raw producer, and FastStream's TestKafkaBroker delivers the records in memory as before
(the direct path against a real broker: tests/integration/test_kafka_edge_send.py)."""

from __future__ import annotations

from faststream.kafka import KafkaBroker, KafkaMessage, TestKafkaBroker
from prometheus_client import CollectorRegistry

from services.common.contracts.envelope import record_headers
from services.common.kafka_edge import make_broker, raw_producer, send_all
from services.common.settings import KafkaSettings


def test_an_unconnected_broker_has_no_raw_producer() -> None:
    assert raw_producer(KafkaBroker("localhost:9")) is None
    assert raw_producer(make_broker(KafkaSettings(), CollectorRegistry(), "send-test")) is None


async def test_the_test_broker_gets_the_records_through_broker_publish() -> None:
    registry = CollectorRegistry()
    broker = make_broker(KafkaSettings(), registry, "send-test")
    received: list[tuple[bytes | None, bytes, dict[str, str]]] = []

    @broker.subscriber("send.test", group_id="send-test")
    async def on_record(body: bytes, msg: KafkaMessage) -> None:
        record = msg.raw_message
        assert not isinstance(record, tuple)  # not a batch subscriber
        received.append((record.key, body, dict(msg.headers)))

    async with TestKafkaBroker(broker) as test_broker:
        assert raw_producer(test_broker) is None
        await send_all(test_broker, [("send.test", "cert-1", b"one", record_headers("io.certrail.x.v1")),
                                     ("send.test", None, b"two", record_headers(None))])

    # (the test broker makes a missing key b"")
    assert [(key, body) for key, body, _ in received] == [(b"cert-1", b"one"), (b"", b"two")]
    assert received[0][2]["ce_type"] == "io.certrail.x.v1"
    published = registry.get_sample_value("certrail_faststream_published_messages_total",
                                          {"app_name": "send-test", "broker": "kafka", "destination": "send.test",
                                           "status": "success"})
    assert published == 2  # through FastStream's publish, middleware and all
