"""Reading the certificate inventory (services/auditor/inventory.py builds it): one certificate's
view, the certificates that had a serial, pages of views for the internal API (``/internal/v1/certificates``,
decision 0020) and the CLI, and the status counts behind certrail_audit_inventory_certificates.
Only the auditor and the operator's CLI read these tables."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.common.db_schema import CertificateDeployment, CertificateInventory, CertificateSerial
from services.common.inventory_read import CertificateStatus, CertificateView, effective_status


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
    profiles: Collection[str] | None = None,
    profile: str | None = None,
    connector: str | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> list[CertificateView]:
    """Inventory views ordered by not_after (soonest first; never issued last), then id, optionally
    only one (effective) status, only those expiring before a time (renewal planning), only under
    ``profiles`` (a scope: None is every profile, empty is none), one profile or one connector."""
    inv = CertificateInventory
    query = select(inv.certificate_id).order_by(inv.not_after.is_(None), inv.not_after, inv.certificate_id)
    if not_after_before is not None:
        query = query.where(inv.not_after < not_after_before)
    if status == CertificateStatus.EXPIRED:
        query = query.where(inv.status == CertificateStatus.ACTIVE.value, inv.not_after <= now)
    elif status == CertificateStatus.ACTIVE:
        query = query.where(inv.status == status, inv.not_after > now)
    elif status is not None:
        query = query.where(inv.status == status)
    if profiles is not None:
        if not profiles:
            return []
        query = query.where(inv.profile.in_(sorted(profiles)))
    if profile is not None:
        query = query.where(inv.profile == profile)
    if connector is not None:
        query = query.where(inv.connector == connector)
    views = (get_certificate(session, cid, now) for cid in session.scalars(query.offset(offset).limit(limit)))
    return [v for v in views if v is not None]


#: the statuses certrail_audit_inventory_certificates reports ("expired": active and past not_after)
INVENTORY_STATUSES = ("pending", "active", "expired", "revoked", "superseded", "failed")


def inventory_status_counts(session: Session, now: datetime) -> dict[str, int]:
    """How many inventory certificates have each effective status."""
    inv = CertificateInventory
    counts: dict[str, int] = {}
    expired = (inv.status == CertificateStatus.ACTIVE.value) & (inv.not_after.is_not(None)) & (inv.not_after <= now)
    for status, is_expired, n in session.execute(select(inv.status, expired, func.count()).group_by(inv.status, expired)):
        key = "expired" if is_expired else status
        counts[key] = counts.get(key, 0) + int(n)
    return counts
