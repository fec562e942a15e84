"""issuer: intents, outcomes and pending approvals of the issuer's operations against emCA

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 00:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "issuer_operations",
        sa.Column("op_key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("command_id", sa.String(length=128), nullable=False),
        sa.Column("certificate_id", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("connector", sa.String(length=63), nullable=False),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("uncertain", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("ca_request_id", sa.String(length=256), nullable=True),
        sa.Column("serial", sa.String(length=64), nullable=True),
        sa.Column("possible_duplicate", sa.Boolean(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("next_poll_at", UTC, nullable=True),
        sa.Column("poll_attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.Column("outcome_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("op_key", name=op.f("pk_issuer_operations")),
    )
    op.create_index("ix_issuer_operations_pending", "issuer_operations", ["state", "topic", "partition"])
    op.create_index("ix_issuer_operations_certificate", "issuer_operations", ["certificate_id"])


def downgrade() -> None:
    op.drop_index("ix_issuer_operations_certificate", table_name="issuer_operations")
    op.drop_index("ix_issuer_operations_pending", table_name="issuer_operations")
    op.drop_table("issuer_operations")
