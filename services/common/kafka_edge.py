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
- `subscribe` registers one FastStream *batch* subscriber: each fetched batch
  (up to ``max_records``) becomes `InboundRecord`s handed to
  `Dispatcher.dispatch_batch`. Offsets are committed once per batch, after
  every record was handled, ignored or dead-lettered and everything published
  was acknowledged (AckPolicy.NACK_ON_ERROR with auto-commit off: the ack
  commits the consumer's position, which is the end of the batch); an
  unexpected exception leaves the batch uncommitted and FastStream seeks each
  partition back to the batch's first record (NACK), so it is retried, never lost.
  Such a failure is transient by construction (the Dispatcher dead-letters poison records
  itself): before the batch is handed back the edge waits a capped, doubling backoff, and
  tells the progress tracker which record failed, so /health and
  ``certrail_consumer_stalled`` show a consumer that keeps failing on the same offset;
  ``certrail_consumer_lag_records`` is set from each batch (when it starts, and when it ends, success
  or not), and the batch's first record per partition is what
  ``certrail_consumer_oldest_unprocessed_age_seconds`` and ``certrail_consumer_no_progress_seconds``
  measure until the batch is handled (services/common/consumer_positions.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from faststream import AckPolicy
from faststream._internal.parser import DefaultCodec
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.kafka.publisher.producer import AioKafkaFastProducerImpl
from faststream.kafka.publisher.state import RealProducer
from prometheus_client import CollectorRegistry

from services.common.consumer import PENDING_ACKS, Dispatcher, InboundRecord, Outbound, TransientFailure
from services.common.contracts.envelope import TYPE_HEADER
from services.common.kafka_config import faststream_broker_kwargs, fetch_tuning
from services.common.metrics import PublisherMetrics
from services.common.progress import FAILED, TRANSIENT, ProgressTracker, describe, retry_delay
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
    progress: ProgressTracker | None = None,
    consumer_name: str | None = None,
    retry_max_s: float = 30.0,
) -> None:
    """Route ``topics`` (or every topic matching ``pattern``) to ``dispatcher``, a fetched batch
    of up to ``max_records`` at a time (``batch_timeout_ms``: how long one fetch waits); failures
    and lag are reported to ``progress`` under ``consumer_name`` (default: the topics or pattern)."""
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
        **fetch_tuning(settings),
        title=f"{group_id}:{pattern or ','.join(topics)}",
    )

    name = consumer_name or pattern or ",".join(topics)
    if progress is not None:
        progress.register(name, assignment=lambda: _assignment(subscriber))

    @subscriber
    async def on_batch(body: Any, msg: KafkaMessage) -> None:  # noqa: ARG001 - the bodies are decoded by the dispatcher
        records = [inbound_from(record) for record in _records_of(msg.raw_message)]
        if progress is not None:
            _started(progress, name, subscriber, records)
        try:
            await dispatcher.dispatch_batch(records)
        except Exception as exc:
            if progress is not None and records:
                await _failed(progress, name, records, exc, retry_max_s)
                _report_lag(progress, name, subscriber, records, done=False)
            raise  # NACK: the batch is fetched again
        if progress is not None:
            for (topic, partition), (_, last) in _spans(records).items():
                progress.progressed(name, topic, partition, last + 1)
            _report_lag(progress, name, subscriber, records, done=True)


async def _failed(progress: ProgressTracker, name: str, records: list[InboundRecord], exc: Exception, retry_max_s: float) -> None:
    failed = exc.record if isinstance(exc, TransientFailure) and exc.record is not None else records[0]
    cause = exc.cause if isinstance(exc, TransientFailure) else exc
    kind = TRANSIENT if isinstance(exc, TransientFailure) else FAILED
    count = progress.failed(name, failed.topic, failed.partition, failed.offset, kind, describe(cause))
    delay = retry_delay(count, max_s=retry_max_s)
    log.warning("%s: %s/%d@%d failed (%s), %d times in a row; the batch is retried in %.1fs", name, failed.topic,
                failed.partition, failed.offset, describe(cause), count, delay)
    await asyncio.sleep(delay)


def _started(progress: ProgressTracker, name: str, subscriber: Any, records: list[InboundRecord]) -> None:
    """A batch is about to be handled: its first record per partition waits (age, no progress) until it is."""
    seen: set[tuple[str, int]] = set()
    for record in records:
        if (record.topic, record.partition) not in seen:
            seen.add((record.topic, record.partition))
            progress.fetched(name, record.topic, record.partition, record.offset, record.timestamp_ms)
    _report_lag(progress, name, subscriber, records, done=False)


def _assignment(subscriber: Any) -> Any:
    """The partitions the subscriber's consumer holds now (None before it runs, or on the test broker)."""
    consumer = getattr(subscriber, "consumer", None)
    assignment = getattr(consumer, "assignment", None)
    return assignment() if callable(assignment) else None


def _spans(records: Sequence[InboundRecord]) -> dict[tuple[str, int], tuple[int, int]]:
    """(first, last) offset of each partition in a batch."""
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for record in records:
        first, last = spans.get((record.topic, record.partition), (record.offset, record.offset))
        spans[(record.topic, record.partition)] = (min(first, record.offset), max(last, record.offset))
    return spans


def _report_lag(progress: ProgressTracker, name: str, subscriber: Any, records: list[InboundRecord], *, done: bool) -> None:
    """Records behind each partition's end: from the batch's end when it was handled, from its start when not."""
    consumer = getattr(subscriber, "consumer", None)
    highwater = getattr(consumer, "highwater", None)
    if highwater is None:  # FastStream's test broker has no real consumer
        return
    for (topic, partition), (first, last) in _spans(records).items():
        end = highwater(TopicPartition(topic, partition))
        if end is not None:
            progress.set_lag(name, topic, partition, end - (last + 1 if done else first))


def _records_of(raw: Any) -> list[ConsumerRecord[Any, Any]]:
    """The records of a batch message (FastStream's test broker nests a published record in a list)."""
    if isinstance(raw, (tuple, list)):
        return [record for item in raw for record in _records_of(item)]
    return [raw]
