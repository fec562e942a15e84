"""The certificate inventory: a read model built from the typed events on the
producers' events topics (``certrail.events.gateway``, ``.issuer``, ``.deployer``; an
event on a topic its producer does not own is never folded, store.py; decision 0016),
updated in the auditor's write transaction.

Three tables (services/common/db_schema.py): ``certificate_inventory`` (one row
per managed certificate: status, current serial, subject, SANs, issuing CA,
validity, connector, profile, last event), ``certificate_serials`` (every
serial it had) and ``certificate_deployments`` (per target).

`apply_events` folds a batch of events into those tables with a constant
number of statements per batch (load the touched rows, apply the events in
memory, upsert what changed). Every value comes from the events (times are
event times, never the wall clock), and the fold is by event time, not by
arrival: a certificate's events span three topics whose relative order is not
kept, so facts (serials issued and revoked, each target's newest outcome)
apply whenever they arrive, and the last event and the request fields move only
forward in (event time, event id) (`_apply`; docs/audit.md "Folded by event
time"). A replay of the same events, in any interleaving of the topics, builds
the same inventory.

Stored statuses are pending, active, superseded (another certificate id replaces
it: CertificateSuperseded), revoked and failed; "expired" is derived when read
(`effective_status`): an active certificate past its not_after.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import Boolean, Table, TextualSelect, text
from sqlalchemy.orm import Session

from services.auditor.sql import BoundTime, executemany, sqlite_text, sqlite_utc, time_binder, utc_or_none
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import (
    CertificateDeployed,
    CertificateExpiring,
    CertificateIssued,
    CertificateRevoked,
    CertificateSuperseded,
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
from services.common.contracts.revocation import RevocationConfirmed, RevocationUnconfirmed, RevokedOutOfBand
from services.common.db import core
from services.common.db_schema import CertificateDeployment, CertificateInventory, CertificateSerial, UTCDateTime
from services.common.inventory_read import CertificateStatus


class SerialStatus(StrEnum):
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    REVOKED = "revoked"


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
    IssuanceFailed.TYPE: ("error", "request_id"),
    CertificateRevoked.TYPE: ("serial", "revoked_at", "reason"),
    RevocationFailed.TYPE: ("error",),
    CertificateDeployed.TYPE: ("serial", "target", "verified_serial"),
    DeploymentFailed.TYPE: ("serial", "target", "rolled_back", "error"),
    RenewalDue.TYPE: (),
    CertificateExpiring.TYPE: (),
    RevocationConfirmed.TYPE: ("serial", "reason", "confirmed_at", "crl_number"),
    RevocationUnconfirmed.TYPE: ("serial", "reason", "given_up_at"),
    RevokedOutOfBand.TYPE: ("serial", "reason", "revoked_at_ca", "detected_at", "crl_number"),
    CertificateSuperseded.TYPE: ("serial", "replaced_by", "replaced_by_serial"),
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


def _text(value: BoundTime) -> str:
    """A time as comparable text: SQLite's (`sql.sqlite_text`, formatted once per instant)."""
    return value if isinstance(value, str) else sqlite_utc(value)  # type: ignore[return-value]


def _before(time: BoundTime, other: BoundTime) -> bool:
    """Whether ``time`` is strictly before ``other``. Each is a datetime or SQLite text:
    compared as they are when both are of one type (the usual case: nothing parsed or
    formatted per event), else both as SQLite text (fixed width, UTC: sorts as the instants do)."""
    if type(time) is not type(other):
        time, other = _text(time), _text(other)
    return time < other  # type: ignore[operator]


def _not_older(time: BoundTime, event_id: str, last_time: BoundTime | None, last_id: str) -> bool:
    """Whether (time, event_id) is not before (last_time, last_id) (None: nothing yet)."""
    if last_time is None:
        return True
    if type(time) is not type(last_time):
        time, last_time = _text(time), _text(last_time)
    return (time, event_id) >= (last_time, last_id)  # type: ignore[operator]


#: the event type a deployment row's status stands for
_DEPLOYMENT_EVENT_TYPES = {"deployed": CertificateDeployed.TYPE, "failed": DeploymentFailed.TYPE}


@dataclass
class _State:
    certificates: dict[str, dict[str, Any]]
    serials: dict[tuple[str, str], dict[str, Any]]
    deployments: dict[tuple[str, str, str], dict[str, Any]]
    changed_certificates: set[str]
    changed_serials: set[tuple[str, str]]
    changed_deployments: set[tuple[str, str, str]]
    #: each certificate's keys in ``deployments``
    targets: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in self.deployments:
            self.targets.setdefault(key[0], []).append(key)

    def certificate(self, event: InventoryEvent, *, create: bool, request: bool = False) -> tuple[dict[str, Any] | None, bool]:
        """The event's certificate row (None: none yet and not ``create``) and, for a
        ``request`` event (one that sets the request or status fields), whether it is the
        newest such event: then updated_at becomes its time. Every event that is not older
        than the row's last event becomes it (last_event_*); created_at is the earliest
        creating event's time."""
        certificate_id = event.certificate_id
        row = self.certificates.get(certificate_id)
        if row is None:
            if not create:
                return None, False
            row = dict.fromkeys(_INVENTORY_COLUMNS)
            row.update(certificate_id=certificate_id, status=CertificateStatus.PENDING.value, created_at=event.time)
            self.certificates[certificate_id] = row
            for key in self.targets.get(certificate_id, ()):  # outcomes folded before the row existed
                done = self.deployments[key]
                _touch(row, done["event_id"], _DEPLOYMENT_EVENT_TYPES[done["status"]], done["updated_at"])
        elif create and _before(event.time, row["created_at"]):
            row["created_at"] = event.time
        newest = request and _newest_request_event(row, event)
        if newest:
            row["updated_at"] = event.time
        _touch(row, event.id, event.type, event.time)
        self.changed_certificates.add(certificate_id)
        return row, newest

    def serial(self, certificate_id: str, serial: str) -> dict[str, Any]:
        key = (certificate_id, serial)
        row = self.serials.get(key)
        if row is None:
            row = dict.fromkeys(_SERIAL_COLUMNS)
            row.update(certificate_id=certificate_id, serial=serial, status=SerialStatus.ACTIVE.value)
            self.serials[key] = row
        self.changed_serials.add(key)
        return row

    def deployment(self, event: InventoryEvent, kind: str, name: str) -> dict[str, Any] | None:
        """The event's target row, or None when it holds a newer outcome already."""
        key = (event.certificate_id, kind, name)
        row = self.deployments.get(key)
        if row is None:
            row = dict.fromkeys(_DEPLOYMENT_COLUMNS)
            row.update(certificate_id=event.certificate_id, target_kind=kind, target_name=name)
            self.deployments[key] = row
            self.targets.setdefault(event.certificate_id, []).append(key)
        elif not _not_older(event.time, event.id, row["updated_at"], row["event_id"]):
            return None
        self.changed_deployments.add(key)
        return row

    def newest_serial(self, row: dict[str, Any], serial: str, issued_at: BoundTime) -> bool:
        """Whether ``serial``, issued at ``issued_at``, is the certificate's newest: there is
        no current serial, it is the current one, or the current one was issued before it."""
        current = row["serial"]
        if current is None or current == serial:
            return True
        known = self.serials.get((row["certificate_id"], current))
        return known is None or known["issued_at"] is None or not _before(issued_at, known["issued_at"])


def _touch(row: dict[str, Any], event_id: str, event_type: str, time: BoundTime) -> None:
    """Make the event the row's last one unless it is older than that."""
    if _not_older(time, event_id, row["last_event_at"], row["last_event_id"] or ""):
        row.update(last_event_id=event_id, last_event_type=event_type, last_event_at=time)


def _newest_request_event(row: dict[str, Any], event: InventoryEvent) -> bool:
    """Whether ``event`` is not older than the row's newest request event (at updated_at).
    That event's id is not stored: it is the last event's when that has the same time
    (ties broken by the id), else any event of the same time counts as newer."""
    updated = row["updated_at"]
    if updated is None:
        return True
    last_at = row["last_event_at"]
    same = last_at is not None and not _before(last_at, updated) and not _before(updated, last_at)
    return _not_older(event.time, event.id, updated, row["last_event_id"] if same else "")


def _issued(state: _State, event: InventoryEvent, f: dict[str, Any]) -> None:
    """A fact whenever it arrives: its serial is recorded and, when it is the newest one,
    the certificate's current serial. Its request fields apply when it is the newest request event."""
    cert_id = event.certificate_id
    row, newest = state.certificate(event, create=True, request=True)
    assert row is not None
    serial = state.serial(cert_id, f["serial"])
    serial.update(
        issuer=f["issuer"],
        not_before=f["not_before"],
        not_after=f["not_after"],
        issuance_id=f["issuance_id"],
        request_id=f["request_id"],
        issued_at=event.time,
    )
    if newest:
        row.update(request_id=f["request_id"], issuance_id=f["issuance_id"], last_error_code=None)
    if not state.newest_serial(row, f["serial"], event.time):
        if serial["status"] == SerialStatus.ACTIVE:
            serial["status"] = SerialStatus.SUPERSEDED.value  # an older issuance, arriving late
        return
    for replaced in {row["serial"], f.get("replaces_serial")} - {None, f["serial"]}:
        old = state.serials.get((cert_id, replaced))
        if old is not None and old["status"] == SerialStatus.ACTIVE:
            state.serial(cert_id, replaced)["status"] = SerialStatus.SUPERSEDED.value
    revoked = serial["status"] == SerialStatus.REVOKED
    # the newest serial, superseded already: another certificate id replaced it (CertificateSuperseded, folded first)
    retired = serial["status"] == SerialStatus.SUPERSEDED
    if not revoked and not retired:
        serial["status"] = SerialStatus.ACTIVE.value
    status = CertificateStatus.REVOKED if revoked else CertificateStatus.SUPERSEDED if retired else CertificateStatus.ACTIVE
    row.update(
        status=status.value,
        serial=f["serial"],
        subject=f["subject"],
        sans=json.dumps(f["sans"]),
        issuer=f["issuer"],
        not_before=f["not_before"],
        not_after=f["not_after"],
        connector=f["connector"],
        profile=f["profile"],
        public_key_sha256=f["public_key_sha256"],
        revoked_at=serial["revoked_at"],
        revocation_reason=serial["revocation_reason"],
        revocation_check=serial["revocation_check"],  # the current serial's (a check may arrive before its issuance)
        revocation_checked_at=serial["revocation_checked_at"],
    )


class RevocationCheck(StrEnum):
    CONFIRMED = "confirmed"
    UNCONFIRMED = "unconfirmed"
    OUT_OF_BAND = "out_of_band"  # on the CA's CRL, and certrail never asked for it (RevokedOutOfBand)


def _superseded(state: _State, event: InventoryEvent, f: dict[str, Any]) -> None:
    """Another certificate id replaces this one (the gateway's CertificateSuperseded: an ACME renewal became valid):
    its serial is superseded unless revoked and, when it is the current one and not revoked, the certificate is
    superseded (no longer live; not revoked: it stays valid until it expires). Its CertificateIssued may come after
    (another topic): `_issued` keeps a superseded newest serial superseded."""
    serial = state.serial(event.certificate_id, f["serial"])
    if serial["status"] != SerialStatus.REVOKED:
        serial["status"] = SerialStatus.SUPERSEDED.value
    row, _ = state.certificate(event, create=False)
    if row is not None and row["serial"] == f["serial"] and row["status"] == CertificateStatus.ACTIVE:
        row["status"] = CertificateStatus.SUPERSEDED.value


def _revoked_out_of_band(state: _State, event: InventoryEvent, f: dict[str, Any]) -> None:
    """A serial the issuer found on its CA's CRL that certrail did not revoke: revoked (out of band) on the serial and,
    when it is the current one, the certificate. A revocation certrail recorded first keeps its own time and reason."""
    serial = state.serial(event.certificate_id, f["serial"])
    serial.update(status=SerialStatus.REVOKED.value, revoked_at=serial["revoked_at"] or f["revoked_at_ca"],
                  revocation_reason=serial["revocation_reason"] or f["reason"])
    if serial["revocation_check"] is None:
        serial.update(revocation_check=RevocationCheck.OUT_OF_BAND.value, revocation_checked_at=f["detected_at"],
                      revocation_crl_number=f.get("crl_number"))
    row, _ = state.certificate(event, create=False)
    if row is not None and row["serial"] == f["serial"]:
        row.update(status=CertificateStatus.REVOKED.value, revoked_at=serial["revoked_at"],
                   revocation_reason=serial["revocation_reason"], revocation_check=serial["revocation_check"],
                   revocation_checked_at=serial["revocation_checked_at"])


def _revocation_checked(state: _State, event: InventoryEvent, f: dict[str, Any]) -> None:
    """What the issuer found on the CA's CRL after a revocation, on the serial and (when it is the current one) the
    certificate. Both events follow a revocation emCA accepted: the serial is revoked whichever arrives first. A
    confirmation is a fact on a signed CRL: it stands against an unconfirmed check of another revocation command."""
    serial = state.serial(event.certificate_id, f["serial"])
    serial["status"] = SerialStatus.REVOKED.value
    serial["revocation_reason"] = serial["revocation_reason"] or f["reason"]
    if serial["revocation_check"] != RevocationCheck.CONFIRMED:
        confirmed = event.type == RevocationConfirmed.TYPE
        serial.update(
            revocation_check=(RevocationCheck.CONFIRMED if confirmed else RevocationCheck.UNCONFIRMED).value,
            revocation_checked_at=f["confirmed_at"] if confirmed else f["given_up_at"],
            revocation_crl_number=f.get("crl_number"),
        )
    row, _ = state.certificate(event, create=False)
    if row is not None and row["serial"] == f["serial"]:
        row.update(revocation_check=serial["revocation_check"], revocation_checked_at=serial["revocation_checked_at"])


def _accepted(state: _State, event: InventoryEvent, f: dict[str, Any]) -> None:
    row, newest = state.certificate(event, create=f["kind"] != RequestKind.REVOKE.value, request=True)
    if row is None:
        return
    row["requester"] = f["requester"]  # acceptances are in the gateway's topic order: the last is the newest
    if not newest:
        return
    # a new request: an earlier one's error is no longer the certificate's
    row.update(request_id=f["request_id"], last_error_code=None)
    for name in ("profile", "connector", "issuance_id"):
        if f.get(name) is not None:
            row[name] = f[name]
    if row["serial"] is None and row["status"] == CertificateStatus.FAILED:
        row["status"] = CertificateStatus.PENDING.value


def _apply(state: _State, event: InventoryEvent) -> None:
    """Fold one event. Facts (serials issued and revoked, each target's newest outcome)
    apply whenever they arrive; the request fields (request, issuance, pending or failed,
    last error) follow the newest request event; the last event is the newest event."""
    f = event.fields
    kind = event.type
    if kind == RequestAccepted.TYPE:
        _accepted(state, event, f)
    elif kind == IssuancePending.TYPE:
        row, newest = state.certificate(event, create=True, request=True)
        assert row is not None
        if newest:
            row.update(issuance_id=f["issuance_id"], connector=f["connector"], request_id=f["request_id"])
            if row["serial"] is None:
                row["status"] = CertificateStatus.PENDING.value
    elif kind == CertificateIssued.TYPE:
        _issued(state, event, f)
    elif kind == IssuanceFailed.TYPE:
        row, newest = state.certificate(event, create=True, request=True)
        assert row is not None
        if newest:
            row["last_error_code"] = f["error"]
        if row["serial"] is None and (newest or f["request_id"] == row["request_id"]):
            # also when only a rejection or a revocation failure is newer: the current request failed
            row["status"] = CertificateStatus.FAILED.value
    elif kind == CertificateRevoked.TYPE:
        revoked = state.serial(event.certificate_id, f["serial"])
        revoked.update(status=SerialStatus.REVOKED.value, revoked_at=f["revoked_at"], revocation_reason=f["reason"])
        row, _ = state.certificate(event, create=False)
        if row is not None and row["serial"] in (None, f["serial"]):
            row.update(
                status=CertificateStatus.REVOKED.value,
                serial=f["serial"],
                revoked_at=f["revoked_at"],
                revocation_reason=f["reason"],
                revocation_check=revoked["revocation_check"],
                revocation_checked_at=revoked["revocation_checked_at"],
            )
    elif kind in (CertificateDeployed.TYPE, DeploymentFailed.TYPE):
        target = state.deployment(event, f["target_kind"], f["target_name"])
        if target is not None:
            target.update(
                status="deployed" if kind == CertificateDeployed.TYPE else "failed",
                serial=f["serial"],
                verified_serial=f.get("verified_serial"),
                rolled_back=f.get("rolled_back"),
                error_code=f.get("error"),
                event_id=event.id,
                updated_at=event.time,
            )
        state.certificate(event, create=False)
    elif kind in (RevocationConfirmed.TYPE, RevocationUnconfirmed.TYPE):
        _revocation_checked(state, event, f)
    elif kind == RevokedOutOfBand.TYPE:
        _revoked_out_of_band(state, event, f)
    elif kind == CertificateSuperseded.TYPE:
        _superseded(state, event, f)
    elif kind == RequestRejected.TYPE and f["error"] in _NOT_ABOUT_THE_CERTIFICATE:
        return  # a refused caller's rejection says nothing about the certificate it named (gateways before 2026-12)
    elif kind in (RequestRejected.TYPE, RevocationFailed.TYPE):
        row, newest = state.certificate(event, create=False, request=True)
        if row is not None and newest:
            row["last_error_code"] = f["error"]
    else:  # RenewalDue, CertificateExpiring
        state.certificate(event, create=False)


@functools.cache
def _load_query(table: Table, dialect: str) -> TextualSelect:
    """``table``'s rows for the wanted certificate ids: one cached statement whatever the batch (an IN list of
    bound parameters is rendered anew for every batch). SQLite: the ids as a JSON array, each looked up in the
    key's index; PostgreSQL: joined from an array (index lookups whatever the statistics say; see
    store._first_occurrences)."""
    columns = ", ".join(f't."{c.name}"' for c in table.columns)
    if dialect == "postgresql":
        query = text(f'SELECT {columns} FROM "{table.name}" AS t '
                     "JOIN unnest(CAST(:ids AS VARCHAR[])) AS wanted(id) ON t.certificate_id = wanted.id")
    else:
        query = text(f'SELECT {columns} FROM "{table.name}" AS t WHERE t.certificate_id IN (SELECT value FROM json_each(:ids))')
    return query.columns(*table.columns)


def _load(session: Session, table: Table, certificate_ids: Sequence[str]) -> list[dict[str, Any]]:
    dialect = session.get_bind().dialect.name
    ids: Any = list(certificate_ids) if dialect == "postgresql" else json.dumps(list(certificate_ids))
    return [r._mapping for r in core(session).execute(_load_query(table, dialect), {"ids": ids})]


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
    """Fold ``events`` (each topic's in its order; the topics' in any order) into the inventory;
    returns how many there were."""
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
