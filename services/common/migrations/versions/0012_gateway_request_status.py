"""gateway: its own projection of the outcome of each request it accepted (decision 0017), filled
once from the auditor's audit log as it is at upgrade time

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 00:00:00

``GET /v1/requests/{id}`` reads ``gateway_request_status`` instead of the auditor's
``audit_records``. From here on the gateway folds the issuer's outcome events from
``<prefix>.events.issuer`` into it (services/gateway/request_status.py); the outcomes the audit
log already holds are copied once, by the same rules, so that an upgraded installation answers
the status of its past requests as before: the gateway's consumer of events.issuer already has
its position there (it folds issued certificates since migration 0011), so it does not read
those events again; if it does (a group with no position reads the topic from its start), the
fold finds each outcome recorded or ranks it the same way.

The rules, as the fold applies them: only the requests the gateway accepted (a
``gateway_requests`` row with status accepted), only outcomes about that request's certificate,
only valid records of the issuer's events topic (or the single events topic of installations
before decision 0016); a terminal outcome wins over IssuancePending, and among outcomes of the
same rank the later event time (a tie: the one stored first). The result holds the same keys
the API answered from the audit log.

This migration is frozen in time: it does not import the service code it mirrors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TYPE = sa.DateTime(timezone=True)
BATCH = 500

ISSUED = "io.certrail.certificate.issued.v1"
REVOKED = "io.certrail.certificate.revoked.v1"
PENDING = "io.certrail.issuance.pending.v1"
STATES = {ISSUED: "issued", "io.certrail.issuance.failed.v1": "failed", PENDING: "pending_approval",
          REVOKED: "revoked", "io.certrail.revocation.failed.v1": "failed"}
ISSUED_KEYS = ("serial", "certificate", "chain", "subject", "issuer", "sans", "not_before", "not_after", "issuance_id",
               "replaces_serial")
REVOKED_KEYS = ("serial", "reason", "revoked_at")
OTHER_KEYS = ("error", "ca_request_id", "issuance_id", "serial")

OUTCOMES = sa.text("""
SELECT a.id, a.request_id, g.certificate_id, a.event_type, a.event_id, a.event_time, a.value
FROM audit_records a
JOIN gateway_requests g ON g.request_id = a.request_id
WHERE g.status = 'accepted' AND a.certificate_id = g.certificate_id AND a.event_type IN :types
  AND a.decode_error IS NULL AND a.event_id IS NOT NULL AND a.event_time IS NOT NULL AND a.value IS NOT NULL
  AND (a.topic LIKE '%.events.issuer' OR a.topic LIKE '%.events')
ORDER BY a.request_id, a.id
""").bindparams(sa.bindparam("types", expanding=True)).columns(
    sa.column("id", sa.Integer()), sa.column("request_id", sa.String()), sa.column("certificate_id", sa.String()),
    sa.column("event_type", sa.String()), sa.column("event_id", sa.String()), sa.column("event_time", UTC_TYPE),
    sa.column("value", sa.LargeBinary()))

STATUS = sa.table(
    "gateway_request_status", sa.column("request_id", sa.String()), sa.column("state", sa.String()),
    sa.column("result", sa.Text()), sa.column("event_type", sa.String()), sa.column("event_id", sa.String()),
    sa.column("event_time", UTC_TYPE))


def upgrade() -> None:
    op.create_table(
        "gateway_request_status",
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("event_type", sa.String(length=200), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("event_time", UTC_TYPE, nullable=False),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_gateway_request_status")),
    )
    bind = op.get_bind()
    batch: list[dict[str, Any]] = []
    for row in _best(bind.execute(OUTCOMES, {"types": sorted(STATES)})):
        batch.append(row)
        if len(batch) >= BATCH:
            bind.execute(STATUS.insert(), batch)
            batch = []
    if batch:
        bind.execute(STATUS.insert(), batch)


def downgrade() -> None:
    op.drop_table("gateway_request_status")


def _best(rows: Any) -> Iterator[dict[str, Any]]:
    """The winning outcome of each request (the rows come ordered by request id, then as stored)."""
    current: str | None = None
    best: dict[str, Any] | None = None
    for row in rows:
        if row.request_id != current:
            if best is not None:
                yield best
            current, best = row.request_id, None
        candidate = _outcome(row)
        if candidate is not None and (best is None or _rank(candidate) > _rank(best)):
            best = candidate
    if best is not None:
        yield best


def _rank(row: dict[str, Any]) -> tuple[bool, Any]:
    return row["state"] != "pending_approval", row["event_time"]


def _outcome(row: Any) -> dict[str, Any] | None:
    """The status row one audit record gives, or None when its data is not what it claims."""
    try:
        data = json.loads(bytes(row.value))["data"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("request_id") != row.request_id \
            or data.get("certificate_id") != row.certificate_id:
        return None
    if row.event_type == ISSUED:
        result = {k: data.get(k) for k in ISSUED_KEYS}
    elif row.event_type == REVOKED:
        result = {k: data.get(k) for k in REVOKED_KEYS}
    else:
        result = {k: data[k] for k in OTHER_KEYS if k in data}
    return {"request_id": row.request_id, "state": STATES[row.event_type], "result": json.dumps(result),
            "event_type": row.event_type, "event_id": row.event_id, "event_time": row.event_time}
