"""The FastStream edge: the only place where FastStream meets the shared
consumer plumbing. Handlers and the Dispatcher never import a broker library.

- `FastStreamPublisher` publishes `Outbound` messages (CloudEvents structured
  mode, ``content-type: application/cloudevents+json`` and ``ce_type``, keyed by
  certificate id) through the broker's idempotent producer (acks=all): every
  message is sent first and the acknowledgements awaited together (inside a
  batch, at the end of the batch: `PENDING_ACKS`).
- `subscribe` registers one FastStream *batch* subscriber: each fetched batch
  (up to ``max_records``) becomes `InboundRecord`s handed to
  `Dispatcher.dispatch_batch`. Offsets are committed once per batch, after
  every record was handled, ignored or dead-lettered and everything published
  was acknowledged (AckPolicy.NACK_ON_ERROR with auto-commit off: the ack
  commits the consumer's position, which is the end of the batch); an
  unexpected exception leaves the batch uncommitted and FastStream seeks each
  partition back to the batch's first record (NACK), so it is retried, never lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import CollectorRegistry

from services.common.consumer import PENDING_ACKS, Dispatcher, InboundRecord, Outbound
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
        await send_all(
            self._broker,
            [(message.topic, message.key, message.value(), message.headers()) for message in messages],
        )
        if self._metrics is not None:
            for message in messages:
                self._metrics.published_one(message.event.type)


async def send_all(broker: KafkaBroker, records: Sequence[tuple[str, str | None, bytes, dict[str, str]]]) -> None:
    """Sends (topic, key, value, headers) records in order without waiting for each; then awaits their
    acknowledgements together, or, inside `Dispatcher.dispatch_batch`, leaves them to the batch."""
    acks: list[Awaitable[object]] = []
    for topic, key, value, headers in records:
        ack = await broker.publish(
            value, topic=topic, key=key.encode("utf-8") if key is not None else None, headers=headers, no_confirm=True
        )
        if isinstance(ack, asyncio.Future):  # FastStream's test broker delivers at once and returns None
            acks.append(ack)
    pending = PENDING_ACKS.get()
    if pending is not None:
        for ack in acks:
            pending.add(ack)
    elif acks:
        await asyncio.gather(*acks)


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


async def _raw_body(message: Any) -> Any:
    """FastStream decoder that leaves the bodies alone: the Dispatcher decodes."""
    return message.body


def subscribe(
    broker: KafkaBroker,
    dispatcher: Dispatcher,
    *,
    group_id: str,
    settings: KafkaSettings,
    topics: Sequence[str] = (),
    pattern: str | None = None,
    max_records: int = 500,
    batch_timeout_ms: int = 50,
) -> None:
    """Route ``topics`` (or every topic matching ``pattern``) to ``dispatcher``, a fetched batch
    of up to ``max_records`` at a time (``batch_timeout_ms``: how long one fetch waits)."""
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
        decoder=_raw_body,
        batch=True,
        max_records=max_records,
        batch_timeout_ms=batch_timeout_ms,
        title=f"{group_id}:{pattern or ','.join(topics)}",
    )

    @subscriber
    async def on_batch(body: Any, msg: KafkaMessage) -> None:  # noqa: ARG001 - the bodies are decoded by the dispatcher
        await dispatcher.dispatch_batch([inbound_from(record) for record in _records_of(msg.raw_message)])


def _records_of(raw: Any) -> list[ConsumerRecord[Any, Any]]:
    """The records of a batch message (FastStream's test broker nests a published record in a list)."""
    if isinstance(raw, (tuple, list)):
        return [record for item in raw for record in _records_of(item)]
    return [raw]
