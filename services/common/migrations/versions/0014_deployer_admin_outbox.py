"""deployer: the admin-event outbox of targets and bindings (decision 0019)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 00:00:00

Every change to the deployer's deployment targets and bindings is written in one transaction with
its admin event, as a row of ``deployer_admin_outbox`` (services/deployer/config/). The deployer's
relay publishes every unsent row, in ``seq`` order, with the same bytes (so the same event id), to
``<prefix>.events.deployer``. A refused change writes only its row.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TYPE = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deployer_admin_outbox",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("event_type", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", UTC_TYPE, nullable=False),
        sa.Column("sent_at", UTC_TYPE, nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_deployer_admin_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_deployer_admin_outbox_event_id")),
    )
    op.create_index("ix_deployer_admin_outbox_sent_at", "deployer_admin_outbox", ["sent_at", "seq"])


def downgrade() -> None:
    op.drop_index("ix_deployer_admin_outbox_sent_at", table_name="deployer_admin_outbox")
    op.drop_table("deployer_admin_outbox")
