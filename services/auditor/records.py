"""From a Kafka record to what the audit log stores.

`prepare` never raises, whatever the bytes: an undecodable or invalid record
is stored like any other (raw bytes, with the decode error's stable code and
reason), so the offset range stays complete. Before anything is stored, each
PEM private-key block in the value, the key or a header is replaced by its
SHA-256 (services/common/contracts/redaction.py): private keys never reach
the audit log.

The envelope columns (event id, type, source, subject, correlation and
causation ids, time, certificate id, request id) come from the typed message
when the record is valid, else from the JSON attributes of the stored value
(`derive_attributes`, which ``verify`` calls too, to re-derive them).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from services.auditor.chain import ChainContent, content_hash
from services.auditor.inventory import InventoryEvent, inventory_event
from services.auditor.sql import BoundTime, sqlite_text, utc_or_none
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import (
    Catalog,
    DecodeError,
    Envelope,
    TypedEvent,
    decode_typed,
    load_json,
)
from services.common.contracts.errors import ErrorCode
from services.common.contracts.redaction import contains_private_key, redact_private_keys

if TYPE_CHECKING:  # not imported at run time: the prepare worker process needs none of the consumer plumbing
    from services.common.consumer import InboundRecord

log = logging.getLogger(__name__)

Event = TypedEvent | Envelope


class EnvelopeAttributes(NamedTuple):
    """The envelope columns of a stored row (all optional: invalid records have what they have)."""

    event_id: str | None = None
    event_type: str | None = None
    source: str | None = None
    subject: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    event_time: BoundTime | None = None  # text only from prepare_batch(sqlite_times=True)
    certificate_id: str | None = None
    request_id: str | None = None


class RawRecord(NamedTuple):
    """One Kafka record as received (plain values: cheap to send to a worker process)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    timestamp_type: int | None  # 0 CreateTime, 1 LogAppendTime
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def raw_record_of(record: InboundRecord) -> RawRecord:
    """A `RawRecord` from a record as the service runtime hands it over (the live consumer)."""
    return RawRecord(record.topic, record.partition, record.offset, record.timestamp_ms, record.timestamp_type,
                     record.key, record.value, record.headers)


def raw_record(record: Any) -> RawRecord:
    """A `RawRecord` from an aiokafka ``ConsumerRecord`` (replay and verify read Kafka themselves)."""
    return RawRecord(
        record.topic,
        record.partition,
        record.offset,
        record.timestamp,
        record.timestamp_type,
        record.key,
        record.value,
        tuple((k, bytes(v or b"")) for k, v in (record.headers or ())),
    )


class AuditEntry(NamedTuple):
    """One record, ready to be chained and stored (picklable)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    timestamp_type: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    private_keys_removed: int
    original_sha256: str | None
    original_size: int | None
    decode_error: str | None
    decode_reason: str | None
    attributes: EnvelopeAttributes
    type_label: str  # the message type when valid, else "invalid" (a bounded metrics label)
    content_hash: bytes  # chain.content_hash of what is stored
    inventory: InventoryEvent | None  # what the inventory needs, for a valid inventory event


def clean_text(value: object, max_length: int) -> str | None:
    """A string fit for any database column: no NUL, no lone surrogate, at most ``max_length``."""
    if not isinstance(value, str):
        return None
    if value.isascii() and "\x00" not in value:
        return value[:max_length]
    text = value.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    return text[:max_length]


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 timestamp as an aware UTC datetime, or None."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return None
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def envelope_attributes(value: bytes | None) -> EnvelopeAttributes:
    """The envelope columns from the value's JSON (empty when it is not a JSON object)."""
    if not value:
        return EnvelopeAttributes()
    try:
        body: Any = load_json(value, strict=False)  # bounded: the value may be anything (it did not decode)
    except DecodeError:
        return EnvelopeAttributes()
    if not isinstance(body, dict):
        return EnvelopeAttributes()
    data = body.get("data")
    data = data if isinstance(data, dict) else {}
    subject = clean_text(body.get("subject"), 256)
    return EnvelopeAttributes(
        event_id=clean_text(body.get("id"), 128),
        event_type=clean_text(body.get("type"), 200),
        source=clean_text(body.get("source"), 256),
        subject=subject,
        correlation_id=clean_text(body.get("correlationid"), 128),
        causation_id=clean_text(body.get("causationid"), 128),
        event_time=parse_time(body.get("time")),
        certificate_id=clean_text(data.get("certificate_id"), 200) or (subject[:200] if subject else None),
        request_id=clean_text(data.get("request_id"), 128) or clean_text(body.get("correlationid"), 128),
    )


def decode_record(raw: bytes | None, catalog: Catalog) -> tuple[Event | None, DecodeError | None]:
    """The typed message of a valid record, else the `DecodeError` that
    `services.common.contracts.envelope.decode` gives it (the same bounded path: one parse
    for a valid record, never an exception)."""
    try:
        return decode_typed(raw, catalog), None
    except DecodeError as exc:
        return None, exc


def _from_envelope(envelope: Event, sqlite_times: bool = False) -> EnvelopeAttributes:
    fields = envelope.data.__dict__  # the message's field values (pydantic models keep them there)
    certificate_id = fields.get("certificate_id")
    request_id = fields.get("request_id")
    subject = clean_text(envelope.subject, 256)
    event_time = utc_or_none(envelope.time)
    return EnvelopeAttributes(
        event_id=clean_text(envelope.id, 128),
        event_type=envelope.type,
        source=clean_text(envelope.source, 256),
        subject=subject,
        correlation_id=clean_text(envelope.correlationid, 128),
        causation_id=clean_text(envelope.causationid, 128),
        event_time=sqlite_text(event_time) if sqlite_times and event_time is not None else event_time,
        certificate_id=certificate_id if isinstance(certificate_id, str) else (subject[:200] if subject else None),
        request_id=request_id if isinstance(request_id, str) else clean_text(envelope.correlationid, 128),
    )


def derive_attributes(value: bytes | None, envelope: Event | None, *, sqlite_times: bool = False) -> EnvelopeAttributes:
    """The envelope columns of a stored value: from ``envelope`` (its decoded
    message) when it is valid, else from its JSON attributes (``sqlite_times``:
    the event time as SQLite's text, see `prepare`)."""
    attributes = _from_envelope(envelope, sqlite_times) if envelope is not None else envelope_attributes(value)
    if sqlite_times and isinstance(attributes.event_time, datetime):  # an invalid record's parsed time
        attributes = attributes._replace(event_time=sqlite_text(attributes.event_time))
    return attributes


def _redact(raw: bytes | None) -> tuple[bytes | None, int]:
    if raw is None or not contains_private_key(raw):
        return raw, 0
    return redact_private_keys(raw)


INVALID_TYPE = "invalid"


def prepare(record: RawRecord, catalog: Catalog, *, sqlite_times: bool = False) -> AuditEntry:
    """What to store for ``record`` (never raises for any bytes).

    ``sqlite_times``: the entry's times (the event time, the inventory's times) are
    the text SQLite stores (`services.auditor.sql.sqlite_text`; the writer's
    binding passes text through), so that a prepare worker, not the writer,
    formats them: only for a writer on SQLite."""
    value, removed_value = _redact(record.value)
    key, removed_key = _redact(record.key)
    headers = record.headers
    removed_headers = 0
    if any(contains_private_key(v) for _, v in headers):
        redacted_headers = []
        for name, header_value in headers:
            redacted, removed = _redact(header_value)
            redacted_headers.append((name, redacted or b""))
            removed_headers += removed
        headers = tuple(redacted_headers)
    envelope, failure = decode_record(record.value, catalog)
    original = record.value if removed_value else None
    original_sha256 = hashlib.sha256(original).hexdigest() if original is not None else None
    original_size = len(original) if original is not None else None
    removed = removed_value + removed_key + removed_headers
    digest = content_hash(
        ChainContent(
            record.topic,
            record.partition,
            record.offset,
            record.timestamp_ms,
            record.timestamp_type,
            key,
            value,
            headers,
            removed,
            original_sha256,
            original_size,
        )
    )
    return AuditEntry(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp_ms,
        timestamp_type=record.timestamp_type,
        key=key,
        value=value,
        headers=headers,
        private_keys_removed=removed,
        original_sha256=original_sha256,
        original_size=original_size,
        decode_error=str(failure.code) if failure else None,
        decode_reason=clean_text(failure.reason, 2000) if failure else None,
        attributes=derive_attributes(value, envelope, sqlite_times=sqlite_times),
        type_label=envelope.type if envelope is not None else INVALID_TYPE,
        content_hash=digest,
        inventory=inventory_event(envelope, sqlite_times=sqlite_times) if envelope is not None else None,
    )


def content_of(entry: AuditEntry) -> ChainContent:
    """What ``entry``'s content hash covers."""
    return ChainContent(
        entry.topic,
        entry.partition,
        entry.offset,
        entry.timestamp_ms,
        entry.timestamp_type,
        entry.key,
        entry.value,
        entry.headers,
        entry.private_keys_removed,
        entry.original_sha256,
        entry.original_size,
    )


def prepare_batch(records: Sequence[RawRecord], *, sqlite_times: bool = False) -> list[AuditEntry]:
    """`prepare` for a batch, against the full catalog (what a worker process runs)."""
    return [prepare_guarded(record, CATALOG, sqlite_times=sqlite_times) for record in records]


def prepare_guarded(record: RawRecord, catalog: Catalog, *, sqlite_times: bool = False) -> AuditEntry:
    """`prepare`, and should it fail all the same (a bug), the record stored raw (keys redacted)
    with HANDLER_FAILED and the failure's type: one record never stops the audit log."""
    try:
        return prepare(record, catalog, sqlite_times=sqlite_times)
    except Exception as exc:  # noqa: BLE001 - stored as failed, never skipped; the reason names the failure
        log.error("preparing %s/%d@%d failed (%s); storing it raw", record.topic, record.partition, record.offset,
                  type(exc).__name__)
        return _raw_entry(record, f"preparing the record failed: {type(exc).__name__}")


def _raw_entry(record: RawRecord, reason: str) -> AuditEntry:
    value, removed_value = redact_private_keys(record.value) if record.value else (record.value, 0)
    key, removed_key = redact_private_keys(record.key) if record.key else (record.key, 0)
    headers = tuple((name, redact_private_keys(v)[0]) for name, v in record.headers)
    removed = removed_value + removed_key + sum(redact_private_keys(v)[1] for _, v in record.headers)
    original = record.value if removed_value else None
    original_sha256 = hashlib.sha256(original).hexdigest() if original is not None else None
    original_size = len(original) if original is not None else None
    content = ChainContent(record.topic, record.partition, record.offset, record.timestamp_ms, record.timestamp_type,
                           key, value, headers, removed, original_sha256, original_size)
    return AuditEntry(
        topic=record.topic, partition=record.partition, offset=record.offset, timestamp_ms=record.timestamp_ms,
        timestamp_type=record.timestamp_type, key=key, value=value, headers=headers, private_keys_removed=removed,
        original_sha256=original_sha256, original_size=original_size, decode_error=str(ErrorCode.HANDLER_FAILED),
        decode_reason=reason, attributes=EnvelopeAttributes(), type_label=INVALID_TYPE,
        content_hash=content_hash(content), inventory=None,
    )


_HEADERS_CACHE: dict[tuple[tuple[str, bytes], ...], str] = {}


def headers_to_json(headers: tuple[tuple[str, bytes], ...]) -> str | None:
    """The stored form of the headers: JSON ``[[name, base64 value], ...]``, None when there are none."""
    if not headers:
        return None
    cached = _HEADERS_CACHE.get(headers)
    if cached is None:
        cached = json.dumps([[name, base64.b64encode(value).decode("ascii")] for name, value in headers], ensure_ascii=True)
        if len(_HEADERS_CACHE) >= 256:  # the same few header sets repeat; keep the cache small
            _HEADERS_CACHE.clear()
        _HEADERS_CACHE[headers] = cached
    return cached


def headers_from_json(text: str | None) -> tuple[tuple[str, bytes], ...]:
    if not text:
        return ()
    return tuple((str(name), base64.b64decode(value)) for name, value in json.loads(text))
