"""gateway: provisioning profiles, API tokens, requester keys, request dedupe, managed
certificates, scheduler notices and leases

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-27 00:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "gateway_profiles",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("connector", sa.String(length=63), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_gateway_profiles")),
    )
    op.create_index("ix_gateway_profiles_connector", "gateway_profiles", ["connector"])
    op.create_table(
        "gateway_tokens",
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("identity", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("profiles", sa.Text(), nullable=True),
        sa.Column("description", sa.String(length=256), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=True),
        sa.Column("revoked_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_gateway_tokens")),
    )
    op.create_table(
        "gateway_requester_keys",
        sa.Column("requester", sa.String(length=128), nullable=False),
        sa.Column("key_id", sa.String(length=128), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=True),
        sa.Column("secrets_key_id", sa.String(length=16), nullable=True),
        sa.Column("public_key_pem", sa.Text(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("revoked_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("requester", "key_id", name=op.f("pk_gateway_requester_keys")),
    )
    op.create_table(
        "gateway_requests",
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("requester", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("certificate_id", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("outbound", sa.Text(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_gateway_requests")),
    )
    op.create_index("ix_gateway_requests_certificate", "gateway_requests", ["certificate_id"])
    op.create_table(
        "gateway_certificates",
        sa.Column("certificate_id", sa.String(length=200), nullable=False),
        sa.Column("profile", sa.String(length=128), nullable=False),
        sa.Column("connector", sa.String(length=63), nullable=False),
        sa.Column("requester", sa.String(length=128), nullable=False),
        sa.Column("key_generation", sa.String(length=16), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("sans", sa.Text(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("certificate_id", name=op.f("pk_gateway_certificates")),
    )
    op.create_index("ix_gateway_certificates_profile", "gateway_certificates", ["profile"])
    op.create_table(
        "gateway_notices",
        sa.Column("certificate_id", sa.String(length=200), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("sent_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("certificate_id", "serial", "kind", name=op.f("pk_gateway_notices")),
    )
    op.create_table(
        "gateway_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_gateway_leases")),
    )


def downgrade() -> None:
    op.drop_table("gateway_leases")
    op.drop_table("gateway_notices")
    op.drop_index("ix_gateway_certificates_profile", table_name="gateway_certificates")
    op.drop_table("gateway_certificates")
    op.drop_index("ix_gateway_requests_certificate", table_name="gateway_requests")
    op.drop_table("gateway_requests")
    op.drop_table("gateway_requester_keys")
    op.drop_table("gateway_tokens")
    op.drop_index("ix_gateway_profiles_connector", table_name="gateway_profiles")
    op.drop_table("gateway_profiles")
