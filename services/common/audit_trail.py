"""``certrail audit trail ID``: the timeline of a certificate, a request or a serial.

``ID`` is matched as a certificate id, a request id (the requester's, carried as ``data.request_id`` or, failing that, the
``correlationid`` of everything it caused: the ``request_id`` column),
an event id, and -- when it looks like one -- a serial (through the
inventory's serial history). The timeline is every stored record that names
one of the matched certificates or the request, in the order Kafka stamped
them (then the order they were stored), including commands, dead letters,
invalid records and redelivered duplicates (marked).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from services.common.contracts.envelope import DecodeError, load_json
from services.common.contracts.identity import normalise_serial
from services.common.db_schema import AuditRecord
from services.common.inventory_read import certificates_with_serial

_SERIAL_LIKE = re.compile(r"^(0x)?[0-9a-fA-F:]{1,80}$")
_SUMMARY_FIELDS = ("kind", "serial", "status", "reason", "connector", "profile", "requester", "replaces_serial")


@dataclass(frozen=True, slots=True)
class TrailEntry:
    row_id: int
    topic: str
    partition: int
    offset: int
    timestamp: datetime | None
    event_time: datetime | None
    event_type: str | None
    event_id: str | None
    certificate_id: str | None
    request_id: str | None
    decode_error: str | None
    duplicate_of: str | None  # "topic/partition@offset" of the first occurrence
    summary: str


@dataclass(frozen=True, slots=True)
class Trail:
    identifier: str
    certificate_ids: tuple[str, ...]
    entries: tuple[TrailEntry, ...]


def _summary(value: bytes | None, decode_error: str | None) -> str:
    if decode_error:
        return f"invalid: {decode_error}"
    try:  # the row decoded when it was stored; load_json keeps even an older row's bytes bounded
        data: Any = load_json(value or b"{}").get("data", {})
    except (DecodeError, AttributeError):
        return ""
    if not isinstance(data, dict):
        return ""
    parts = [f"{name}={data[name]}" for name in _SUMMARY_FIELDS if isinstance(data.get(name), str | bool)]
    target = data.get("target")
    if isinstance(target, dict):
        parts.append(f"target={target.get('kind')}:{target.get('name')}")
    error = data.get("error")
    if isinstance(error, dict):
        parts.append(f"error={error.get('code')}")
    if isinstance(data.get("code"), str):  # dead letters
        parts.append(f"code={data['code']}")
    return " ".join(parts)


def _serial_matches(session: Session, identifier: str) -> list[str]:
    if not _SERIAL_LIKE.fullmatch(identifier):
        return []
    try:
        serial = normalise_serial(identifier)
    except ValueError:
        return []
    return certificates_with_serial(session, serial)


def trail(session: Session, identifier: str) -> Trail:
    """The timeline of ``identifier`` (empty when nothing matches)."""
    certificate_ids = set(_serial_matches(session, identifier))
    direct = session.scalars(
        select(AuditRecord.certificate_id).where(AuditRecord.certificate_id == identifier).limit(1)
    ).first()
    if direct:
        certificate_ids.add(direct)
    conditions = [
        AuditRecord.request_id == identifier,
        AuditRecord.event_id == identifier,
    ]
    if certificate_ids:
        conditions.append(AuditRecord.certificate_id.in_(sorted(certificate_ids)))
    rows = session.scalars(
        select(AuditRecord).where(or_(*conditions)).order_by(AuditRecord.timestamp_ms, AuditRecord.id)
    ).all()
    return Trail(identifier, tuple(sorted(certificate_ids)), tuple(_entry(row) for row in rows))


def request_trail(session: Session, request_id: str) -> Trail:
    """The timeline of one request id only: the records that carry it as their request id (or
    correlation id), nothing matched as a certificate id, an event id or a serial (the HTTP API's
    ``/v1/requests/{id}/timeline``: a request id is the requester's choice, so it must not reach
    another certificate's records)."""
    rows = session.scalars(
        select(AuditRecord).where(AuditRecord.request_id == request_id).order_by(AuditRecord.timestamp_ms, AuditRecord.id)
    ).all()
    certificate_ids = sorted({row.certificate_id for row in rows if row.certificate_id})
    return Trail(request_id, tuple(certificate_ids), tuple(_entry(row) for row in rows))


def _entry(row: AuditRecord) -> TrailEntry:
    return TrailEntry(
        row_id=row.id,
        topic=row.topic,
        partition=row.partition,
        offset=row.offset,
        timestamp=datetime.fromtimestamp(row.timestamp_ms / 1000, UTC) if row.timestamp_ms is not None else None,
        event_time=row.event_time,
        event_type=row.event_type,
        event_id=row.event_id,
        certificate_id=row.certificate_id,
        request_id=row.request_id or row.correlation_id,
        decode_error=row.decode_error,
        duplicate_of=(f"{row.first_topic}/{row.first_partition}@{row.first_offset}" if row.first_offset is not None else None),
        summary=_summary(row.value, row.decode_error),
    )
