"""audit: the auditor's audit log, chain heads, verify runs and the certificate inventory

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-15 00:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger(), nullable=True),
        sa.Column("timestamp_type", sa.Integer(), nullable=True),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.Column("headers", sa.Text(), nullable=True),
        sa.Column("private_keys_removed", sa.Integer(), nullable=False),
        sa.Column("original_sha256", sa.String(length=64), nullable=True),
        sa.Column("original_size", sa.Integer(), nullable=True),
        sa.Column("decode_error", sa.String(length=64), nullable=True),
        sa.Column("decode_reason", sa.String(length=2000), nullable=True),
        sa.Column("event_id", sa.String(length=128), nullable=True),
        sa.Column("event_type", sa.String(length=200), nullable=True),
        sa.Column("source", sa.String(length=256), nullable=True),
        sa.Column("subject", sa.String(length=256), nullable=True),
        sa.Column("correlation_id", sa.String(length=128), nullable=True),
        sa.Column("causation_id", sa.String(length=128), nullable=True),
        sa.Column("event_time", UTC, nullable=True),
        sa.Column("certificate_id", sa.String(length=200), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("first_topic", sa.String(length=249), nullable=True),
        sa.Column("first_partition", sa.Integer(), nullable=True),
        sa.Column("first_offset", sa.BigInteger(), nullable=True),
        sa.Column("prev_offset", sa.BigInteger(), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("row_hash", sa.String(length=64), nullable=False),
        sa.Column("stored_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_records")),
        sa.UniqueConstraint("topic", "partition", "offset", name=op.f("uq_audit_records_topic")),
    )
    for column in ("event_id", "certificate_id", "request_id", "timestamp_ms"):
        op.create_index(f"ix_audit_records_{column}", "audit_records", [column], unique=False)

    op.create_table(
        "audit_chain_heads",
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("row_hash", sa.String(length=64), nullable=False),
        sa.Column("records", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("topic", "partition", name=op.f("pk_audit_chain_heads")),
    )

    op.create_table(
        "audit_verify_runs",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("started_at", UTC, nullable=False),
        sa.Column("finished_at", UTC, nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("rows_checked", sa.BigInteger(), nullable=False),
        sa.Column("problems", sa.Integer(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_verify_runs")),
    )

    op.create_table(
        "certificate_inventory",
        sa.Column("certificate_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=True),
        sa.Column("subject", sa.String(length=1024), nullable=True),
        sa.Column("sans", sa.Text(), nullable=True),
        sa.Column("issuer", sa.String(length=1024), nullable=True),
        sa.Column("not_before", UTC, nullable=True),
        sa.Column("not_after", UTC, nullable=True),
        sa.Column("connector", sa.String(length=63), nullable=True),
        sa.Column("profile", sa.String(length=128), nullable=True),
        sa.Column("requester", sa.String(length=128), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("issuance_id", sa.String(length=36), nullable=True),
        sa.Column("public_key_sha256", sa.String(length=64), nullable=True),
        sa.Column("revoked_at", UTC, nullable=True),
        sa.Column("revocation_reason", sa.String(length=32), nullable=True),
        sa.Column("last_error_code", sa.String(length=64), nullable=True),
        sa.Column("last_event_id", sa.String(length=128), nullable=False),
        sa.Column("last_event_type", sa.String(length=200), nullable=False),
        sa.Column("last_event_at", UTC, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("certificate_id", name=op.f("pk_certificate_inventory")),
    )
    op.create_index("ix_certificate_inventory_not_after", "certificate_inventory", ["not_after"], unique=False)

    op.create_table(
        "certificate_serials",
        sa.Column("certificate_id", sa.String(length=200), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("issuer", sa.String(length=1024), nullable=True),
        sa.Column("not_before", UTC, nullable=True),
        sa.Column("not_after", UTC, nullable=True),
        sa.Column("issuance_id", sa.String(length=36), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("issued_at", UTC, nullable=True),
        sa.Column("revoked_at", UTC, nullable=True),
        sa.Column("revocation_reason", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("certificate_id", "serial", name=op.f("pk_certificate_serials")),
    )
    op.create_index("ix_certificate_serials_serial", "certificate_serials", ["serial"], unique=False)

    op.create_table(
        "certificate_deployments",
        sa.Column("certificate_id", sa.String(length=200), nullable=False),
        sa.Column("target_kind", sa.String(length=32), nullable=False),
        sa.Column("target_name", sa.String(length=256), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("verified_serial", sa.String(length=40), nullable=True),
        sa.Column("rolled_back", sa.Boolean(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint(
            "certificate_id", "target_kind", "target_name", name=op.f("pk_certificate_deployments")
        ),
    )


def downgrade() -> None:
    op.drop_table("certificate_deployments")
    op.drop_index("ix_certificate_serials_serial", table_name="certificate_serials")
    op.drop_table("certificate_serials")
    op.drop_index("ix_certificate_inventory_not_after", table_name="certificate_inventory")
    op.drop_table("certificate_inventory")
    op.drop_table("audit_verify_runs")
    op.drop_table("audit_chain_heads")
    for column in ("event_id", "certificate_id", "request_id", "timestamp_ms"):
        op.drop_index(f"ix_audit_records_{column}", table_name="audit_records")
    op.drop_table("audit_records")
