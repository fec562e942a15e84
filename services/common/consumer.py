"""Consumer plumbing every service shares, free of any broker library (only
services/common/failures.py names Kafka's error type, to classify failures).

A record becomes an `InboundRecord`; `Dispatcher.dispatch` decodes it and:

- hands a message of a type the service handles to its handler and publishes
  what the handler returns (`Outbound` messages) — HANDLED;
- ignores a well-formed message of a known type the service does not handle
  — IGNORED;
- dead-letters a well-formed message that arrived on a topic its type's producer does not
  own (`Topics.may_arrive_on`: a CertificateIssued only from the issuer's events topic, a
  command only from a command topic, ...) with PRODUCER_NOT_ALLOWED, before any handler
  sees it (decision 0016) — DEAD_LETTERED;
- sends anything undecodable or invalid (not JSON, not a CloudEvent, unknown
  type, schema violation, oversize, a private key inside), and anything a
  handler refuses with `InvalidMessage`, to the dead-letter topic with the
  reason, the source coordinates and the original bytes (private-key blocks
  replaced by their hash) — DEAD_LETTERED. Nothing is dropped silently.

A handler's other failures are told apart (services/common/failures.py): a transient
one (database, Kafka, network) propagates, and the edge leaves the record uncommitted and
retries it after a backoff, for as long as it takes (never dead-lettered; the progress
tracker, services/common/progress.py, reports the consumer stalled meanwhile); anything
else is retried in place up to ``handler_attempts`` times (setting, default 3), then the
record is dead-lettered with HANDLER_FAILED (the reason names the exception's type and
message) and the batch goes on.

`Dispatcher.dispatch_batch` handles a fetched batch: records with the same
(topic, partition, key) -- one certificate -- one after the other in offset
order, the others concurrently; what the handlers publish is sent without
waiting (`PENDING_ACKS`), and the broker's acknowledgements are awaited
together before it returns, so the edge commits the batch's offsets only after
every resulting record is acknowledged. A failure leaves the batch
uncommitted (redelivered; the handlers are idempotent) and stops the rest of
that certificate's records in the batch, so its effects never run out of order; it is
raised as `TransientFailure` naming the record that failed.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import heapq
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from services.common.contracts.deadletter import DeadLetter, SourceRecord
from services.common.contracts.envelope import (
    MAX_MESSAGE_BYTES,
    TYPE_HEADER,
    Catalog,
    DecodeError,
    Envelope,
    Message,
    decode,
    encode,
    make_event,
    record_headers,
)
from services.common.contracts.errors import ErrorCode
from services.common.contracts.identity import message_id
from services.common.contracts.redaction import redact_private_keys
from services.common.contracts.topics import COMMANDS_CHANNEL, Topics
from services.common.failures import is_transient
from services.common.progress import describe, retry_delay

#: the largest original payload copied into a dead-letter record (base64 grows it by 4/3)
MAX_DEAD_LETTER_ORIGINAL = MAX_MESSAGE_BYTES // 2

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One Kafka record as the consumer received it."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_type: int | None = None  # 0 CreateTime, 1 LogAppendTime (the auditor stores it)


@dataclass(frozen=True)
class Outbound:
    """A message to publish: where, under which key, and the event."""

    topic: str
    event: Envelope
    key: str | None = None

    def value(self) -> bytes:
        """The record's bytes, encoded once (the gateway stores them with the request, then publishes them)."""
        return self._value

    @functools.cached_property
    def _value(self) -> bytes:
        return encode(self.event)

    def headers(self) -> dict[str, str]:
        return record_headers(self.event.type)


class Publisher(Protocol):
    """Publishes messages idempotently (acks=all); returns once all are acknowledged, or,
    inside `Dispatcher.dispatch_batch`, once all are sent (their acknowledgements are added
    to `PENDING_ACKS` and awaited at the end of the batch)."""

    async def publish(self, messages: Sequence[Outbound]) -> None: ...


class PendingAcks:
    """The broker acknowledgements of the records sent while one batch is handled."""

    def __init__(self) -> None:
        self._pending: list[Awaitable[object]] = []

    def add(self, ack: Awaitable[object]) -> None:
        self._pending.append(ack)

    async def wait(self) -> None:
        """Waits for every acknowledgement; raises the first failure (after all have settled)."""
        pending, self._pending = self._pending, []
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


#: set by `Dispatcher.dispatch_batch`: a publisher sends and adds the acknowledgements here
#: instead of awaiting them one message at a time
PENDING_ACKS: ContextVar[PendingAcks | None] = ContextVar("certrail_pending_acks", default=None)


def header(record: InboundRecord, name: str) -> str | None:
    """The first value of header ``name`` of ``record`` as text (None when absent or not UTF-8)."""
    for key, value in record.headers:
        if key == name:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return None
    return None


class InvalidMessage(Exception):
    """Raised by a handler for a message that can never be processed: it is
    dead-lettered with this code and reason instead of being retried."""

    def __init__(self, reason: str, code: ErrorCode = ErrorCode.HANDLER_REJECTED) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class TransientFailure(Exception):
    """A batch could not be finished because of infrastructure trouble (the cause): it stays
    uncommitted and is retried. ``record`` is the record that failed (None: an acknowledgement)."""

    def __init__(self, record: InboundRecord | None, cause: BaseException) -> None:
        super().__init__(describe(cause))
        self.record = record
        self.cause = cause


Handler = Callable[[Envelope], Awaitable[Sequence[Outbound]]]

#: told of each failed attempt of a handler that is not transient (metrics and progress)
FailureHook = Callable[[InboundRecord, BaseException], None]

#: the record being handled, for a handler that needs its raw bytes (the gateway verifies a
#: requester's signature over the ``data`` object exactly as it was sent)
CURRENT_RECORD: ContextVar[InboundRecord | None] = ContextVar("certrail_current_record", default=None)


class Outcome(StrEnum):
    HANDLED = "handled"
    IGNORED = "ignored"
    DEAD_LETTERED = "dead_lettered"


class DispatchObserver(Protocol):
    """Receives one call per dispatched record (metrics)."""

    def observed(self, record: InboundRecord, message_type: str, outcome: Outcome, code: ErrorCode | None) -> None: ...


@dataclass
class Dispatcher:
    """Decodes records and routes them to handlers or the dead-letter topic."""

    service: str
    catalog: Catalog
    topics: Topics
    publisher: Publisher
    handlers: Mapping[type[Message], Handler] = field(default_factory=dict)
    observer: DispatchObserver | None = None
    clock: Clock = utc_now
    #: ignore a record whose ``ce_type`` header names a known type without a handler, unparsed
    #: (for a consumer of certrail's own topics, where most records are not for it: the deployer)
    skip_by_type_header: bool = False
    #: how many certificates (key chains) of one batch are handled at the same time
    batch_concurrency: int = 64
    #: attempts of a handler that fails with a non-transient error before the record is dead-lettered
    handler_attempts: int = 3
    #: the first pause between two such attempts (doubling)
    handler_retry_initial_s: float = 0.1
    transient: Callable[[BaseException], bool] = is_transient
    on_failure: FailureHook | None = None

    async def dispatch_batch(self, records: Sequence[InboundRecord]) -> list[Outcome]:
        """Handles ``records`` (one fetched batch) and returns once everything they published is
        acknowledged; raises if any record failed (the caller leaves the batch uncommitted)."""
        chains = key_chains(records)
        outcomes: list[Outcome | None] = [None] * len(records)
        slots = asyncio.Semaphore(self.batch_concurrency)

        async def run(indexes: list[int]) -> None:
            async with slots:
                for index in indexes:  # one certificate's records in offset order; a failure stops the chain
                    try:
                        outcomes[index] = await self.dispatch(records[index])
                    except Exception as exc:  # transient: the batch is retried (dispatch dead-letters the rest)
                        raise TransientFailure(records[index], exc) from exc

        acks = PendingAcks()
        token = PENDING_ACKS.set(acks)
        try:
            results = await asyncio.gather(*(run(indexes) for indexes in chains), return_exceptions=True)
        finally:
            PENDING_ACKS.reset(token)
        ack_failure: Exception | None = None
        try:
            await acks.wait()
        except Exception as exc:  # noqa: BLE001 - raised below, after a record's own failure if there was one
            ack_failure = exc
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if ack_failure is not None:
            raise TransientFailure(None, ack_failure) from ack_failure
        return [outcome for outcome in outcomes if outcome is not None]

    async def dispatch(self, record: InboundRecord) -> Outcome:
        if self.skip_by_type_header:
            declared = header(record, TYPE_HEADER)
            if declared is not None and self._ignorable(declared, record.topic):
                self._observe(record, declared, Outcome.IGNORED, None)
                return Outcome.IGNORED
        try:
            envelope = decode(record.value, self.catalog)
        except DecodeError as exc:
            await self._dead_letter(record, exc.code, exc.reason)
            self._observe(record, "invalid", Outcome.DEAD_LETTERED, exc.code)
            return Outcome.DEAD_LETTERED
        misrouted = producer_violation(self.topics, type(envelope.data), record.topic)
        if misrouted is not None:
            await self._dead_letter(record, ErrorCode.PRODUCER_NOT_ALLOWED, misrouted)
            self._observe(record, envelope.type, Outcome.DEAD_LETTERED, ErrorCode.PRODUCER_NOT_ALLOWED)
            return Outcome.DEAD_LETTERED
        handler = self.handlers.get(type(envelope.data))
        if handler is None:
            self._observe(record, envelope.type, Outcome.IGNORED, None)
            return Outcome.IGNORED
        attempts = 0
        while True:
            token = CURRENT_RECORD.set(record)
            try:
                outbound = await handler(envelope)
                if outbound:
                    await self.publisher.publish(outbound)
                break
            except InvalidMessage as exc:
                await self._dead_letter(record, exc.code, exc.reason)
                self._observe(record, envelope.type, Outcome.DEAD_LETTERED, exc.code)
                return Outcome.DEAD_LETTERED
            except Exception as exc:
                if self.transient(exc):
                    raise  # infrastructure: the edge retries the batch, never dead-letters it
                attempts += 1
                if self.on_failure is not None:
                    self.on_failure(record, exc)
                if attempts >= self.handler_attempts:
                    reason = f"the {self.service} handler failed {attempts} times: {describe(exc)}"
                    await self._dead_letter(record, ErrorCode.HANDLER_FAILED, reason)
                    self._observe(record, envelope.type, Outcome.DEAD_LETTERED, ErrorCode.HANDLER_FAILED)
                    return Outcome.DEAD_LETTERED
            finally:
                CURRENT_RECORD.reset(token)
            await asyncio.sleep(retry_delay(attempts, initial_s=self.handler_retry_initial_s))
        self._observe(record, envelope.type, Outcome.HANDLED, None)
        return Outcome.HANDLED

    def _ignorable(self, message_type: str, topic: str) -> bool:
        """A known type without a handler that may come from ``topic`` (one that may not is decoded
        and dead-lettered, so a forged record is seen)."""
        cls = self.catalog.get(message_type)
        return cls is not None and cls not in self.handlers and self.topics.may_arrive_on(cls, topic)

    def _observe(self, record: InboundRecord, message_type: str, outcome: Outcome, code: ErrorCode | None) -> None:
        if self.observer is not None:
            self.observer.observed(record, message_type, outcome, code)

    async def _dead_letter(self, record: InboundRecord, code: ErrorCode, reason: str) -> None:
        await self.publisher.publish([dead_letter_for(record, code, reason, self.service, self.topics, self.clock())])


def key_chains(records: Sequence[InboundRecord]) -> list[list[int]]:
    """The batch's records (their indexes) in chains handled one after the other, the chains concurrently:
    one chain per key, across the topics of the subscription (decision 0017: records of one key from two
    topics are handed over in the order they were produced, so that a certificate's acceptance is applied
    before its issuance arriving in the same batch), each partition's records in offset order, the
    partitions merged by record timestamp; records without a key: one chain per partition."""
    partitions: dict[tuple[str, int, bytes | None], list[int]] = {}
    for index, record in enumerate(records):
        partitions.setdefault((record.topic, record.partition, record.key), []).append(index)
    by_key: dict[bytes, list[list[int]]] = {}
    chains: list[list[int]] = []
    for (_, _, key), indexes in partitions.items():
        if key is None:
            chains.append(indexes)
        else:
            by_key.setdefault(key, []).append(indexes)
    for lists in by_key.values():
        if len(lists) == 1:
            chains.append(lists[0])
        else:  # a stable merge: each partition's own order is kept whatever its timestamps say
            chains.append(list(heapq.merge(*lists, key=lambda i: records[i].timestamp_ms or 0)))
    return chains


def producer_violation(topics: Topics, message_class: type[Message], topic: str) -> str | None:
    """Why a ``message_class`` message may not come from ``topic`` (the reason of a
    PRODUCER_NOT_ALLOWED dead letter), or None when its producer owns that topic."""
    if topics.may_arrive_on(message_class, topic):
        return None
    if message_class.CHANNEL == COMMANDS_CHANNEL:
        expected = topics.commands("x")[:-1] + "<connector>"
    else:
        expected = topics.topic_of(message_class)
    return f"{message_class.TYPE} may only come from {expected}, it arrived on {topic}"


def dead_letter_for(
    record: InboundRecord, code: ErrorCode, reason: str, consumer: str, topics: Topics, now: datetime
) -> Outbound:
    """The dead-letter message for ``record``. Its id is derived from the
    record's coordinates and the consumer, so a redelivered poison record
    yields the same dead-letter id."""
    original = record.value or b""
    redacted, removed = redact_private_keys(original)
    truncated = len(redacted) > MAX_DEAD_LETTER_ORIGINAL
    if truncated:
        redacted = redacted[:MAX_DEAD_LETTER_ORIGINAL]
    key_text = None
    if record.key is not None:
        key_bytes, _ = redact_private_keys(record.key)
        key_text = key_bytes.decode("utf-8", errors="replace")[:1024]
    data = DeadLetter(
        code=code,
        reason=reason[:2000] or str(code),
        consumer=consumer,
        source=SourceRecord(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp_ms,
            key=key_text,
        ),
        original_size=len(original),
        original_sha256=hashlib.sha256(original).hexdigest(),
        original_b64=base64.b64encode(redacted).decode("ascii"),
        private_keys_removed=removed,
        truncated=truncated,
    )
    coordinates = f"{record.topic}/{record.partition}/{record.offset}"
    event = make_event(
        data,
        id=message_id(coordinates, DeadLetter.TYPE, consumer),
        source=f"/certrail/{consumer}",
        time=now,
        subject=key_text[:256] if key_text else None,
    )
    return Outbound(topic=topics.deadletter, event=event, key=key_text)
