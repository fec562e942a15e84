"""gateway: its own projection of issued and revoked serials (decision 0017), filled once from
the auditor's inventory as it is at upgrade time

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 00:00:00

Renew, revoke and the renewal scheduler read ``gateway_issued_serials`` instead of the
auditor's ``certificate_inventory`` / ``certificate_serials``. From here on the gateway folds
CertificateIssued and CertificateRevoked from ``<prefix>.events.issuer`` into it
(services/gateway/issued.py); what it already had is copied once, so an upgraded installation
keeps renewing and revoking its certificates. Only certificates the gateway manages (a
``gateway_certificates`` row) are copied, as only they are folded later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TYPE = sa.DateTime(timezone=True)
MIGRATED = "migration-0011"
COLUMNS = ("certificate_id, serial, status, issuer, not_before, not_after, profile, connector, sans, request_id, "
           "issuance_id, event_id, issued_at, revoked_at, revocation_reason")

# every serial the inventory recorded; an active serial that is not the certificate's current one
# is superseded (the inventory keeps one active serial per certificate: this only makes it certain)
FILL_SERIALS = f"""
INSERT INTO gateway_issued_serials ({COLUMNS})
SELECT s.certificate_id, s.serial,
       CASE WHEN s.status = 'active' AND (i.serial IS NULL OR i.serial <> s.serial) THEN 'superseded' ELSE s.status END,
       s.issuer, s.not_before, s.not_after, COALESCE(i.profile, g.profile), COALESCE(i.connector, g.connector),
       CASE WHEN i.serial = s.serial THEN i.sans END, s.request_id, s.issuance_id, :event_id, s.issued_at,
       s.revoked_at, s.revocation_reason
FROM certificate_serials s
JOIN gateway_certificates g ON g.certificate_id = s.certificate_id
LEFT JOIN certificate_inventory i ON i.certificate_id = s.certificate_id
"""

# a current serial the serials table lacks (kept by the inventory row only); its issue time is
# unknown: the inventory row's last update stands for it, so that a replayed older issuance
# (the gateway reads events.issuer from its start on its first run) does not take its place
FILL_CURRENT = f"""
INSERT INTO gateway_issued_serials ({COLUMNS})
SELECT i.certificate_id, i.serial, CASE WHEN i.status = 'revoked' THEN 'revoked' ELSE 'active' END,
       i.issuer, i.not_before, i.not_after, COALESCE(i.profile, g.profile), COALESCE(i.connector, g.connector),
       i.sans, i.request_id, i.issuance_id, :event_id, i.updated_at, i.revoked_at, i.revocation_reason
FROM certificate_inventory i
JOIN gateway_certificates g ON g.certificate_id = i.certificate_id
WHERE i.serial IS NOT NULL AND i.status IN ('active', 'revoked') AND NOT EXISTS (
    SELECT 1 FROM certificate_serials s WHERE s.certificate_id = i.certificate_id AND s.serial = i.serial)
"""


def upgrade() -> None:
    op.create_table(
        "gateway_issued_serials",
        sa.Column("certificate_id", sa.String(length=200), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("issuer", sa.String(length=1024), nullable=True),
        sa.Column("not_before", UTC_TYPE, nullable=True),
        sa.Column("not_after", UTC_TYPE, nullable=True),
        sa.Column("profile", sa.String(length=128), nullable=True),
        sa.Column("connector", sa.String(length=63), nullable=True),
        sa.Column("sans", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("issuance_id", sa.String(length=36), nullable=True),
        sa.Column("event_id", sa.String(length=128), nullable=True),
        sa.Column("issued_at", UTC_TYPE, nullable=True),
        sa.Column("revoked_at", UTC_TYPE, nullable=True),
        sa.Column("revocation_reason", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("certificate_id", "serial", name=op.f("pk_gateway_issued_serials")),
    )
    op.create_index("ix_gateway_issued_serials_serial", "gateway_issued_serials", ["serial"])
    op.create_index("ix_gateway_issued_serials_status_not_after", "gateway_issued_serials", ["status", "not_after"])
    bind = op.get_bind()
    bind.execute(sa.text(FILL_SERIALS), {"event_id": MIGRATED})
    bind.execute(sa.text(FILL_CURRENT), {"event_id": MIGRATED})


def downgrade() -> None:
    op.drop_index("ix_gateway_issued_serials_status_not_after", table_name="gateway_issued_serials")
    op.drop_index("ix_gateway_issued_serials_serial", table_name="gateway_issued_serials")
    op.drop_table("gateway_issued_serials")
