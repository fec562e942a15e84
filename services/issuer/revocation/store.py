"""The issuer's ``issuer_revocation_checks`` table (services/common/db_schema.py): revocations to confirm on the
CA's CRL. A check is written with the revocation's outcome (`record_revoked_in`, the same transaction), so a
revocation recorded is a revocation checked, across restarts; its outcome records are stored before they are
published (`settle`) and re-published until acknowledged (`unpublished`, `mark_published`), with the same bytes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import DecodeError, decode
from services.common.contracts.events import CertificateIssued
from services.common.db import read_session, write_session
from services.common.db_schema import IssuerOperation, IssuerRevocationCheck
from services.issuer import state
from services.issuer.state import OpState, StoredRecord

_TABLE: Table = IssuerRevocationCheck.__table__  # type: ignore[assignment]


class CheckState(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    UNCONFIRMED = "unconfirmed"


@dataclass(frozen=True)
class Check:
    check_id: str  # the CertificateRevoked event's id: the confirmation events' causation
    certificate_id: str
    serial: str
    connector: str
    reason: str
    request_id: str
    correlation_id: str | None
    topic: str
    partition: int
    state: str
    distribution_point: str | None
    checks: int
    last_cause: str | None
    last_error: str | None
    crl_number: str | None
    crl_this_update: datetime | None
    listed_reason: str | None
    next_check_at: datetime
    deadline_at: datetime
    outcome: str | None
    created_at: datetime
    updated_at: datetime
    published_at: datetime | None

    def records(self) -> tuple[StoredRecord, ...]:
        return state.decode_outcome(self.outcome)


_NAMES = tuple(c.name for c in _TABLE.columns)


def _check(row: Any) -> Check:
    return Check(**{name: row[name] for name in _NAMES})


def new_check(*, check_id: str, certificate_id: str, serial: str, connector: str, reason: str, request_id: str,
              correlation_id: str | None, topic: str, partition: int, now: datetime, first_check_at: datetime,
              deadline_at: datetime) -> Check:
    return Check(check_id, certificate_id, serial, connector, reason, request_id, correlation_id, topic, partition,
                 CheckState.PENDING.value, None, 0, None, None, None, None, None, first_check_at, deadline_at, None, now,
                 now, None)


_INSERT_NEW = {
    "sqlite": sqlite.insert(_TABLE).on_conflict_do_nothing(index_elements=[_TABLE.c.check_id]),
    "postgresql": postgresql.insert(_TABLE).on_conflict_do_nothing(index_elements=[_TABLE.c.check_id]),
}


def record_revoked_in(conn: Connection, op_key: str, records: Sequence[StoredRecord], now: datetime, *, serial: str,
                      check: Check | None) -> None:
    """The revocation's outcome (`state.record_outcome_in`) and, in the same transaction, its check (kept as it is
    when it exists: a step run again after its group failed)."""
    state.record_outcome_in(conn, op_key, OpState.REVOKED, records, now, serial=serial)
    if check is not None:
        conn.execute(_INSERT_NEW[conn.dialect.name], {name: getattr(check, name) for name in _NAMES})


def pending_checks(engine: Engine, partitions: Iterable[tuple[str, int]], limit: int = 1000) -> list[Check]:
    """Pending checks of revocations commanded on these partitions, soonest due first."""
    wanted = set(partitions)
    if not wanted:
        return []
    with read_session(engine) as session:
        rows = session.connection().execute(
            select(_TABLE).where(_TABLE.c.state == CheckState.PENDING.value,
                                 _TABLE.c.topic.in_(sorted({t for t, _ in wanted})))
            .order_by(_TABLE.c.next_check_at).limit(limit)
        ).mappings().all()
    return [_check(r) for r in rows if (r["topic"], r["partition"]) in wanted]


def save_progress(engine: Engine, check_id: str, now: datetime, **values: Any) -> None:
    """A check that goes on: what it saw last and when to look again."""
    with write_session(engine) as session:
        session.execute(update(_TABLE).where(_TABLE.c.check_id == check_id, _TABLE.c.state == CheckState.PENDING.value)
                        .values(updated_at=now, **values))


def settle(engine: Engine, check_id: str, outcome: CheckState, records: Sequence[StoredRecord], now: datetime,
           **values: Any) -> bool:
    """Store the outcome and its records before they are published; False: it was settled already (elsewhere)."""
    with write_session(engine) as session:
        result = session.execute(
            update(_TABLE).where(_TABLE.c.check_id == check_id, _TABLE.c.state == CheckState.PENDING.value)
            .values(state=outcome.value, outcome=state.encode_outcome(records), updated_at=now, **values))
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def unpublished(engine: Engine, partitions: Iterable[tuple[str, int]], limit: int = 100) -> list[Check]:
    """Settled checks whose records were not acknowledged yet (a crash between storing and publishing)."""
    wanted = set(partitions)
    if not wanted:
        return []
    with read_session(engine) as session:
        rows = session.connection().execute(
            select(_TABLE).where(_TABLE.c.state != CheckState.PENDING.value, _TABLE.c.published_at.is_(None))
            .order_by(_TABLE.c.updated_at).limit(limit)
        ).mappings().all()
    return [_check(r) for r in rows if (r["topic"], r["partition"]) in wanted]


def mark_published(engine: Engine, check_ids: Sequence[str], now: datetime) -> None:
    if not check_ids:
        return
    with write_session(engine) as session:
        session.execute(update(_TABLE).where(_TABLE.c.check_id.in_(list(check_ids))).values(published_at=now))


def load(engine: Engine, check_id: str) -> Check | None:
    with read_session(engine) as session:
        row = session.connection().execute(select(_TABLE).where(_TABLE.c.check_id == check_id)).mappings().first()
    return None if row is None else _check(row)


def pending_by_connector(engine: Engine) -> dict[str, int]:
    with read_session(engine) as session:
        rows = session.execute(select(_TABLE.c.connector, func.count()).where(_TABLE.c.state == CheckState.PENDING.value)
                               .group_by(_TABLE.c.connector)).all()
    return {str(connector): int(str(n)) for connector, n in rows}


def issued_certificate_pem(engine: Engine, certificate_id: str, serial: str) -> str | None:
    """The certificate the issuer announced for ``serial`` (its stored CertificateIssued), or None."""
    ops: Table = IssuerOperation.__table__  # type: ignore[assignment]
    with read_session(engine) as session:
        outcomes: Sequence[str | None] = session.execute(
            select(ops.c.outcome).where(ops.c.certificate_id == certificate_id, ops.c.serial == serial,
                                        ops.c.state == OpState.ISSUED.value)).scalars().all()
    for outcome in outcomes:
        for record in state.decode_outcome(outcome):
            try:
                envelope = decode(record.value, CATALOG)
            except DecodeError:
                continue
            if isinstance(envelope.data, CertificateIssued) and envelope.data.serial == serial:
                return envelope.data.certificate
    return None


def error_json(code: str, message: str) -> str:
    return json.dumps({"code": code, "message": message})
