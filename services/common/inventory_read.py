"""Reading the certificate inventory (services/auditor/inventory.py builds it; the gateway's API and
console and the auditor's CLI read it: a shared read model until the auditor serves it by API, decision 0017): one certificate's view, the
certificates that had a serial, lists for the API and renewal planning, and the status counts
behind certrail_audit_inventory_certificates."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.common.db_schema import CertificateDeployment, CertificateInventory, CertificateSerial


class CertificateStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"  # derived when read
    FAILED = "failed"


def effective_status(status: str, not_after: datetime | None, now: datetime) -> str:
    """The status to show: an active certificate whose not_after has passed is expired."""
    if status == CertificateStatus.ACTIVE and not_after is not None and not_after <= now:
        return CertificateStatus.EXPIRED.value
    return status


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
