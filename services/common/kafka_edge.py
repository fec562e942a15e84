"""The FastStream edge: the only place where FastStream meets the shared
consumer plumbing. Handlers and the Dispatcher never import a broker library.

- `FastStreamPublisher` publishes `Outbound` messages (CloudEvents structured
  mode, ``content-type: application/cloudevents+json`` and ``ce_type``, keyed by
  certificate id) through the broker's idempotent producer (acks=all): every
  message is sent first and the acknowledgements awaited together (inside a
  batch, at the end of the batch: `PENDING_ACKS`). `send_all` hands each record
  straight to the broker's aiokafka producer (`raw_producer`), past FastStream's
  per-publish machinery (its middlewares: no ``certrail_faststream_published_*``
  series), and falls back to ``broker.publish`` when there is no connected one
  (FastStream's TestKafkaBroker).
- Consuming is not FastStream's: every service consumes with the runtime's keyed loop
  (services/common/runtime/, decision 0017); FastStream keeps the application lifecycle, the
  producer and the in-memory broker of the component tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence

from aiokafka import AIOKafkaProducer
from faststream._internal.parser import DefaultCodec
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.kafka.publisher.producer import AioKafkaFastProducerImpl
from faststream.kafka.publisher.state import RealProducer
from prometheus_client import CollectorRegistry

from services.common.consumer import PENDING_ACKS, Outbound
from services.common.contracts.envelope import TYPE_HEADER
from services.common.kafka_config import faststream_broker_kwargs
from services.common.metrics import PublisherMetrics
from services.common.settings import KafkaSettings

log = logging.getLogger(__name__)


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
        await self.send_records([(message.topic, message.key, message.value(), message.headers()) for message in messages])

    async def send_records(self, records: Sequence[tuple[str, str | None, bytes, dict[str, str]]]) -> None:
        """(topic, key, value, headers) records already encoded (a stored outcome re-published byte for byte, an
        outbox's rows, the gateway's answers) through `send_all`, each counted by its ``ce_type`` header."""
        await send_all(self._broker, records)
        if self._metrics is not None:
            for _, _, _, headers in records:
                self._metrics.published_one(headers.get(TYPE_HEADER) or "unknown")


async def send_all(broker: KafkaBroker, records: Sequence[tuple[str, str | None, bytes, dict[str, str]]]) -> None:
    """Sends (topic, key, value, headers) records in order without waiting for each; then awaits their
    acknowledgements together, or, inside `Dispatcher.dispatch_batch`, leaves them to the batch.

    With a connected broker each record goes to its aiokafka producer directly (`raw_producer`): the
    same key, value and headers as ``broker.publish`` sends, less FastStream's random ``correlation_id``
    header (nothing reads it; the issuer's own producer never sent one either)."""
    acks: list[Awaitable[object]] = []
    producer = raw_producer(broker)
    for topic, key, value, headers in records:
        key_bytes = key.encode("utf-8") if key is not None else None
        if producer is not None:
            # FastStream's header order: content-type first ("" when not given), then the others
            wire = {"content-type": "", **headers}
            acks.append(await producer.send(topic, value, key=key_bytes, headers=[(k, v.encode()) for k, v in wire.items()]))
            continue
        ack = await broker.publish(value, topic=topic, key=key_bytes, headers=headers, no_confirm=True)
        if isinstance(ack, asyncio.Future):  # FastStream's test broker delivers at once and returns None
            acks.append(ack)
    pending = PENDING_ACKS.get()
    if pending is not None:
        for sent in acks:
            pending.add(sent)
    elif acks:
        await asyncio.gather(*acks)


def raw_producer(broker: KafkaBroker) -> AIOKafkaProducer | None:
    """The started aiokafka producer behind ``broker``, or None: not connected (yet, or any more),
    consumer-only, FastStream's TestKafkaBroker (its fake producer delivers in memory), or a broker
    with a codec of its own (FastStream's DefaultCodec sends bytes as they are; another might not).

    Reads FastStream internals, written for faststream 0.7.8 (pyproject pins ``>=0.7.8,<0.8``): the
    broker's ``_producer`` property (``config.producer``, an ``AioKafkaFastProducerImpl``), that
    object's ``codec`` and ``_producer`` (a ``RealProducer`` while connected, else an
    ``EmptyProducerState``) and ``RealProducer.producer``. An attribute gone or renamed gives None
    (`send_all` then publishes through ``broker.publish`` as before); a class moved fails this module's
    import, loudly. Records sent this way skip the broker's middlewares (make_broker's only one is the
    Prometheus middleware)."""
    fast = getattr(broker, "_producer", None)
    if not isinstance(fast, AioKafkaFastProducerImpl) or not isinstance(getattr(fast, "codec", None), DefaultCodec):
        return None
    state = getattr(fast, "_producer", None)
    return state.producer if isinstance(state, RealProducer) else None
