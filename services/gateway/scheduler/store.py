"""The scheduler's SQL: the snapshot a tick decides on (one read transaction), and the notices
recorded pending, dropped and marked sent in ``gateway_notices``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy import Table, and_, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.common.db_schema import GatewayCertificate, GatewayIssuedSerial, GatewayNotice, GatewayProfile
from services.gateway.policy.profile import ProvisioningProfile
from services.gateway.scheduler.plan import PlannedNotice, Snapshot, StoredNotice, WatchedCertificate
from services.gateway.scheduler.policy import PENDING_GRACE, PENDING_PREFIX, RATE_WINDOW, RENEWAL_DUE

log = logging.getLogger(__name__)

_NOTICES = cast(Table, GatewayNotice.__table__)


def _notice_key(notice: PlannedNotice | StoredNotice) -> tuple[Any, ...]:
    table = _NOTICES
    return (
        table.c.certificate_id == notice.certificate_id,
        table.c.serial == notice.serial,
        table.c.kind == notice.kind,
    )


def delete_dropped(session: Session, dropped: Sequence[StoredNotice]) -> None:
    """Delete pending notices that became moot (only while still as read: same event id)."""
    table = _NOTICES
    for stored in dropped:
        session.execute(delete(table).where(*_notice_key(stored), table.c.event_id == stored.event_id))


def prune_notices(session: Session, cutoff: datetime) -> int:
    """Delete (one statement) the sent notices older than ``cutoff`` whose serial expired before ``cutoff`` (or that
    the gateway no longer knows): no tick or redelivery consults them again. Pending ones are never deleted here."""
    n, s = GatewayNotice, GatewayIssuedSerial
    live_serial = (
        select(s.serial)
        .where(s.certificate_id == n.certificate_id, s.serial == n.serial, s.not_after >= cutoff)
        .exists()
    )
    result = session.execute(
        delete(n).where(n.sent_at < cutoff, n.event_id.not_like(f"{PENDING_PREFIX}%"), ~live_serial)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def mark_sent(session: Session, notices: Sequence[PlannedNotice]) -> None:
    """Strip the pending prefix (one executemany); a row changed meanwhile is left alone."""
    table = _NOTICES
    statement = (
        update(table)
        .where(
            table.c.certificate_id == bindparam("b_certificate_id"),
            table.c.serial == bindparam("b_serial"),
            table.c.kind == bindparam("b_kind"),
            table.c.event_id == bindparam("b_pending"),
        )
        .values(event_id=bindparam("b_event_id"))
    )
    rows = [
        {
            "b_certificate_id": notice.certificate_id,
            "b_serial": notice.serial,
            "b_kind": notice.kind,
            "b_pending": PENDING_PREFIX + notice.event_id,
            "b_event_id": notice.event_id,
        }
        for notice in notices
    ]
    session.connection().execute(statement, rows)


def insert_pending(session: Session, notices: Sequence[PlannedNotice], now: datetime) -> list[PlannedNotice]:
    """INSERT ... ON CONFLICT DO NOTHING for every notice, in one executemany (SQLAlchemy's
    "insertmanyvalues"); returns the notices this call inserted, read from RETURNING (psycopg
    reports no rowcount here, and a conflicting row returns nothing)."""
    if not notices:
        return []
    table = _NOTICES
    dialect = session.get_bind().dialect.name
    keys = [table.c.certificate_id, table.c.serial, table.c.kind]
    if dialect == "postgresql":
        statement: Any = postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)
    elif dialect == "sqlite":
        statement = sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)
    else:
        raise NotImplementedError(f"scheduler: unsupported database {dialect!r}")
    rows = [
        {
            "certificate_id": notice.certificate_id,
            "serial": notice.serial,
            "kind": notice.kind,
            "event_id": PENDING_PREFIX + notice.event_id,
            "sent_at": now,
        }
        for notice in notices
    ]
    inserted = {tuple(row) for row in session.connection().execute(statement.returning(*keys), rows)}
    return [notice for notice in notices if (notice.certificate_id, notice.serial, notice.kind) in inserted]


def load_snapshot(session: Session, now: datetime) -> Snapshot:
    """What a tick decides on, read in one transaction. A certificate's current serial is its one
    active row of ``gateway_issued_serials`` (services/gateway/issued.py keeps at most one)."""
    s = GatewayIssuedSerial
    gc = GatewayCertificate
    n = GatewayNotice
    columns = (
        s.certificate_id, s.serial, s.not_before, s.not_after, s.status,
        func.coalesce(gc.profile, s.profile), func.coalesce(gc.connector, s.connector), gc.requester, s.request_id,
    )
    active = and_(s.status == "active", s.not_before.is_not(None), s.not_after > now)
    rows = session.execute(
        select(*columns).outerjoin(gc, gc.certificate_id == s.certificate_id).where(active).order_by(s.certificate_id)
    )
    certificates = [_watched(row) for row in rows]

    profiles: dict[str, ProvisioningProfile] = {}
    for name, spec in session.execute(select(GatewayProfile.name, GatewayProfile.spec)):
        try:
            profiles[name] = ProvisioningProfile.model_validate_json(spec)
        except ValidationError as exc:
            log.error("provisioning profile %r is stored invalid; its certificates are not scheduled: %s", name, exc)

    of_notice = and_(s.certificate_id == n.certificate_id, s.serial == n.serial)
    sent = {
        (cid, serial, kind)
        for cid, serial, kind in session.execute(select(n.certificate_id, n.serial, n.kind).join(s, of_notice).where(active))
    }

    connector = func.coalesce(gc.connector, s.connector)
    recent = {
        name: count
        for name, count in session.execute(
            select(connector, func.count())
            .select_from(n)
            .outerjoin(gc, gc.certificate_id == n.certificate_id)
            .outerjoin(s, of_notice)
            .where(n.kind == RENEWAL_DUE, n.sent_at > now - RATE_WINDOW)
            .group_by(connector)
        )
        if name is not None
    }

    pending: list[tuple[StoredNotice, WatchedCertificate | None]] = []
    pending_rows = session.execute(
        select(n.certificate_id, n.serial, n.kind, n.event_id, n.sent_at, *columns)
        .outerjoin(s, of_notice)
        .outerjoin(gc, gc.certificate_id == n.certificate_id)
        # a notice is re-published only once it has been pending a while: a younger one may be in
        # flight in another gateway (its publish not yet acknowledged)
        .where(n.event_id.like(PENDING_PREFIX + "%"), n.sent_at <= now - PENDING_GRACE)
        .order_by(n.sent_at, n.certificate_id, n.kind)
    )
    for row in pending_rows:
        stored = StoredNotice(*row[:5])
        cert_row = row[5:]
        current = cert_row[0] is not None and cert_row[4] == "active" and cert_row[1] == stored.serial
        pending.append((stored, _watched(cert_row) if current and cert_row[2] is not None else None))
    return Snapshot(certificates, profiles, sent, recent, pending)


def _watched(row: Sequence[Any]) -> WatchedCertificate:
    certificate_id, serial, not_before, not_after, _status, profile, connector, requester, request_id = row
    return WatchedCertificate(
        certificate_id=certificate_id, serial=serial, not_before=not_before, not_after=not_after,
        profile=profile, connector=connector, requester=requester, request_id=request_id,
    )
