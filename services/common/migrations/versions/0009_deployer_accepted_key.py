"""deployer: the key of the CSR each accepted request carried (RequestAccepted.public_key_sha256)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 00:00:00

Nothing is filled in: a row from before the field (copied by 0008, or written from a
RequestAccepted without it) keeps its NULL, and the deployer checks such a certificate as it did
before, without a key expectation (docs/decisions/0011-deployer-trusts-nothing.md, "Amendment").
The next accepted issue or renew request of the certificate sets it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("deployer_accepted_certificates", sa.Column("public_key_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployer_accepted_certificates") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("public_key_sha256")
