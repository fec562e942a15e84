"""issuer: serials watched on their CA's CRL for revocations made outside certrail (issue 20)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 17:00:00

``issuer_watched_serials``: one row per serial the issuer issued (filled from its own issued operations), marked
revoked_out_of_band with the RevokedOutOfBand records once its CRL lists it without a revocation of certrail's.
``issuer_crl_watch``: per connector, when its CRL was last read for that watch and how it went (decision 0030).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "issuer_watched_serials",
        sa.Column("connector", sa.String(length=63), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("certificate_id", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("op_key", sa.String(length=200), nullable=False),
        sa.Column("not_after", UTC, nullable=False),
        sa.Column("distribution_point", sa.String(length=2048), nullable=True),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("revoked_at_ca", UTC, nullable=True),
        sa.Column("crl_number", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("detected_at", UTC, nullable=True),
        sa.Column("published_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("connector", "serial", name=op.f("pk_issuer_watched_serials")),
    )
    op.create_index("ix_issuer_watched_serials_live", "issuer_watched_serials", ["connector", "state", "not_after"])
    op.create_table(
        "issuer_crl_watch",
        sa.Column("connector", sa.String(length=63), nullable=False),
        sa.Column("started_at", UTC, nullable=False),
        sa.Column("last_attempt_at", UTC, nullable=False),
        sa.Column("last_ok_at", UTC, nullable=True),
        sa.Column("next_at", UTC, nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=2000), nullable=True),
        sa.Column("crl_number", sa.String(length=64), nullable=True),
        sa.Column("live_serials", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("connector", name=op.f("pk_issuer_crl_watch")),
    )


def downgrade() -> None:
    op.drop_table("issuer_crl_watch")
    op.drop_index("ix_issuer_watched_serials_live", table_name="issuer_watched_serials")
    op.drop_table("issuer_watched_serials")
