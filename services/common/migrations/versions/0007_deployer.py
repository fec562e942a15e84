"""deployer: deployment targets, profile bindings, deployments, bot-held keys

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 00:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deployer_targets",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("secrets", sa.LargeBinary(), nullable=True),
        sa.Column("secrets_key_id", sa.String(length=16), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_deployer_targets")),
    )
    op.create_table(
        "deployer_bindings",
        sa.Column("profile", sa.String(length=128), nullable=False),
        sa.Column("target_name", sa.String(length=128), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("profile", "target_name", name=op.f("pk_deployer_bindings")),
    )
    op.create_table(
        "deployer_deployments",
        sa.Column("certificate_id", sa.String(length=200), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("target_name", sa.String(length=128), nullable=False),
        sa.Column("target_kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("rolled_back", sa.Boolean(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.String(length=2000), nullable=True),
        sa.Column("cause_id", sa.String(length=128), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("chain_pem", sa.Text(), nullable=False),
        sa.Column("public_key_sha256", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("started_at", UTC, nullable=False),
        sa.Column("finished_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("certificate_id", "serial", "target_name", name=op.f("pk_deployer_deployments")),
    )
    op.create_index("ix_deployer_deployments_target", "deployer_deployments", ["target_name", "status"])
    op.create_table(
        "deployer_bot_keys",
        sa.Column("cause_id", sa.String(length=128), nullable=False),
        sa.Column("certificate_id", sa.String(length=200), nullable=False),
        sa.Column("profile", sa.String(length=128), nullable=False),
        sa.Column("public_key_sha256", sa.String(length=64), nullable=False),
        sa.Column("key_algorithm", sa.String(length=16), nullable=False),
        sa.Column("private_key", sa.LargeBinary(), nullable=False),
        sa.Column("private_key_key_id", sa.String(length=16), nullable=False),
        sa.Column("csr_pem", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("request_event", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=True),
        sa.Column("replaces_serial", sa.String(length=40), nullable=True),
        sa.Column("certificate_pem", sa.Text(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("issued_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("cause_id", name=op.f("pk_deployer_bot_keys")),
        sa.UniqueConstraint("certificate_id", "public_key_sha256", name=op.f("uq_deployer_bot_keys_certificate_id")),
    )
    op.create_index("ix_deployer_bot_keys_serial", "deployer_bot_keys", ["certificate_id", "serial"])


def downgrade() -> None:
    op.drop_index("ix_deployer_bot_keys_serial", table_name="deployer_bot_keys")
    op.drop_table("deployer_bot_keys")
    op.drop_index("ix_deployer_deployments_target", table_name="deployer_deployments")
    op.drop_table("deployer_deployments")
    op.drop_table("deployer_bindings")
    op.drop_table("deployer_targets")
