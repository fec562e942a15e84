"""gateway: the admin-event outbox (decision 0019)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 00:00:00

Every configuration change the gateway owns (connectors, profiles, tokens, requester keys) is
written in one transaction with its admin event, as a row of ``gateway_admin_outbox``
(services/gateway/config/). The caller publishes it after the commit and sets ``sent_at``; the
gateway's relay publishes every row still unsent, in ``seq`` order, with the same bytes (so the
same event id). A refused change writes only its row.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TYPE = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "gateway_admin_outbox",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("event_type", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", UTC_TYPE, nullable=False),
        sa.Column("sent_at", UTC_TYPE, nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_gateway_admin_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_gateway_admin_outbox_event_id")),
    )
    op.create_index("ix_gateway_admin_outbox_sent_at", "gateway_admin_outbox", ["sent_at", "seq"])


def downgrade() -> None:
    op.drop_index("ix_gateway_admin_outbox_sent_at", table_name="gateway_admin_outbox")
    op.drop_table("gateway_admin_outbox")
