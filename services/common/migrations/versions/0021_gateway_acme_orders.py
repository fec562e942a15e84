"""gateway: ACME orders, authorizations and challenges (issue 22, slice 2a; decision 0033)

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 00:00:00

``gateway_acme_orders``: an account's orders (identifiers, authorization ids, the profiles that allow them,
status, expiry, the problem of an invalid order). ``gateway_acme_authorizations``: one account's claim on one
identifier (reused by later orders while valid); ``validating`` names the one challenge being validated.
``gateway_acme_challenges``: http-01 / dns-01 challenges with their tokens. services/gateway/acme/orders*.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0021"
down_revision: str | Sequence[str] | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "gateway_acme_orders",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("identifiers", sa.Text(), nullable=False),
        sa.Column("authz_ids", sa.Text(), nullable=False),
        sa.Column("profiles", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("expires_at", UTC, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_gateway_acme_orders")),
    )
    op.create_index("ix_gateway_acme_orders_account", "gateway_acme_orders", ["account_id", "status"])
    op.create_table(
        "gateway_acme_authorizations",
        sa.Column("authz_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("identifier", sa.String(length=260), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("validating", sa.String(length=64), nullable=True),
        sa.Column("expires_at", UTC, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("authz_id", name=op.f("pk_gateway_acme_authorizations")),
    )
    op.create_index("ix_gateway_acme_authorizations_reuse", "gateway_acme_authorizations",
                    ["account_id", "identifier", "status"])
    op.create_table(
        "gateway_acme_challenges",
        sa.Column("challenge_id", sa.String(length=64), nullable=False),
        sa.Column("authz_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("token", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("validated_at", UTC, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("challenge_id", name=op.f("pk_gateway_acme_challenges")),
    )
    op.create_index("ix_gateway_acme_challenges_authz", "gateway_acme_challenges", ["authz_id"])


def downgrade() -> None:
    op.drop_index("ix_gateway_acme_challenges_authz", table_name="gateway_acme_challenges")
    op.drop_table("gateway_acme_challenges")
    op.drop_index("ix_gateway_acme_authorizations_reuse", table_name="gateway_acme_authorizations")
    op.drop_table("gateway_acme_authorizations")
    op.drop_index("ix_gateway_acme_orders_account", table_name="gateway_acme_orders")
    op.drop_table("gateway_acme_orders")
