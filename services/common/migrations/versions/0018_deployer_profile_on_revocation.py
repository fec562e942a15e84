"""deployer: the profile's on_revocation in its projection (issue 20, decision 0028)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 00:00:00

``deployer_profile_kinds`` gains ``on_revocation`` (keep | remove), learnt from the ProfileCreated /
ProfileUpdated admin events like ``key_generation``. Existing rows get NULL: the profile never said, which
means keep (what happened before the setting existed).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployer_profile_kinds") as batch:
        batch.add_column(sa.Column("on_revocation", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployer_profile_kinds") as batch:
        batch.drop_column("on_revocation")
