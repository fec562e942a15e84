"""The FastStream edge: the only place where FastStream meets the shared
consumer plumbing. Handlers and the Dispatcher never import a broker library.

- `FastStreamPublisher` publishes `Outbound` messages (CloudEvents structured
  mode, ``content-type: application/cloudevents+json``, keyed by certificate id)
  through the broker's idempotent producer (acks=all).
- `subscribe` registers one subscriber that turns each aiokafka record into an
  `InboundRecord` and hands it to a `Dispatcher`. Offsets are committed after
  the record was handled, ignored or dead-lettered (AckPolicy.ACK with
  auto-commit off); an unexpected exception leaves the record uncommitted and
  FastStream seeks back to it (NACK), so it is retried, never lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import CollectorRegistry

from services.common.consumer import Dispatcher, InboundRecord, Outbound
from services.common.kafka_config import faststream_broker_kwargs
from services.common.metrics import PublisherMetrics
from services.common.settings import KafkaSettings


def make_broker(settings: KafkaSettings, registry: CollectorRegistry, service: str) -> KafkaBroker:
    """A FastStream Kafka broker with the idempotent producer and FastStream's
    Prometheus middleware (metrics prefixed ``certrail_faststream``)."""
    return KafkaBroker(
        **faststream_broker_kwargs(settings),
        middlewares=[KafkaPrometheusMiddleware(registry=registry, app_name=service, metrics_prefix="certrail_faststream")],
    )


class FastStreamPublisher:
    """`Publisher` over a FastStream broker."""

    def __init__(self, broker: KafkaBroker, metrics: PublisherMetrics | None = None) -> None:
        self._broker = broker
        self._metrics = metrics

    async def publish(self, messages: Sequence[Outbound]) -> None:
        for message in messages:
            await self._broker.publish(
                message.value(),
                topic=message.topic,
                key=message.key.encode("utf-8") if message.key is not None else None,
                headers=message.headers(),
            )
            if self._metrics is not None:
                self._metrics.published_one(message.event.type)


def inbound_from(record: ConsumerRecord[Any, Any]) -> InboundRecord:
    return InboundRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        value=record.value,
        key=record.key,
        timestamp_ms=record.timestamp,
        headers=tuple((k, bytes(v or b"")) for k, v in (record.headers or ())),
    )


async def _raw_bytes(message: Any) -> bytes:
    """FastStream decoder that leaves the body alone: the Dispatcher decodes."""
    return bytes(message.body or b"")


def subscribe(
    broker: KafkaBroker,
    dispatcher: Dispatcher,
    *,
    group_id: str,
    settings: KafkaSettings,
    topics: Sequence[str] = (),
    pattern: str | None = None,
) -> None:
    """Route ``topics`` (or every topic matching ``pattern``) to ``dispatcher``."""
    if bool(topics) == bool(pattern):
        raise ValueError("give either topics or a pattern")

    subscriber = broker.subscriber(
        *topics,
        pattern=pattern,
        group_id=group_id,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        decoder=_raw_bytes,
        title=f"{group_id}:{pattern or ','.join(topics)}",
    )

    @subscriber
    async def on_record(body: bytes, msg: KafkaMessage) -> None:  # noqa: ARG001 - body is decoded by the dispatcher
        await dispatcher.dispatch(inbound_from(msg.raw_message))  # type: ignore[arg-type]
