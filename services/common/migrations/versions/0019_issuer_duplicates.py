"""issuer: possible duplicate issuances and their resolution (issue 20, decision 0032)

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 00:00:00

``issuer_duplicates``: one row per issuance published as POSSIBLE_DUPLICATE (4.2.x, no applicationId dedupe),
written with the issuance's outcome; an operator resolves it through the gateway's API (the extra serial checked
and revoked as superseded, or none at emCA). services/issuer/duplicates/.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0019"
down_revision: str | Sequence[str] | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "issuer_duplicates",
        sa.Column("issuance_id", sa.String(length=200), nullable=False),
        sa.Column("certificate_id", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("correlation_id", sa.String(length=128), nullable=True),
        sa.Column("detected_event_id", sa.String(length=128), nullable=False),
        sa.Column("connector", sa.String(length=63), nullable=False),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("delivered_serial", sa.String(length=64), nullable=False),
        sa.Column("public_key_sha256", sa.String(length=64), nullable=False),
        sa.Column("detected_at", UTC, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("resolution", sa.String(length=16), nullable=True),
        sa.Column("extra_serial", sa.String(length=64), nullable=True),
        sa.Column("note", sa.String(length=1000), nullable=True),
        sa.Column("resolved_by", sa.String(length=128), nullable=True),
        sa.Column("resolved_at", UTC, nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("published_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("issuance_id", name=op.f("pk_issuer_duplicates")),
    )
    op.create_index("ix_issuer_duplicates_state", "issuer_duplicates", ["state", "connector"])
    op.create_index("ix_issuer_duplicates_certificate", "issuer_duplicates", ["certificate_id"])


def downgrade() -> None:
    op.drop_index("ix_issuer_duplicates_certificate", table_name="issuer_duplicates")
    op.drop_index("ix_issuer_duplicates_state", table_name="issuer_duplicates")
    op.drop_table("issuer_duplicates")
