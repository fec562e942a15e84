"""``certrail audit export``: the audit log as JSON Lines or CSV.

One line (row) per stored record, in (topic, partition, offset) order, with
everything needed to re-verify the chains elsewhere (chain.py documents the
encoding): the coordinates, the Kafka timestamp, the key, the value and the
headers exactly as stored -- as text when they are UTF-8 (which preserves the
bytes), else base64 -- the envelope columns, the decode error, the
first-occurrence link and the chain columns. Private keys were never stored
(records holding one were stored with the key replaced by its hash), so none
can be exported.

Rows are read without trusting their SQL types (verify_read.py): a value that
is not what its column must hold is exported as null and reported (row id and
column) in the ``unreadable`` list the caller passes; a row whose topic,
partition or offset is unreadable is reported and left out. Nothing a row
holds makes the export crash.
"""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from sqlalchemy import Select
from sqlalchemy.orm import Session

from services.auditor.kafka_reader import epoch_millis_ceil
from services.auditor.records import headers_from_json
from services.auditor.verify_problems import Problem
from services.auditor.verify_read import StoredRow, read_records
from services.common.db_schema import AuditRecord

CSV_COLUMNS = (
    "row_id", "topic", "partition", "offset", "timestamp", "timestamp_ms", "timestamp_type", "key", "key_encoding",
    "value", "value_encoding", "headers", "event_id", "event_type", "source", "subject", "certificate_id", "request_id",
    "correlation_id", "causation_id", "event_time", "decode_error", "decode_reason", "private_keys_removed",
    "original_sha256", "original_size", "first_topic", "first_partition", "first_offset", "prev_offset", "prev_hash",
    "row_hash", "stored_at",
)


def _text_or_b64(data: bytes | None) -> tuple[str | None, str | None]:
    """(text, "utf-8") when ``data`` is UTF-8, else (base64, "base64"); (None, None) for None."""
    if data is None:
        return None, None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value is not None else None


def _timestamp(millis: int | None) -> str | None:
    if millis is None:
        return None
    try:
        return _iso(datetime.fromtimestamp(millis / 1000, UTC))
    except (OverflowError, ValueError, OSError):  # out of datetime's range: timestamp_ms still says what is stored
        return None


def _headers(headers: str | Sequence[tuple[str, bytes]] | None) -> list[dict[str, str]]:
    result = []
    for name, value in headers_from_json(headers) if isinstance(headers, str) or headers is None else headers:
        shown, encoding = _text_or_b64(value)
        result.append({"name": name, "value": shown or "", "encoding": encoding or "utf-8"})
    return result


def row_dict(row: AuditRecord | StoredRow) -> dict[str, Any]:
    """One exported row (the JSON Lines object; CSV flattens the headers to JSON)."""
    key, key_encoding = _text_or_b64(row.key)
    value, value_encoding = _text_or_b64(row.value)
    return {
        "row_id": row.id,
        "topic": row.topic,
        "partition": row.partition,
        "offset": row.offset,
        "timestamp": _timestamp(row.timestamp_ms),
        "timestamp_ms": row.timestamp_ms,
        "timestamp_type": row.timestamp_type,
        "key": key,
        "key_encoding": key_encoding,
        "value": value,
        "value_encoding": value_encoding,
        "headers": _headers(row.headers),
        "event_id": row.event_id,
        "event_type": row.event_type,
        "source": row.source,
        "subject": row.subject,
        "certificate_id": row.certificate_id,
        "request_id": row.request_id,
        "correlation_id": row.correlation_id,
        "causation_id": row.causation_id,
        "event_time": _iso(row.event_time),
        "decode_error": row.decode_error,
        "decode_reason": row.decode_reason,
        "private_keys_removed": row.private_keys_removed,
        "original_sha256": row.original_sha256,
        "original_size": row.original_size,
        "first_topic": row.first_topic,
        "first_partition": row.first_partition,
        "first_offset": row.first_offset,
        "prev_offset": row.prev_offset,
        "prev_hash": row.prev_hash,
        "row_hash": row.row_hash,
        "stored_at": _iso(row.stored_at),
    }


def exported_rows(
    session: Session, *, since: datetime | None = None, topics: list[str] | None = None,
    unreadable: list[Problem] | None = None,
) -> Iterator[dict[str, Any]]:
    """The rows to export (Kafka timestamp at or after ``since``; of ``topics`` when given); the values
    that cannot be read are appended to ``unreadable`` (and exported as null)."""
    table = AuditRecord.__table__

    def only(query: Select[Any]) -> Select[Any]:
        if since is not None:
            query = query.where(table.c.timestamp_ms >= epoch_millis_ceil(since))
        if topics:
            query = query.where(table.c.topic.in_(topics))
        return query

    for row, problems in read_records(session, only):
        if unreadable is not None:
            unreadable.extend(problems)
        if row is not None:
            yield row_dict(row)


def write_jsonl(rows: Iterator[dict[str, Any]], out: TextIO) -> int:
    count = 0
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        count += 1
    return count


def write_csv(rows: Iterator[dict[str, Any]], out: TextIO) -> int:
    writer = csv.DictWriter(out, fieldnames=list(CSV_COLUMNS), extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({**row, "headers": json.dumps(row["headers"], ensure_ascii=False) if row["headers"] else ""})
        count += 1
    return count
