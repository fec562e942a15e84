"""issuer: revocations to confirm on the CA's CRL; the inventory's record of the confirmation (issue 20)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 00:00:00

``issuer_revocation_checks``: one row per revocation emCA accepted, written with the revocation's outcome and
polled by the issuer until its CRL lists the serial with the requested reason (services/issuer/revocation/,
decision 0025). ``certificate_serials`` and ``certificate_inventory`` gain what the auditor folds from
RevocationConfirmed / RevocationUnconfirmed (nullable: rows before this have no check).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "issuer_revocation_checks",
        sa.Column("check_id", sa.String(length=128), nullable=False),
        sa.Column("certificate_id", sa.String(length=200), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("connector", sa.String(length=63), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("correlation_id", sa.String(length=128), nullable=True),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("distribution_point", sa.String(length=2048), nullable=True),
        sa.Column("checks", sa.Integer(), nullable=False),
        sa.Column("last_cause", sa.String(length=32), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("crl_number", sa.String(length=64), nullable=True),
        sa.Column("crl_this_update", UTC, nullable=True),
        sa.Column("listed_reason", sa.String(length=32), nullable=True),
        sa.Column("next_check_at", UTC, nullable=False),
        sa.Column("deadline_at", UTC, nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.Column("published_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("check_id", name=op.f("pk_issuer_revocation_checks")),
    )
    op.create_index("ix_issuer_revocation_checks_due", "issuer_revocation_checks", ["state", "next_check_at"])
    for table in ("certificate_serials", "certificate_inventory"):  # nullable columns: no table copy on SQLite
        op.add_column(table, sa.Column("revocation_check", sa.String(length=16), nullable=True))
        op.add_column(table, sa.Column("revocation_checked_at", UTC, nullable=True))
    op.add_column("certificate_serials", sa.Column("revocation_crl_number", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("certificate_serials") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("revocation_crl_number")
    for table in ("certificate_inventory", "certificate_serials"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("revocation_checked_at")
            batch.drop_column("revocation_check")
    op.drop_index("ix_issuer_revocation_checks_due", table_name="issuer_revocation_checks")
    op.drop_table("issuer_revocation_checks")
