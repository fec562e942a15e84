"""the connector registry in the issuer: the gateway's own view of the connectors, the issuer's admin outbox
(issue 18; decision 0034)

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07 02:40:00

``gateway_connectors``: one row per connector (enabled, disabled or a ``deleted`` tombstone), folded by the
gateway from the connector admin events (services/gateway/connector_view.py), so that intake and the profile
checks no longer read the issuer's ``emca_connectors``. Filled once here from that table (a misconfigured
connector takes requests: it is ``enabled`` for the gateway).

``issuer_admin_outbox``: the issuer's admin events (the connector changes), written in the transaction of the
change, published by its relay (the shape of ``gateway_admin_outbox``, decision 0019).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0025"
down_revision: str | Sequence[str] | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_connectors",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_gateway_connectors")),
    )
    op.execute(
        "INSERT INTO gateway_connectors (name, status, changed_at, event_id) "
        "SELECT name, CASE WHEN status = 'disabled' THEN 'disabled' ELSE 'enabled' END, updated_at, 'migration-0025' "
        "FROM emca_connectors"
    )
    op.create_table(
        "issuer_admin_outbox",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("event_type", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_issuer_admin_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_issuer_admin_outbox_event_id")),
    )
    op.create_index("ix_issuer_admin_outbox_sent_at", "issuer_admin_outbox", ["sent_at", "seq"])


def downgrade() -> None:
    op.drop_index("ix_issuer_admin_outbox_sent_at", table_name="issuer_admin_outbox")
    op.drop_table("issuer_admin_outbox")
    op.drop_table("gateway_connectors")
