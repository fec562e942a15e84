"""The certificate inventory: a read model built from the typed events on
``certrail.events``, updated in the auditor's write transaction.

Three tables (services/common/db_schema.py): ``certificate_inventory`` (one row
per managed certificate: status, current serial, subject, SANs, issuing CA,
validity, connector, profile, last event), ``certificate_serials`` (every
serial it had) and ``certificate_deployments`` (per target).

`apply_events` folds a batch of events into those tables with a constant
number of statements per batch (load the touched rows, apply the events in
memory in partition order, upsert what changed). Every value comes from the
events (times are event times, never the wall clock), so a replay of the same
events builds the same inventory.

Stored statuses are pending, active, revoked and failed; "expired" is derived
when read (`effective_status`): an active certificate past its not_after.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import Boolean, String, Table, TextualSelect, cast, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from services.auditor.sql import BoundTime, executemany, sqlite_text, time_binder, utc_or_none
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import (
    CertificateDeployed,
    CertificateExpiring,
    CertificateIssued,
    CertificateRevoked,
    DeploymentFailed,
    IssuanceFailed,
    IssuancePending,
    RenewalDue,
    RequestAccepted,
    RequestRejected,
    RevocationFailed,
    TargetRef,
)
from services.common.contracts.fields import ErrorInfo, RequestKind
from services.common.db_schema import CertificateDeployment, CertificateInventory, CertificateSerial, UTCDateTime


class CertificateStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"  # derived when read
    FAILED = "failed"


class SerialStatus(StrEnum):
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    REVOKED = "revoked"


def effective_status(status: str, not_after: datetime | None, now: datetime) -> str:
    """The status to show: an active certificate whose not_after has passed is expired."""
    if status == CertificateStatus.ACTIVE and not_after is not None and not_after <= now:
        return CertificateStatus.EXPIRED.value
    return status


_INVENTORY_COLUMNS = [c.name for c in CertificateInventory.__table__.columns]
_SERIAL_COLUMNS = [c.name for c in CertificateSerial.__table__.columns]
_DEPLOYMENT_COLUMNS = [c.name for c in CertificateDeployment.__table__.columns]


class InventoryEvent(NamedTuple):
    """What the inventory needs of one event: plain, picklable values (nested
    parts flattened: ``error`` -> its code, ``target`` -> target_kind/target_name)."""

    type: str
    id: str
    time: BoundTime  # its times (here and in fields) are text when a prepare worker bound them for SQLite
    certificate_id: str
    fields: dict[str, Any]


#: the fields `_apply` reads, per event type ("error" becomes its code, "target" its kind and name)
_FIELDS: dict[str, tuple[str, ...]] = {
    RequestAccepted.TYPE: ("kind", "requester", "request_id", "profile", "connector", "issuance_id"),
    RequestRejected.TYPE: ("error",),
    IssuancePending.TYPE: ("issuance_id", "connector", "request_id"),
    CertificateIssued.TYPE: (
        "serial",
        "replaces_serial",
        "subject",
        "sans",
        "issuer",
        "not_before",
        "not_after",
        "connector",
        "profile",
        "request_id",
        "issuance_id",
        "public_key_sha256",
    ),
    IssuanceFailed.TYPE: ("error",),
    CertificateRevoked.TYPE: ("serial", "revoked_at", "reason"),
    RevocationFailed.TYPE: ("error",),
    CertificateDeployed.TYPE: ("serial", "target", "verified_serial"),
    DeploymentFailed.TYPE: ("serial", "target", "rolled_back", "error"),
    RenewalDue.TYPE: (),
    CertificateExpiring.TYPE: (),
}
HANDLED_TYPES = frozenset(_FIELDS)
#: RequestRejected codes that refuse the caller, not the certificate: they never change an inventory row.
#: The gateway names no certificate in such a rejection unless the caller may act on it
#: (services/gateway/intake.py, _named_certificate); this guards against older or forged events.
_NOT_ABOUT_THE_CERTIFICATE = frozenset({
    ErrorCode.UNAUTHENTICATED.value,
    ErrorCode.REQUEST_SIGNATURE_INVALID.value,
    ErrorCode.REQUESTER_NOT_AUTHORISED.value,
    ErrorCode.DUPLICATE_REQUEST_CONFLICT.value,
    ErrorCode.AUTH_THROTTLED.value,
})


def inventory_event(event: Any, *, sqlite_times: bool = False) -> InventoryEvent | None:
    """The inventory's view of a decoded event (an Envelope or a typed envelope), or None
    (also when one of its times is beyond what UTC can hold). Its times are in UTC;
    ``sqlite_times``: as the text SQLite stores (`sql.sqlite_text`)."""
    names = _FIELDS.get(event.type)
    if names is None:
        return None
    data = event.data.__dict__  # the message's field values
    certificate_id = data.get("certificate_id")
    if not isinstance(certificate_id, str):
        return None
    fields: dict[str, Any] = {}
    for name in names:
        value = data.get(name)
        if isinstance(value, ErrorInfo):
            fields[name] = str(value.code)
        elif isinstance(value, TargetRef):
            fields["target_kind"], fields["target_name"] = value.kind, value.name
        elif isinstance(value, StrEnum):
            fields[name] = str(value)
        elif isinstance(value, list):
            fields[name] = list(value)
        elif isinstance(value, datetime):
            utc = utc_or_none(value)
            if utc is None:
                return None  # an instant UTC cannot hold is no certificate's validity: not folded (the record is stored)
            fields[name] = sqlite_text(utc) if sqlite_times else utc
        else:
            fields[name] = value
    time = utc_or_none(event.time)
    if time is None:
        return None
    return InventoryEvent(event.type, event.id, sqlite_text(time) if sqlite_times else time, certificate_id, fields)


@dataclass
class _State:
    certificates: dict[str, dict[str, Any]]
    serials: dict[tuple[str, str], dict[str, Any]]
    deployments: dict[tuple[str, str, str], dict[str, Any]]
    changed_certificates: set[str]
    changed_serials: set[tuple[str, str]]
    changed_deployments: set[tuple[str, str, str]]

    def certificate(self, event: InventoryEvent, create: bool) -> dict[str, Any] | None:
        certificate_id = event.certificate_id
        row = self.certificates.get(certificate_id)
        if row is None:
            if not create:
                return None
            row = dict.fromkeys(_INVENTORY_COLUMNS)
            row.update(certificate_id=certificate_id, status=CertificateStatus.PENDING.value, created_at=event.time)
            self.certificates[certificate_id] = row
        row.update(last_event_id=event.id, last_event_type=event.type, last_event_at=event.time, updated_at=event.time)
        self.changed_certificates.add(certificate_id)
        return row

    def serial(self, certificate_id: str, serial: str) -> dict[str, Any]:
        key = (certificate_id, serial)
        row = self.serials.get(key)
        if row is None:
            row = dict.fromkeys(_SERIAL_COLUMNS)
            row.update(certificate_id=certificate_id, serial=serial, status=SerialStatus.ACTIVE.value)
            self.serials[key] = row
        self.changed_serials.add(key)
        return row

    def deployment(self, certificate_id: str, kind: str, name: str) -> dict[str, Any]:
        key = (certificate_id, kind, name)
        row = self.deployments.get(key)
        if row is None:
            row = dict.fromkeys(_DEPLOYMENT_COLUMNS)
            row.update(certificate_id=certificate_id, target_kind=kind, target_name=name)
            self.deployments[key] = row
        self.changed_deployments.add(key)
        return row


def _issued(state: _State, event: InventoryEvent, f: dict[str, Any]) -> None:
    cert_id = event.certificate_id
    row = state.certificate(event, create=True)
    assert row is not None
    for replaced in {row["serial"], f.get("replaces_serial")} - {None, f["serial"]}:
        old = state.serials.get((cert_id, replaced))
        if old is not None and old["status"] == SerialStatus.ACTIVE:
            state.serial(cert_id, replaced)["status"] = SerialStatus.SUPERSEDED.value
    row.update(
        status=CertificateStatus.ACTIVE.value,
        serial=f["serial"],
        subject=f["subject"],
        sans=json.dumps(f["sans"]),
        issuer=f["issuer"],
        not_before=f["not_before"],
        not_after=f["not_after"],
        connector=f["connector"],
        profile=f["profile"],
        request_id=f["request_id"],
        issuance_id=f["issuance_id"],
        public_key_sha256=f["public_key_sha256"],
        revoked_at=None,
        revocation_reason=None,
        last_error_code=None,
    )
    state.serial(cert_id, f["serial"]).update(
        status=SerialStatus.ACTIVE.value,
        issuer=f["issuer"],
        not_before=f["not_before"],
        not_after=f["not_after"],
        issuance_id=f["issuance_id"],
        request_id=f["request_id"],
        issued_at=event.time,
    )


def _apply(state: _State, event: InventoryEvent) -> None:
    f = event.fields
    kind = event.type
    if kind == RequestAccepted.TYPE:
        row = state.certificate(event, create=f["kind"] != RequestKind.REVOKE.value)
        if row is None:
            return
        row.update(requester=f["requester"], request_id=f["request_id"])
        for name in ("profile", "connector", "issuance_id"):
            if f.get(name) is not None:
                row[name] = f[name]
        if row["serial"] is None and row["status"] == CertificateStatus.FAILED:
            row["status"] = CertificateStatus.PENDING.value
    elif kind == IssuancePending.TYPE:
        row = state.certificate(event, create=True)
        assert row is not None
        row.update(issuance_id=f["issuance_id"], connector=f["connector"], request_id=f["request_id"])
        if row["serial"] is None:
            row["status"] = CertificateStatus.PENDING.value
    elif kind == CertificateIssued.TYPE:
        _issued(state, event, f)
    elif kind == IssuanceFailed.TYPE:
        row = state.certificate(event, create=True)
        assert row is not None
        row["last_error_code"] = f["error"]
        if row["serial"] is None:
            row["status"] = CertificateStatus.FAILED.value
    elif kind == CertificateRevoked.TYPE:
        state.serial(event.certificate_id, f["serial"]).update(
            status=SerialStatus.REVOKED.value, revoked_at=f["revoked_at"], revocation_reason=f["reason"]
        )
        row = state.certificate(event, create=False)
        if row is not None and row["serial"] in (None, f["serial"]):
            row.update(
                status=CertificateStatus.REVOKED.value,
                serial=f["serial"],
                revoked_at=f["revoked_at"],
                revocation_reason=f["reason"],
            )
    elif kind in (CertificateDeployed.TYPE, DeploymentFailed.TYPE):
        deployed = kind == CertificateDeployed.TYPE
        state.deployment(event.certificate_id, f["target_kind"], f["target_name"]).update(
            status="deployed" if deployed else "failed",
            serial=f["serial"],
            verified_serial=f.get("verified_serial"),
            rolled_back=f.get("rolled_back"),
            error_code=f.get("error"),
            event_id=event.id,
            updated_at=event.time,
        )
        state.certificate(event, create=False)
    elif kind == RequestRejected.TYPE and f["error"] in _NOT_ABOUT_THE_CERTIFICATE:
        return  # a refused caller's rejection says nothing about the certificate it named (gateways before 2026-12)
    elif kind in (RequestRejected.TYPE, RevocationFailed.TYPE):
        row = state.certificate(event, create=False)
        if row is not None:
            row["last_error_code"] = f["error"]
    else:  # RenewalDue, CertificateExpiring
        state.certificate(event, create=False)


@functools.cache
def _sqlite_load_query(table: Table) -> TextualSelect:
    """``table``'s rows for a JSON array of certificate ids: one cached statement whatever
    the batch (an IN list of bound parameters is rendered anew for every batch)."""
    columns = ", ".join(f'"{c.name}"' for c in table.columns)
    query = text(f'SELECT {columns} FROM "{table.name}" WHERE certificate_id IN (SELECT value FROM json_each(:ids))')
    return query.columns(*table.columns)


def _load(session: Session, table: Table, certificate_ids: Sequence[str]) -> list[dict[str, Any]]:
    if session.get_bind().dialect.name == "postgresql":
        # join the wanted ids (index lookups whatever the statistics say; see store._first_occurrences)
        wanted = func.unnest(cast(list(certificate_ids), ARRAY(String()))).table_valued("id").render_derived(name="wanted")
        query = select(table).join(wanted, table.c.certificate_id == wanted.c.id)
        return [dict(r._mapping) for r in session.execute(query)]
    rows = session.execute(_sqlite_load_query(table), {"ids": json.dumps(list(certificate_ids))})
    return [dict(r._mapping) for r in rows]


def _upsert(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Upsert ``rows`` (dicts of every column), bound here: times through `time_binder`,
    booleans as the driver takes them (SQLite: 0/1), everything else as it is."""
    if not rows:
        return
    columns = [c.name for c in table.columns]
    key = [c.name for c in table.primary_key.columns]
    bind_time = time_binder(session.get_bind().dialect)
    times = [c.name for c in table.columns if isinstance(c.type, UTCDateTime)]
    flags = [c.name for c in table.columns if isinstance(c.type, Boolean)]
    for row in rows:
        for name in times:
            row[name] = bind_time(row[name])
        for name in flags:
            if row[name] is not None:
                row[name] = bool(row[name])
    values = itemgetter(*columns)
    executemany(session, table, columns, [values(row) for row in rows], upsert_key=key, bound=True)


def apply_events(session: Session, events: Sequence[InventoryEvent]) -> int:
    """Fold ``events`` (in partition order) into the inventory; returns how many there were."""
    relevant = list(events)
    if not relevant:
        return 0
    cert_ids = sorted({e.certificate_id for e in relevant})
    inventory = CertificateInventory.__table__
    serials = CertificateSerial.__table__
    deployments = CertificateDeployment.__table__
    state = _State(
        certificates={r["certificate_id"]: r for r in _load(session, inventory, cert_ids)},  # type: ignore[arg-type]
        serials={(r["certificate_id"], r["serial"]): r for r in _load(session, serials, cert_ids)},  # type: ignore[arg-type]
        deployments={
            (r["certificate_id"], r["target_kind"], r["target_name"]): r
            for r in _load(session, deployments, cert_ids)  # type: ignore[arg-type]
        },
        changed_certificates=set(),
        changed_serials=set(),
        changed_deployments=set(),
    )
    for event in relevant:
        _apply(state, event)
    _upsert(session, inventory, [state.certificates[k] for k in sorted(state.changed_certificates)])  # type: ignore[arg-type]
    _upsert(session, serials, [state.serials[k] for k in sorted(state.changed_serials)])  # type: ignore[arg-type]
    _upsert(session, deployments, [state.deployments[k] for k in sorted(state.changed_deployments)])  # type: ignore[arg-type]
    return len(relevant)


# -- reading ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateView:
    """One inventory row as the gateway and the CLI see it."""

    certificate_id: str
    status: str  # effective: expired when active and past not_after
    serial: str | None
    past_serials: tuple[str, ...]
    subject: str | None
    sans: tuple[str, ...]
    issuer: str | None
    not_before: datetime | None
    not_after: datetime | None
    connector: str | None
    profile: str | None
    requester: str | None
    last_event_type: str
    last_event_at: datetime
    last_error_code: str | None
    deployments: tuple[tuple[str, str, str, str], ...]  # (kind, name, status, serial)


def get_certificate(session: Session, certificate_id: str, now: datetime) -> CertificateView | None:
    """The inventory view of one certificate, or None."""
    row = session.get(CertificateInventory, certificate_id)
    if row is None:
        return None
    serials = session.scalars(
        select(CertificateSerial)
        .where(CertificateSerial.certificate_id == certificate_id)
        .order_by(CertificateSerial.issued_at, CertificateSerial.serial)
    ).all()
    deployments = session.scalars(
        select(CertificateDeployment)
        .where(CertificateDeployment.certificate_id == certificate_id)
        .order_by(CertificateDeployment.target_kind, CertificateDeployment.target_name)
    ).all()
    return CertificateView(
        certificate_id=row.certificate_id,
        status=effective_status(row.status, row.not_after, now),
        serial=row.serial,
        past_serials=tuple(s.serial for s in serials if s.serial != row.serial),
        subject=row.subject,
        sans=tuple(json.loads(row.sans)) if row.sans else (),
        issuer=row.issuer,
        not_before=row.not_before,
        not_after=row.not_after,
        connector=row.connector,
        profile=row.profile,
        requester=row.requester,
        last_event_type=row.last_event_type,
        last_event_at=row.last_event_at,
        last_error_code=row.last_error_code,
        deployments=tuple((d.target_kind, d.target_name, d.status, d.serial) for d in deployments),
    )


def certificates_with_serial(session: Session, serial: str) -> list[str]:
    """The certificate ids that ever had ``serial`` (normally one)."""
    return list(
        session.scalars(
            select(CertificateSerial.certificate_id)
            .where(CertificateSerial.serial == serial)
            .order_by(CertificateSerial.certificate_id)
        )
    )


def list_certificates(
    session: Session,
    now: datetime,
    *,
    status: str | None = None,
    not_after_before: datetime | None = None,
    limit: int = 1000,
) -> list[CertificateView]:
    """Inventory views ordered by not_after (soonest first; never issued last), optionally
    only one (effective) status, or only those expiring before a time (renewal planning)."""
    query = select(CertificateInventory.certificate_id).order_by(
        CertificateInventory.not_after.is_(None), CertificateInventory.not_after, CertificateInventory.certificate_id
    )
    if not_after_before is not None:
        query = query.where(CertificateInventory.not_after < not_after_before)
    if status == CertificateStatus.EXPIRED:
        query = query.where(CertificateInventory.status == CertificateStatus.ACTIVE.value, CertificateInventory.not_after <= now)
    elif status == CertificateStatus.ACTIVE:
        query = query.where(CertificateInventory.status == status, CertificateInventory.not_after > now)
    elif status is not None:
        query = query.where(CertificateInventory.status == status)
    views = (get_certificate(session, cid, now) for cid in session.scalars(query.limit(limit)))
    return [v for v in views if v is not None]


#: the statuses certrail_audit_inventory_certificates reports ("expired": active and past not_after)
INVENTORY_STATUSES = ("pending", "active", "expired", "revoked", "failed")


def inventory_status_counts(session: Session, now: datetime) -> dict[str, int]:
    """How many inventory certificates have each effective status."""
    inv = CertificateInventory
    counts: dict[str, int] = {}
    expired = (inv.status == CertificateStatus.ACTIVE.value) & (inv.not_after.is_not(None)) & (inv.not_after <= now)
    for status, is_expired, n in session.execute(select(inv.status, expired, func.count()).group_by(inv.status, expired)):
        key = "expired" if is_expired else status
        counts[key] = counts.get(key, 0) + int(n)
    return counts
