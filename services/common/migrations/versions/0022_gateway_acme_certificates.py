"""gateway: ACME certificates (issue 22, slice 2b; decision 0033)

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 00:00:00

``gateway_acme_certificates``: the certificate of a finalized ACME order (one per order), as the gateway folded
the issuer's CertificateIssued: its managed certificate id, serial, PEM and chain (public material only), kept for
the download (``/acme/cert/{order id}``) and revokeCert (found by serial). services/gateway/acme/certificates.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0022"
down_revision: str | Sequence[str] | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "gateway_acme_certificates",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("certificate_id", sa.String(length=200), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("certificate", sa.Text(), nullable=False),
        sa.Column("chain", sa.Text(), nullable=False),
        sa.Column("issued_at", UTC, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_gateway_acme_certificates")),
    )
    op.create_index("ix_gateway_acme_certificates_serial", "gateway_acme_certificates", ["serial"])


def downgrade() -> None:
    op.drop_index("ix_gateway_acme_certificates_serial", table_name="gateway_acme_certificates")
    op.drop_table("gateway_acme_certificates")
