"""The gateway's own projection of issued certificates (decision 0017: each service owns its state).

The gateway consumes ``<prefix>.events.issuer`` and folds two of its events into
``gateway_issued_serials``, one row per certificate and serial:

- CertificateIssued: its serial becomes the certificate's current one (status active) and the
  previous current serial is superseded; an issuance older (by event time) than the current
  serial arrives superseded. A serial already revoked stays revoked;
- CertificateRevoked: its serial is revoked (recorded even before its CertificateIssued).

A superseded serial never becomes active again, also when its CertificateIssued is delivered again: `retire`
supersedes the active serial of a certificate that another certificate id replaces (an ACME renewal:
services/gateway/acme/retire.py), and a redelivery must not bring it back.

Both are idempotent upserts keyed by certificate id and serial, so a redelivered record changes
nothing. An event about a certificate id the gateway does not manage (no ``gateway_certificates``
row: forged, foreign or from another installation) is ignored and logged. Renew (the serial it
replaces), revoke (a serial's owner; a serial belongs to the certificate) and the renewal scheduler
(services/gateway/scheduler/) read this table, never the auditor's inventory.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.common.contracts.envelope import Envelope
from services.common.contracts.events import CertificateIssued, CertificateRevoked
from services.common.db import core, write_session
from services.common.db_schema import GatewayCertificate, GatewayIssuedSerial

__all__ = [
    "ACTIVE",
    "REVOKED",
    "SUPERSEDED",
    "Issued",
    "Revoked",
    "apply_event",
    "certificates_with_serial",
    "current_serial",
    "fold_issued",
    "fold_revoked",
    "retire",
    "serials_of",
]

log = logging.getLogger(__name__)

ACTIVE, SUPERSEDED, REVOKED = "active", "superseded", "revoked"
_TABLE = cast(Table, GatewayIssuedSerial.__table__)
_COLUMNS = [c.name for c in _TABLE.columns]
_KEY = [c.name for c in _TABLE.primary_key.columns]
#: prebuilt, and Core (never an ORM object that a Core upsert of the same transaction would leave stale)
_MANAGED = select(GatewayCertificate.__table__.c.certificate_id).where(
    GatewayCertificate.__table__.c.certificate_id == bindparam("certificate_id"))
_ROWS = select(_TABLE).where(_TABLE.c.certificate_id == bindparam("certificate_id"))
_ROW = _ROWS.where(_TABLE.c.serial == bindparam("serial"))


@dataclass(frozen=True, slots=True)
class Issued:
    """What the projection keeps of a CertificateIssued."""

    certificate_id: str
    serial: str
    issuer: str | None
    not_before: datetime
    not_after: datetime
    profile: str | None
    connector: str | None
    sans: Sequence[str]
    request_id: str | None
    issuance_id: str | None
    event_id: str
    time: datetime  # the event's time: which of two issuances is newer

    @classmethod
    def of(cls, event: Envelope) -> Issued:
        data = event.data
        assert isinstance(data, CertificateIssued)
        return cls(data.certificate_id, data.serial, data.issuer, data.not_before, data.not_after, data.profile,
                   data.connector, list(data.sans), data.request_id, data.issuance_id, event.id, event.time)


@dataclass(frozen=True, slots=True)
class Revoked:
    """What the projection keeps of a CertificateRevoked."""

    certificate_id: str
    serial: str
    connector: str | None
    revoked_at: datetime
    reason: str

    @classmethod
    def of(cls, event: Envelope) -> Revoked:
        data = event.data
        assert isinstance(data, CertificateRevoked)
        return cls(data.certificate_id, data.serial, data.connector, data.revoked_at, str(data.reason))


# -- the fold ---------------------------------------------------------------------------------------


def apply_event(engine: Engine, event: Envelope) -> bool:
    """`apply_in` in a write transaction of its own."""
    with write_session(engine) as session:
        return apply_in(session, event)


def apply_in(session: Session, event: Envelope) -> bool:
    """Fold one CertificateIssued or CertificateRevoked in the caller's write transaction (the service
    groups them: services/common/runtime/writer.py); False when it was ignored (a certificate id the
    gateway does not manage). Publishes nothing."""
    data = event.data
    if not isinstance(data, CertificateIssued | CertificateRevoked):
        raise TypeError(f"the issued-certificate projection folds no {event.type}")
    if core(session).execute(_MANAGED, {"certificate_id": data.certificate_id}).first() is None:
        log.warning("%s %s ignored: certificate id %r is not managed by this gateway (forged or foreign)",
                    event.type, event.id, data.certificate_id[:200])
        return False
    if isinstance(data, CertificateIssued):
        fold_issued(session, Issued.of(event))
    else:
        fold_revoked(session, Revoked.of(event))
    return True


def fold_issued(session: Session, fact: Issued) -> None:
    """Record an issued serial; it becomes the current one unless a newer issuance is known."""
    rows = _rows(session, fact.certificate_id)
    row = rows.get(fact.serial) or _new_row(fact.certificate_id, fact.serial)
    row.update(issuer=fact.issuer, not_before=fact.not_before, not_after=fact.not_after, profile=fact.profile,
               connector=fact.connector, sans=json.dumps(list(fact.sans)), request_id=fact.request_id,
               issuance_id=fact.issuance_id, event_id=fact.event_id, issued_at=fact.time)
    others = [r for serial, r in rows.items() if serial != fact.serial]
    newer = any(r["status"] != SUPERSEDED and r["issued_at"] is not None and r["issued_at"] > fact.time for r in others)
    changed = [row]
    if newer:  # an older issuance arriving late
        if row["status"] != REVOKED:
            row["status"] = SUPERSEDED
    else:
        for other in others:
            if other["status"] == ACTIVE:
                other["status"] = SUPERSEDED
                changed.append(other)
        if row["status"] != REVOKED and not (fact.serial in rows and row["status"] == SUPERSEDED):
            row["status"] = ACTIVE  # a serial superseded once (also retired: `retire`) never becomes active again
    _upsert(session, changed)


def retire(session: Session, certificate_id: str, serial: str) -> list[str]:
    """Retire a certificate's serial that another certificate id replaces (an ACME renewal, acme/retire.py):
    when active, it becomes superseded, as a renewal's old serial does, so renew and the renewal scheduler stop
    seeing it as current. Not a revocation: a revoked serial stays revoked. The serials retired (none when it was
    not active: retired already, revoked, superseded, or not projected)."""
    rows = [r for r in _rows(session, certificate_id).values() if r["serial"] == serial and r["status"] == ACTIVE]
    for row in rows:
        row["status"] = SUPERSEDED
    if rows:
        _upsert(session, rows)
    return sorted(r["serial"] for r in rows)


def fold_revoked(session: Session, fact: Revoked) -> None:
    """Record a revoked serial (also one whose issuance the gateway has not seen)."""
    row = core(session).execute(_ROW, {"certificate_id": fact.certificate_id, "serial": fact.serial}).first()
    values = _new_row(fact.certificate_id, fact.serial, connector=fact.connector) if row is None else dict(row._mapping)
    values.update(status=REVOKED, revoked_at=fact.revoked_at, revocation_reason=fact.reason)
    _upsert(session, [values])


def _new_row(certificate_id: str, serial: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(_COLUMNS)
    row.update(certificate_id=certificate_id, serial=serial, status=ACTIVE, **values)
    return row


def _rows(session: Session, certificate_id: str) -> dict[str, dict[str, Any]]:
    return {row.serial: dict(row._mapping) for row in core(session).execute(_ROWS, {"certificate_id": certificate_id})}


def _upsert(session: Session, rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT (certificate_id, serial) DO UPDATE every column."""
    core(session).execute(_upsert_statement(session.get_bind().dialect.name), rows)


@functools.cache
def _upsert_statement(dialect: str) -> Any:
    """Built once per dialect: building it (its ``excluded`` columns) cost a third of the fold's CPU."""
    if dialect == "postgresql":
        statement: Any = postgresql.insert(_TABLE)
    elif dialect == "sqlite":
        statement = sqlite.insert(_TABLE)
    else:
        raise NotImplementedError(f"issued-certificate projection: unsupported database {dialect!r}")
    return statement.on_conflict_do_update(
        index_elements=_KEY, set_={name: statement.excluded[name] for name in _COLUMNS if name not in _KEY})


# -- what renew, revoke and the scheduler read ------------------------------------------------------


def current_serial(session: Session, certificate_id: str) -> str | None:
    """The certificate's current serial (active, or revoked when the newest was revoked), or None."""
    table = GatewayIssuedSerial
    return session.scalars(
        select(table.serial)
        .where(table.certificate_id == certificate_id, table.status != SUPERSEDED)
        .order_by(table.issued_at.is_(None), table.issued_at.desc(), table.status, table.serial)
        .limit(1)
    ).first()


def serials_of(session: Session, certificate_id: str) -> set[str]:
    """Every serial the certificate had (current, superseded and revoked)."""
    table = GatewayIssuedSerial
    return set(session.scalars(select(table.serial).where(table.certificate_id == certificate_id)))


def certificates_with_serial(session: Session, serial: str) -> list[str]:
    """The certificate ids that ever had ``serial`` (normally one), in order."""
    table = GatewayIssuedSerial
    return list(session.scalars(select(table.certificate_id).where(table.serial == serial).order_by(table.certificate_id)))
