"""deployer: its own projections for trusting nothing (connector pins, profile key kinds,
accepted certificate ids), filled once from the rows that exist at upgrade time

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 00:00:00

"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TYPE = sa.DateTime(timezone=True)
MIGRATED = "migration-0008"


def upgrade() -> None:
    pins = op.create_table(
        "deployer_connector_pins",
        sa.Column("connector", sa.String(length=63), nullable=False),
        sa.Column("pinned_ca_sha256", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("updated_at", UTC_TYPE, nullable=False),
        sa.PrimaryKeyConstraint("connector", name=op.f("pk_deployer_connector_pins")),
    )
    kinds = op.create_table(
        "deployer_profile_kinds",
        sa.Column("profile", sa.String(length=128), nullable=False),
        sa.Column("key_generation", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("updated_at", UTC_TYPE, nullable=False),
        sa.PrimaryKeyConstraint("profile", name=op.f("pk_deployer_profile_kinds")),
    )
    accepted = op.create_table(
        "deployer_accepted_certificates",
        sa.Column("certificate_id", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("profile", sa.String(length=128), nullable=True),
        sa.Column("connector", sa.String(length=63), nullable=True),
        sa.Column("accepted_at", UTC_TYPE, nullable=False),
        sa.PrimaryKeyConstraint("certificate_id", name=op.f("pk_deployer_accepted_certificates")),
    )
    # An upgraded installation has consumed the admin events and RequestAccepted records of what
    # exists today: copy those facts once (docs/decisions/0011-deployer-trusts-nothing.md). From
    # here on the deployer learns them from certrail.events only.
    bind = op.get_bind()
    now = datetime.now(UTC)
    rows = bind.execute(sa.text("SELECT name, pinned_ca_sha256 FROM emca_connectors")).all()
    if rows:
        op.bulk_insert(pins, [{"connector": n, "pinned_ca_sha256": p.lower(), "event_id": MIGRATED, "updated_at": now}
                              for n, p in rows])
    profiles = []
    for name, spec in bind.execute(sa.text("SELECT name, spec FROM gateway_profiles")).all():
        generation = json.loads(spec).get("key_generation")
        if isinstance(generation, str):
            profiles.append({"profile": name, "key_generation": generation, "event_id": MIGRATED, "updated_at": now})
    if profiles:
        op.bulk_insert(kinds, profiles)
    certificates = bind.execute(sa.text("SELECT certificate_id, profile, connector FROM gateway_certificates")).all()
    if certificates:
        op.bulk_insert(accepted, [{"certificate_id": c, "request_id": MIGRATED, "profile": p, "connector": k, "accepted_at": now}
                                  for c, p, k in certificates])


def downgrade() -> None:
    op.drop_table("deployer_accepted_certificates")
    op.drop_table("deployer_profile_kinds")
    op.drop_table("deployer_connector_pins")
