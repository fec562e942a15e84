"""gateway: the ACME door's accounts, External Account Binding keys and nonces (issue 22, decision 0033)

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 23:00:00

``gateway_acme_eab_keys``: EAB keys (the HMAC key sealed with the gateway's secret box), each bound to the
first account that uses it. ``gateway_acme_accounts``: ACME accounts, one per public key (its RFC 7638
thumbprint is unique), with the requester and profiles of their EAB key. ``gateway_acme_nonces``: the
Replay-Nonces handed out and not yet used (shared by every gateway instance). services/gateway/acme/.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0020"
down_revision: str | Sequence[str] | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "gateway_acme_eab_keys",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("requester", sa.String(length=128), nullable=False),
        sa.Column("profiles", sa.Text(), nullable=False),
        sa.Column("hmac_key", sa.LargeBinary(), nullable=False),
        sa.Column("secrets_key_id", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("revoked_at", UTC, nullable=True),
        sa.Column("account_id", sa.String(length=64), nullable=True),
        sa.Column("bound_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_gateway_acme_eab_keys")),
    )
    op.create_index("ix_gateway_acme_eab_keys_requester", "gateway_acme_eab_keys", ["requester"])
    op.create_table(
        "gateway_acme_accounts",
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("jwk_thumbprint", sa.String(length=64), nullable=False),
        sa.Column("jwk", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("contact", sa.Text(), nullable=False),
        sa.Column("terms_agreed", sa.Boolean(), nullable=False),
        sa.Column("requester", sa.String(length=128), nullable=False),
        sa.Column("profiles", sa.Text(), nullable=False),
        sa.Column("eab_key_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_gateway_acme_accounts")),
        sa.UniqueConstraint("jwk_thumbprint", name=op.f("uq_gateway_acme_accounts_jwk_thumbprint")),
    )
    op.create_index("ix_gateway_acme_accounts_requester", "gateway_acme_accounts", ["requester"])
    op.create_table(
        "gateway_acme_nonces",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_gateway_acme_nonces")),
    )
    op.create_index("ix_gateway_acme_nonces_expires_at", "gateway_acme_nonces", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_gateway_acme_nonces_expires_at", table_name="gateway_acme_nonces")
    op.drop_table("gateway_acme_nonces")
    op.drop_index("ix_gateway_acme_accounts_requester", table_name="gateway_acme_accounts")
    op.drop_table("gateway_acme_accounts")
    op.drop_index("ix_gateway_acme_eab_keys_requester", table_name="gateway_acme_eab_keys")
    op.drop_table("gateway_acme_eab_keys")
