"""gateway: the certificate an ACME order replaces (issue 22, RFC 9773 5; decision 0033, addendum of 2026-12-07)

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 00:10:00

``gateway_acme_orders.replaces``: the certID (RFC 9773 4.1) of the account's certificate a newOrder named in
``replaces``, NULL for the orders before it and those that replace nothing; indexed, for the alreadyReplaced check
(services/gateway/acme/orders.py ``check_replaces``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0023"
down_revision: str | Sequence[str] | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("gateway_acme_orders") as batch:
        batch.add_column(sa.Column("replaces", sa.String(length=200), nullable=True))
    op.create_index("ix_gateway_acme_orders_replaces", "gateway_acme_orders", ["replaces"])


def downgrade() -> None:
    op.drop_index("ix_gateway_acme_orders_replaces", table_name="gateway_acme_orders")
    with op.batch_alter_table("gateway_acme_orders") as batch:
        batch.drop_column("replaces")
