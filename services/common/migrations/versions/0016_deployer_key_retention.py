"""deployer: bot-held keys retired (issue 20, decision 0026)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 00:00:00

``deployer_bot_keys`` gains ``superseded_at`` (when the key stopped being needed), ``retire_reason``
(superseded | key_compromise) and ``destroyed_at``; ``private_key`` becomes nullable: a destroyed key's
row stays as a tombstone without its key (services/deployer/retention.py). Keys already superseded
when this runs (an older key of a certificate whose newer key's serial is deployed) are marked
superseded now: their grace period starts at the upgrade.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TYPE = sa.DateTime(timezone=True)

_BACKFILL = """
UPDATE deployer_bot_keys SET superseded_at = :now, retire_reason = 'superseded'
WHERE superseded_at IS NULL AND EXISTS (
    SELECT 1 FROM deployer_bot_keys newer JOIN deployer_deployments d
      ON d.certificate_id = newer.certificate_id AND d.serial = newer.serial AND d.status = 'deployed'
    WHERE newer.certificate_id = deployer_bot_keys.certificate_id AND newer.created_at > deployer_bot_keys.created_at)
"""


def upgrade() -> None:
    with op.batch_alter_table("deployer_bot_keys") as batch:  # SQLite changes a column's nullability by copying the table
        batch.alter_column("private_key", existing_type=sa.LargeBinary(), nullable=True)
        batch.add_column(sa.Column("superseded_at", UTC_TYPE, nullable=True))
        batch.add_column(sa.Column("retire_reason", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("destroyed_at", UTC_TYPE, nullable=True))
    op.create_index("ix_deployer_bot_keys_retention", "deployer_bot_keys", ["destroyed_at", "superseded_at"])
    now = datetime.now(UTC)
    bind = op.get_bind()
    bind.execute(sa.text(_BACKFILL).bindparams(sa.bindparam("now", type_=UTC_TYPE)),
                 {"now": now.replace(tzinfo=None) if bind.dialect.name == "sqlite" else now})


def downgrade() -> None:
    op.drop_index("ix_deployer_bot_keys_retention", table_name="deployer_bot_keys")
    op.execute("DELETE FROM deployer_bot_keys WHERE private_key IS NULL")  # destroyed keys: nothing to give back
    with op.batch_alter_table("deployer_bot_keys") as batch:
        batch.drop_column("destroyed_at")
        batch.drop_column("retire_reason")
        batch.drop_column("superseded_at")
        batch.alter_column("private_key", existing_type=sa.LargeBinary(), nullable=False)
