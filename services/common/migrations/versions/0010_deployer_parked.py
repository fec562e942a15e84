"""deployer: certificates held back until the gateway event that lets them be installed arrives

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 00:00:00

The gateway's and the issuer's events travel on two topics since decision 0016, so a deployer
may see a CertificateIssued before the RequestAccepted (or pin, or renewal key) it is checked
against. Such a certificate waits here, for a bounded time, instead of being refused at once
(services/deployer/parking.py). Starts empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TYPE = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deployer_parked_certificates",
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("certificate_id", sa.String(length=200), nullable=False),
        sa.Column("connector", sa.String(length=63), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("parked_at", UTC_TYPE, nullable=False),
        sa.Column("deadline", UTC_TYPE, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_deployer_parked_certificates")),
    )
    op.create_index("ix_deployer_parked_certificates_certificate_id", "deployer_parked_certificates", ["certificate_id"])
    op.create_index("ix_deployer_parked_certificates_connector", "deployer_parked_certificates", ["connector"])
    op.create_index("ix_deployer_parked_certificates_deadline", "deployer_parked_certificates", ["deadline"])


def downgrade() -> None:
    op.drop_table("deployer_parked_certificates")
