"""Named leases in the shared database (table ``gateway_leases``): one holder at a time.

The renewal scheduler runs in every gateway instance; a lease makes exactly one
of them active. A holder takes the lease when it is absent, renews it while it
holds it, and takes it over once it has expired (its holder stopped renewing:
crashed, hung or partitioned from the database). A holder that stops cleanly
releases it, so the next one need not wait for the expiry.

Both operations are single statements whose ``WHERE`` clause decides, so they
are atomic on SQLite (inside ``write_session``'s ``BEGIN IMMEDIATE``) and on
PostgreSQL (READ COMMITTED: a concurrent ``UPDATE`` waits for the row lock and
re-checks its ``WHERE`` against the committed row; a concurrent ``INSERT`` of
the same name conflicts on the primary key and does nothing):

1. ``UPDATE gateway_leases SET holder=:me, expires_at=:now+ttl
   WHERE name=:n AND (holder=:me OR expires_at < :now)`` -- renew or take over;
2. when no row matched: ``INSERT ... ON CONFLICT (name) DO NOTHING`` -- the
   lease did not exist yet; when the insert did nothing, someone else holds it.
   (``ON CONFLICT DO NOTHING`` rather than catching an IntegrityError: on
   PostgreSQL an error would abort the caller's whole transaction.)

Whether a statement matched is read from ``RETURNING`` (SQLite >= 3.35 and
PostgreSQL): psycopg reports no rowcount (-1) for these INSERTs.

Times come from the caller's clock (tests pass a controlled one). The gateways'
clocks must agree to well within the TTL: a holder whose clock runs ahead of
the others' sees the lease expire early. The lease is an efficiency and
rate-limit guard; it is not what prevents a repeated notice (the primary key of
``gateway_notices`` is).

Call these inside ``services.common.db.write_session``; the caller commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.common.db_schema import GatewayLease

__all__ = ["Lease", "acquire_lease", "get_lease", "release_lease"]


@dataclass(frozen=True, slots=True)
class Lease:
    """A snapshot of one lease row."""

    name: str
    holder: str
    expires_at: datetime


def acquire_lease(session: Session, name: str, holder: str, *, now: datetime, ttl: timedelta) -> bool:
    """Take, renew or take over the lease ``name`` for ``holder`` until ``now + ttl``.

    True when ``holder`` holds it afterwards; False when another holder's lease
    has not expired (or another holder inserted it concurrently).
    """
    if ttl <= timedelta(0):
        raise ValueError("a lease needs a positive ttl")
    expires_at = now + ttl
    table = GatewayLease.__table__
    renewed = session.execute(
        update(table)
        .where(table.c.name == name, or_(table.c.holder == holder, table.c.expires_at < now))
        .values(holder=holder, expires_at=expires_at)
        .returning(table.c.name)
    )
    if renewed.first() is not None:
        return True
    values = {"name": name, "holder": holder, "expires_at": expires_at}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(table).values(values).on_conflict_do_nothing(index_elements=[table.c.name])
    elif dialect == "sqlite":
        statement = sqlite.insert(table).values(values).on_conflict_do_nothing(index_elements=[table.c.name])
    else:
        raise NotImplementedError(f"acquire_lease: unsupported database {dialect!r}")
    # RETURNING, not rowcount: psycopg reports -1 for this INSERT; a conflict returns no row
    return session.execute(statement.returning(table.c.name)).first() is not None


def release_lease(session: Session, name: str, holder: str) -> bool:
    """Give the lease up if ``holder`` holds it (deletes the row); True when it did."""
    table = GatewayLease.__table__
    result = session.execute(delete(table).where(table.c.name == name, table.c.holder == holder).returning(table.c.name))
    return result.first() is not None


def get_lease(session: Session, name: str) -> Lease | None:
    """The lease row as stored (expired or not), or None."""
    row = session.execute(select(GatewayLease).where(GatewayLease.name == name)).scalar_one_or_none()
    if row is None:
        return None
    return Lease(name=row.name, holder=row.holder, expires_at=row.expires_at)
