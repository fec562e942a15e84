"""The inventory's status counts behind certrail_audit_inventory_certificates: "expired" is
derived (active and past not_after), the other statuses are as stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.auditor.inventory_read import inventory_status_counts
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import CertificateInventory
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def _row(certificate_id: str, status: str, not_after: datetime | None) -> CertificateInventory:
    return CertificateInventory(
        certificate_id=certificate_id, status=status, serial=None, subject=None, sans=None, issuer=None, not_before=None,
        not_after=not_after, connector="c", profile="p", requester=None, request_id=None, issuance_id=None,
        public_key_sha256=None, revoked_at=None, revocation_reason=None, last_error_code=None, last_event_id="e",
        last_event_type="t", last_event_at=NOW, created_at=NOW, updated_at=NOW)


def test_status_counts_derive_expired(tmp_path: Path) -> None:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'a.db'}")
    upgrade(db)
    engine = make_engine(db)
    try:
        with write_session(engine) as session:
            session.add_all([
                _row("a1", "active", NOW + timedelta(days=30)), _row("a2", "active", NOW + timedelta(days=1)),
                _row("x1", "active", NOW - timedelta(days=1)), _row("p1", "pending", None),
                _row("r1", "revoked", NOW + timedelta(days=3)), _row("f1", "failed", None),
            ])
        with read_session(engine) as session:
            assert inventory_status_counts(session, NOW) == {"active": 2, "expired": 1, "pending": 1, "revoked": 1, "failed": 1}
    finally:
        engine.dispose()
