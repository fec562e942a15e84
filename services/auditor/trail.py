"""Timelines from the audit log: ``certrail audit trail ID`` (`trail`) and the auditor's internal API
(`certificate_trail`, `request_trail`: ``/internal/v1/trails/...``, decision 0020).

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
from datetime import UTC, datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from services.auditor.inventory_read import certificates_with_serial
from services.common.audit_trail import Trail, TrailEntry, _summary
from services.common.contracts.identity import normalise_serial
from services.common.db_schema import AuditRecord

_SERIAL_LIKE = re.compile(r"^(0x)?[0-9a-fA-F:]{1,80}$")


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


def request_trail(session: Session, request_id: str, *, limit: int | None = None, offset: int = 0) -> Trail:
    """The timeline of one request id only: the records that carry it as their request id (or
    correlation id), nothing matched as a certificate id, an event id or a serial (the HTTP API's
    ``/v1/requests/{id}/timeline``: a request id is the requester's choice, so it must not reach
    another certificate's records). ``limit``/``offset`` page the entries; the certificate ids are
    every one the request's records name."""
    rows = session.scalars(
        select(AuditRecord).where(AuditRecord.request_id == request_id).order_by(AuditRecord.timestamp_ms, AuditRecord.id)
        .offset(offset).limit(limit)
    ).all()
    certificate_ids = session.scalars(
        select(AuditRecord.certificate_id).distinct()
        .where(AuditRecord.request_id == request_id, AuditRecord.certificate_id.is_not(None))
    ).all()
    return Trail(request_id, tuple(sorted(c for c in certificate_ids if c)), tuple(_entry(row) for row in rows))


def certificate_trail(session: Session, certificate_id: str, *, limit: int | None = None, offset: int = 0) -> Trail:
    """Every record naming ``certificate_id`` as its certificate (nothing matched as a request id, an
    event id or a serial), in the order Kafka stamped them; ``limit``/``offset`` page them."""
    rows = session.scalars(
        select(AuditRecord).where(AuditRecord.certificate_id == certificate_id)
        .order_by(AuditRecord.timestamp_ms, AuditRecord.id).offset(offset).limit(limit)
    ).all()
    return Trail(certificate_id, (certificate_id,) if rows or offset else (), tuple(_entry(row) for row in rows))


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
