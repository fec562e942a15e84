"""Who changed the configuration: the admin events in the audit log (``certrail audit trail
--connector/--profile/--actor/--token/--requester/--target``), in the order Kafka stamped them.

Admin events (io.certrail.admin.*, docs/audit.md) are keyed ``<subject field>:<name>``
(``connector:ca-one``, ``profile:web``, ``token_id:0123456789ab``, ``requester:ci``; the deployer's
target and binding events ``target:edge``); the subject
filters use that key, the actor is read from each event's data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.db_schema import AuditRecord

ADMIN_TYPE_PREFIX = "io.certrail.admin."
#: the filters, by the subject field of the events they match
SUBJECT_FIELDS = {"connector": "connector", "profile": "profile", "token": "token_id", "requester": "requester",
                  "target": "target"}
MAX_ROWS = 100_000


@dataclass(frozen=True, slots=True)
class AdminEntry:
    row_id: int
    topic: str
    partition: int
    offset: int
    timestamp: datetime | None
    event_type: str
    event_id: str | None
    actor: str | None
    subject: str  # "connector:ca-one", "requester:ci/k1", ...
    outcome: str | None
    change: dict[str, Any]
    error: str | None
    duplicate_of: str | None

    @property
    def summary(self) -> str:
        changed = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in self.change.items())
        text = f"{self.subject} by {self.actor}: {self.outcome}"
        return text + (f" ({changed})" if changed else "") + (f" [{self.error}]" if self.error else "")


def _data(value: bytes | None) -> dict[str, Any]:
    try:
        data = json.loads(value or b"{}").get("data")
    except (ValueError, AttributeError):
        return {}
    return data if isinstance(data, dict) else {}


def _subject(data: dict[str, Any]) -> str:
    if isinstance(data.get("target"), str):  # a target, or a binding of a profile to it
        bound = f" <- profile {data['profile']}" if isinstance(data.get("profile"), str) else ""
        return f"target:{data['target']}{bound}"
    for field in ("connector", "profile", "token_id", "requester"):
        if isinstance(data.get(field), str):
            extra = f"/{data['key_id']}" if field == "requester" and isinstance(data.get("key_id"), str) else ""
            return f"{field}:{data[field]}{extra}"
    return "-"


def admin_trail(session: Session, *, actor: str | None = None, **subjects: str | None) -> list[AdminEntry]:
    """The admin events matching every filter given: ``actor`` and the subjects of SUBJECT_FIELDS."""
    unknown = set(subjects) - set(SUBJECT_FIELDS)
    if unknown:
        raise ValueError(f"no such filter: {sorted(unknown)}")
    query = select(AuditRecord).where(AuditRecord.event_type.startswith(ADMIN_TYPE_PREFIX), AuditRecord.decode_error.is_(None))
    for name, value in subjects.items():
        if value is not None:
            query = query.where(AuditRecord.key == f"{SUBJECT_FIELDS[name]}:{value}".encode())
    rows = session.scalars(query.order_by(AuditRecord.timestamp_ms, AuditRecord.id).limit(MAX_ROWS))
    entries = []
    for row in rows:
        data = _data(row.value)
        if actor is not None and data.get("actor") != actor:
            continue
        error = data.get("error") if isinstance(data.get("error"), dict) else None
        change = data.get("change")
        first = f"{row.first_topic}/{row.first_partition}@{row.first_offset}" if row.first_topic is not None else None
        entries.append(AdminEntry(
            row_id=row.id, topic=row.topic, partition=row.partition, offset=row.offset,
            timestamp=datetime.fromtimestamp(row.timestamp_ms / 1000, UTC) if row.timestamp_ms is not None else None,
            event_type=str(row.event_type), event_id=row.event_id, actor=data.get("actor"), subject=_subject(data),
            outcome=data.get("outcome"), change=change if isinstance(change, dict) else {},
            error=f"{error.get('code')}: {error.get('message')}" if error else None, duplicate_of=first))
    return entries
