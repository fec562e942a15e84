"""The issuer's ``issuer_duplicates`` table (services/common/db_schema.py): possible duplicate issuances.

A duplicate is written with the issuance's outcome (`record_issued_in`, the same transaction as
`state.record_outcome_in`), so an issuance published as POSSIBLE_DUPLICATE is an issuance tracked, across restarts.
Its resolution is stored with its DuplicateResolved in the issuer's outbox (``issuer_admin_outbox``, published by the
issuer's relay) and, for an extra serial, its revocation check, all in one transaction (`resolve`). A resolution
stored by a version before the outbox, with its records in ``outcome`` and not yet acknowledged, is moved into the
outbox once (`queue_unpublished`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, insert, select, update

from services.common.contracts.duplicates import DuplicateResolved
from services.common.db import read_session, write_session
from services.common.db_schema import IssuerDuplicate, IssuerOperation, IssuerRevocationCheck
from services.issuer import state
from services.issuer.registry.outbox import OUTBOX
from services.issuer.revocation.store import Check
from services.issuer.state import OpState, StoredRecord

_TABLE: Table = IssuerDuplicate.__table__  # type: ignore[assignment]
#: the longest list answered at once
MAX_LIST = 1000


class DuplicateState(StrEnum):
    UNRESOLVED = "unresolved"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class Duplicate:
    issuance_id: str
    certificate_id: str
    request_id: str
    correlation_id: str | None
    detected_event_id: str
    connector: str
    topic: str
    partition: int
    delivered_serial: str
    public_key_sha256: str
    detected_at: datetime
    state: str
    resolution: str | None
    extra_serial: str | None
    note: str | None
    resolved_by: str | None
    resolved_at: datetime | None
    outcome: str | None
    published_at: datetime | None

    def view(self) -> dict[str, Any]:
        """What the internal API answers (no outcome records)."""
        return {"certificate_id": self.certificate_id, "issuance_id": self.issuance_id, "request_id": self.request_id,
                "connector": self.connector, "delivered_serial": self.delivered_serial,
                "public_key_sha256": self.public_key_sha256, "detected_at": self.detected_at.isoformat(),
                "state": self.state, "resolution": self.resolution, "extra_serial": self.extra_serial, "note": self.note,
                "resolved_by": self.resolved_by,
                "resolved_at": None if self.resolved_at is None else self.resolved_at.isoformat()}


_NAMES = tuple(c.name for c in _TABLE.columns)


def _duplicate(row: Any) -> Duplicate:
    return Duplicate(**{name: row[name] for name in _NAMES})


def new_duplicate(*, issuance_id: str, certificate_id: str, request_id: str, correlation_id: str | None,
                  detected_event_id: str, connector: str, delivered_serial: str, public_key_sha256: str,
                  now: datetime, topic: str = "", partition: int = 0) -> Duplicate:
    """A new unresolved duplicate (`record_issued_in` takes topic and partition from the issuance's operation)."""
    return Duplicate(issuance_id, certificate_id, request_id, correlation_id, detected_event_id, connector, topic,
                     partition, delivered_serial, public_key_sha256, now, DuplicateState.UNRESOLVED.value, None, None,
                     None, None, None, None, None)


def record_issued_in(conn: Connection, op_key: str, records: Sequence[StoredRecord], now: datetime, *,
                     duplicate: Duplicate, **outcome: Any) -> None:
    """The issuance's outcome (`state.record_outcome_in`, ISSUED) and, in the same transaction, its duplicate on the
    issuance's command partition (kept as it is when it exists: a step run again after its group failed)."""
    state.record_outcome_in(conn, op_key, OpState.ISSUED, records, now, **outcome)
    exists = conn.execute(select(_TABLE.c.issuance_id).where(_TABLE.c.issuance_id == duplicate.issuance_id)).first()
    if exists is not None:
        return
    ops: Table = IssuerOperation.__table__  # type: ignore[assignment]
    where = conn.execute(select(ops.c.topic, ops.c.partition).where(ops.c.op_key == op_key)).one()
    values = {name: getattr(duplicate, name) for name in _NAMES}
    conn.execute(insert(_TABLE).values({**values, "topic": where.topic, "partition": where.partition}))


def listed(engine: Engine, wanted: DuplicateState | None = None, *, certificate_id: str | None = None,
           limit: int = MAX_LIST) -> list[Duplicate]:
    """Duplicates, oldest first; ``wanted`` None: every state."""
    query = select(_TABLE).order_by(_TABLE.c.detected_at, _TABLE.c.issuance_id).limit(limit)
    if wanted is not None:
        query = query.where(_TABLE.c.state == wanted.value)
    if certificate_id is not None:
        query = query.where(_TABLE.c.certificate_id == certificate_id)
    with read_session(engine) as session:
        rows = session.connection().execute(query).mappings().all()
    return [_duplicate(r) for r in rows]


def load(engine: Engine, issuance_id: str) -> Duplicate | None:
    with read_session(engine) as session:
        row = session.connection().execute(select(_TABLE).where(_TABLE.c.issuance_id == issuance_id)).mappings().first()
    return None if row is None else _duplicate(row)


def resolve(engine: Engine, issuance_id: str, now: datetime, *, resolution: str, extra_serial: str | None,
            note: str | None, actor: str, also: Callable[[Connection], None]) -> bool:
    """Mark the duplicate resolved; ``also(conn)`` runs in the same transaction (its DuplicateResolved into the outbox,
    the extra serial's revocation check). ``published_at`` says when its event was queued. False: it was resolved
    already (by another call), and nothing was written."""
    with write_session(engine) as session:
        conn = session.connection()
        result = conn.execute(
            update(_TABLE).where(_TABLE.c.issuance_id == issuance_id, _TABLE.c.state == DuplicateState.UNRESOLVED.value)
            .values(state=DuplicateState.RESOLVED.value, resolution=resolution, extra_serial=extra_serial, note=note,
                    resolved_by=actor, resolved_at=now, outcome=None, published_at=now))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        also(conn)
        return True


def queue_unpublished(engine: Engine, now: datetime, limit: int = 100) -> int:
    """Resolutions stored before the outbox whose records were never acknowledged: each one's records queued in the
    outbox as they were stored (bytes and event id), created ``now``, and the row marked, in one transaction per
    resolution (of two instances, only the first conditional UPDATE changes the row, so the records are queued
    once). How many were queued."""
    with read_session(engine) as session:
        pending = session.connection().execute(
            select(_TABLE.c.issuance_id, _TABLE.c.outcome)
            .where(_TABLE.c.state == DuplicateState.RESOLVED.value, _TABLE.c.published_at.is_(None))
            .order_by(_TABLE.c.resolved_at).limit(limit)).all()
    queued = 0
    for issuance_id, outcome in pending:
        with write_session(engine) as session:
            conn = session.connection()
            marked = conn.execute(update(_TABLE).where(_TABLE.c.issuance_id == issuance_id, _TABLE.c.published_at.is_(None))
                                  .values(published_at=now))
            if marked.rowcount != 1:  # type: ignore[attr-defined]
                continue
            for record in state.decode_outcome(outcome if isinstance(outcome, str) else None):
                value = record.value.decode("utf-8")
                envelope = json.loads(value)
                OUTBOX.queue_in(conn, event_id=str(envelope["id"]), event_type=str(envelope["type"]),
                                channel=DuplicateResolved.CHANNEL, key=record.key, value=value, created_at=now)
            queued += 1
    return queued


def unresolved_by_connector(engine: Engine) -> dict[str, int]:
    with read_session(engine) as session:
        rows = session.execute(select(_TABLE.c.connector, func.count())
                               .where(_TABLE.c.state == DuplicateState.UNRESOLVED.value)
                               .group_by(_TABLE.c.connector)).all()
    return {str(connector): int(str(n)) for connector, n in rows}


def insert_check_in(conn: Connection, check: Check) -> None:
    """The extra serial's revocation check (services/issuer/revocation/store.py), with the resolution."""
    checks: Table = IssuerRevocationCheck.__table__  # type: ignore[assignment]
    conn.execute(insert(checks).values({f.name: getattr(check, f.name) for f in fields(check)}))
