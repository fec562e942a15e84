"""The out-of-band watch's tables (services/common/db_schema.py): ``issuer_watched_serials`` (every serial the
issuer issued, filled from its own ``issuer_operations``) and ``issuer_crl_watch`` (per connector, its rounds).
The issuer reads no other service's tables: what it issued is in its own operations' stored CertificateIssued."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from sqlalchemy import Connection, Engine, Table, and_, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite

from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import DecodeError, decode
from services.common.contracts.events import CertificateIssued
from services.common.contracts.identity import normalise_serial
from services.common.db import read_session, write_session
from services.common.db_schema import IssuerCrlWatch, IssuerOperation, IssuerWatchedSerial
from services.issuer import state
from services.issuer.revocation.crl_check import distribution_points
from services.issuer.revocation.watch_decision import Finding, LiveSerial
from services.issuer.state import OpState, StoredRecord

_SERIALS: Table = IssuerWatchedSerial.__table__  # type: ignore[assignment]
_WATCH: Table = IssuerCrlWatch.__table__  # type: ignore[assignment]
_OPS: Table = IssuerOperation.__table__  # type: ignore[assignment]

LIVE, REVOKED_OUT_OF_BAND = "live", "revoked_out_of_band"
SYNC_BATCH = 500  # issued operations decoded per transaction


def _insert(dialect: str, table: Table) -> Any:
    return (postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)).on_conflict_do_nothing()


def _issued_of(outcome: str | None, serial: str) -> CertificateIssued | None:
    for record in state.decode_outcome(outcome):
        try:
            envelope = decode(record.value, CATALOG)
        except DecodeError:
            continue
        if isinstance(envelope.data, CertificateIssued) and envelope.data.serial == serial:
            return envelope.data
    return None


def sync_issued(engine: Engine, connector: str, now: datetime, limit: int = SYNC_BATCH) -> int:
    """Add the connector's issued serials not watched yet (each decoded once, ever); returns how many."""
    watched = exists().where(_SERIALS.c.connector == _OPS.c.connector, _SERIALS.c.serial == _OPS.c.serial)
    with read_session(engine) as session:
        rows = session.connection().execute(
            select(_OPS.c.op_key, _OPS.c.certificate_id, _OPS.c.request_id, _OPS.c.serial, _OPS.c.outcome)
            .where(_OPS.c.connector == connector, _OPS.c.state == OpState.ISSUED.value, _OPS.c.serial.is_not(None),
                   ~watched).limit(limit)).all()
    values = []
    for op_key, certificate_id, request_id, serial, outcome in rows:
        issued = _issued_of(outcome, serial)
        point, not_after = None, now  # no readable CertificateIssued: recorded, never live
        if issued is not None:
            not_after = issued.not_after
            try:
                points = distribution_points(x509.load_pem_x509_certificate(issued.certificate.encode()))
            except ValueError:
                points = ()
            point = points[0] if points else None
        values.append({"connector": connector, "serial": serial, "certificate_id": certificate_id,
                       "request_id": request_id, "op_key": op_key, "not_after": not_after, "distribution_point": point,
                       "state": LIVE, "reason": None, "revoked_at_ca": None, "crl_number": None, "outcome": None,
                       "created_at": now, "detected_at": None, "published_at": None})
    if values:
        with write_session(engine) as session:
            session.connection().execute(_insert(session.get_bind().dialect.name, _SERIALS), values)
    return len(values)


def revoked_by_certrail_in(conn: Connection, connector: str) -> set[str]:
    """Normalised serials of every revocation command of certrail's on this connector (answered or still in flight:
    the intent is written before emCA is called, its serial only in the stored command until the outcome)."""
    rows = conn.execute(select(_OPS.c.serial, _OPS.c.command).where(_OPS.c.connector == connector,
                                                                     _OPS.c.kind == "revoke")).all()
    out: set[str] = set()
    for serial, command in rows:
        if serial is None and command:
            try:
                serial = json.loads(command)["data"]["serial"]
            except (ValueError, KeyError, TypeError):
                continue
        if isinstance(serial, str):
            out.add(normalise_serial(serial))
    return out


def live_serials(engine: Engine, connector: str, now: datetime) -> tuple[list[LiveSerial], int]:
    """The connector's live serials with a distribution point, those certrail revoked left out; and how many
    unexpired serials name no distribution point (never checkable)."""
    with read_session(engine) as session:
        conn = session.connection()
        rows = conn.execute(
            select(_SERIALS.c.certificate_id, _SERIALS.c.serial, _SERIALS.c.request_id, _SERIALS.c.distribution_point)
            .where(_SERIALS.c.connector == connector, _SERIALS.c.state == LIVE, _SERIALS.c.not_after > now)).all()
        revoked = revoked_by_certrail_in(conn, connector)
    live = [LiveSerial(cid, serial, rid, point) for cid, serial, rid, point in rows
            if point is not None and normalise_serial(serial) not in revoked]
    return live, sum(1 for row in rows if row[3] is None)


def record_findings(engine: Engine, connector: str, found: Sequence[tuple[Finding, Sequence[StoredRecord], str | None]],
                    now: datetime) -> list[str]:
    """Mark each finding's serial revoked out of band with its records, unless certrail asked to revoke it meanwhile
    (checked again in this transaction) or it was marked already; returns the serials marked (to publish)."""
    marked: list[str] = []
    with write_session(engine) as session:
        conn = session.connection()
        revoked = revoked_by_certrail_in(conn, connector)
        for finding, records, crl_number in found:
            if normalise_serial(finding.live.serial) in revoked:
                continue
            result = conn.execute(
                update(_SERIALS).where(_SERIALS.c.connector == connector, _SERIALS.c.serial == finding.live.serial,
                                       _SERIALS.c.state == LIVE)
                .values(state=REVOKED_OUT_OF_BAND, reason=finding.entry.reason, revoked_at_ca=finding.entry.revoked_at,
                        crl_number=crl_number, outcome=state.encode_outcome(records), detected_at=now))
            if result.rowcount == 1:
                marked.append(finding.live.serial)
    return marked


def unpublished(engine: Engine, connectors: Iterable[str]) -> list[tuple[str, str, tuple[StoredRecord, ...]]]:
    """(connector, serial, records) of findings stored but not acknowledged (a crash in between)."""
    wanted = sorted(set(connectors))
    if not wanted:
        return []
    with read_session(engine) as session:
        rows = session.connection().execute(
            select(_SERIALS.c.connector, _SERIALS.c.serial, _SERIALS.c.outcome)
            .where(_SERIALS.c.connector.in_(wanted), _SERIALS.c.state == REVOKED_OUT_OF_BAND,
                   _SERIALS.c.published_at.is_(None))).all()
    return [(c, s, state.decode_outcome(o)) for c, s, o in rows]


def mark_published(engine: Engine, connector: str, serials: Sequence[str], now: datetime) -> None:
    if not serials:
        return
    with write_session(engine) as session:
        session.execute(update(_SERIALS).where(_SERIALS.c.connector == connector, _SERIALS.c.serial.in_(list(serials)))
                        .values(published_at=now))


@dataclass(frozen=True)
class WatchRound:
    connector: str
    started_at: datetime
    last_attempt_at: datetime
    last_ok_at: datetime | None
    next_at: datetime
    failures: int
    last_error: str | None
    crl_number: str | None
    live_serials: int


def rounds(engine: Engine) -> dict[str, WatchRound]:
    with read_session(engine) as session:
        rows = session.connection().execute(select(_WATCH)).mappings().all()
    return {r["connector"]: WatchRound(**dict(r)) for r in rows}


def record_round(engine: Engine, connector: str, now: datetime, next_at: datetime, *, error: str | None,
                 crl_number: str | None, live: int) -> None:
    """A watch round's result: ok (``error`` None) resets the failures."""
    with write_session(engine) as session:
        conn = session.connection()
        conn.execute(_insert(session.get_bind().dialect.name, _WATCH), {
            "connector": connector, "started_at": now, "last_attempt_at": now, "last_ok_at": None, "next_at": now,
            "failures": 0, "last_error": None, "crl_number": None, "live_serials": 0})
        values: dict[str, Any] = {"last_attempt_at": now, "next_at": next_at, "live_serials": live}
        if error is None:
            values.update(last_ok_at=now, failures=0, last_error=None)
            if crl_number is not None:
                values["crl_number"] = crl_number
        else:
            values.update(failures=_WATCH.c.failures + 1, last_error=error[:2000])
        conn.execute(update(_WATCH).where(and_(_WATCH.c.connector == connector)).values(**values))


def finding(engine: Engine, connector: str, serial: str) -> dict[str, Any] | None:
    """One watched serial's row (tests, diagnostics)."""
    with read_session(engine) as session:
        row = session.connection().execute(select(_SERIALS).where(_SERIALS.c.connector == connector,
                                                                  _SERIALS.c.serial == serial)).mappings().first()
    return None if row is None else dict(row)
