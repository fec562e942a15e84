"""deployer: the profile's on_external_revocation in its projection (issue 20, decision 0030 amended)

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07 00:00:00

``deployer_profile_kinds`` gains ``on_external_revocation`` (notify | replace), learnt from the ProfileCreated /
ProfileUpdated admin events like ``on_revocation``: a certificate revoked at the CA directly is taken off its
targets (``on_revocation: remove``) only when no replacement comes. Existing rows get NULL: read as notify, the
gateway's default, until the profile's next change tells the deployer.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0026"
down_revision: str | Sequence[str] | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployer_profile_kinds") as batch:
        batch.add_column(sa.Column("on_external_revocation", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployer_profile_kinds") as batch:
        batch.drop_column("on_external_revocation")
