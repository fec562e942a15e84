"""connectors: the emCA connector registry

Revision ID: 0003
Revises: 0002
Create Date: 2026-01-20 00:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "emca_connectors",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=16), nullable=False),
        sa.Column("base_url", sa.String(length=2048), nullable=False),
        sa.Column("username", sa.String(length=256), nullable=False),
        sa.Column("issuing_ca", sa.String(length=256), nullable=False),
        sa.Column("subscriber_id", sa.String(length=256), nullable=False),
        sa.Column("default_profile", sa.String(length=256), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("ca_bundle_pem", sa.Text(), nullable=True),
        sa.Column("pinned_ca_sha256", sa.String(length=64), nullable=False),
        sa.Column("pinned_chain_pem", sa.Text(), nullable=False),
        sa.Column("secrets", sa.LargeBinary(), nullable=False),
        sa.Column("secrets_key_id", sa.String(length=16), nullable=False),
        sa.Column("secret_fields", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.String(length=2000), nullable=True),
        sa.Column("last_test_ok", sa.Boolean(), nullable=True),
        sa.Column("last_test_code", sa.String(length=64), nullable=True),
        sa.Column("last_test_message", sa.String(length=2000), nullable=True),
        sa.Column("last_tested_at", UTC, nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_emca_connectors")),
    )


def downgrade() -> None:
    op.drop_table("emca_connectors")
