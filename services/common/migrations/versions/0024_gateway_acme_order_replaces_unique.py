"""gateway: at most one live ACME order replaces a certificate (issue 22, RFC 9773 5; decision 0033, addendum of
2026-12-07 "replaces retires")

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 03:00:00

``ux_gateway_acme_orders_replaces_live``: a partial unique index on ``gateway_acme_orders.replaces`` over the orders
that are not invalid (``replaces IS NOT NULL AND status <> 'invalid'``; SQLite and PostgreSQL both honour a partial
unique index). Two concurrent newOrders naming the same certificate in ``replaces`` both passed the application's
check before; now the second INSERT fails and newOrder answers alreadyReplaced (services/gateway/acme/orders.py).

Rows written before it may break the rule (the race it closes): for each certificate replaced by more than one live
order, the order furthest along (valid, then processing, ready, pending; the oldest among equals) keeps it; the
others that are pending or ready become invalid (an alreadyReplaced problem: they were never finalized), and the
others that are processing or valid keep their status and certificate but no longer claim the replaced one
(``replaces`` set to NULL; their AcmeOrderCreated event still names it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0024"
down_revision: str | Sequence[str] | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = "replaces IS NOT NULL AND status <> 'invalid'"
_RANK = {"valid": 0, "processing": 1, "ready": 2, "pending": 3}
_PROBLEM = json.dumps({"type": "urn:ietf:params:acme:error:alreadyReplaced", "status": 409,
                       "detail": "another order replaces the same certificate (migration 0024)"})


def _settle_duplicates() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text(f"SELECT order_id, replaces, status, created_at FROM gateway_acme_orders WHERE {LIVE}"))
    by_certificate: dict[str, list[tuple[int, str, str, str]]] = {}
    for order_id, replaces, status, created_at in rows:
        by_certificate.setdefault(str(replaces), []).append((_RANK.get(str(status), 9), str(created_at), str(order_id),
                                                             str(status)))
    for orders in by_certificate.values():
        for _, _, order_id, status in sorted(orders)[1:]:
            if status in ("pending", "ready"):
                bind.execute(sa.text("UPDATE gateway_acme_orders SET status = 'invalid', error = :error "
                                     "WHERE order_id = :order_id"), {"error": _PROBLEM, "order_id": order_id})
            else:
                bind.execute(sa.text("UPDATE gateway_acme_orders SET replaces = NULL WHERE order_id = :order_id"),
                             {"order_id": order_id})


def upgrade() -> None:
    _settle_duplicates()
    op.create_index("ux_gateway_acme_orders_replaces_live", "gateway_acme_orders", ["replaces"], unique=True,
                    sqlite_where=sa.text(LIVE), postgresql_where=sa.text(LIVE))


def downgrade() -> None:
    op.drop_index("ux_gateway_acme_orders_replaces_live", table_name="gateway_acme_orders")
