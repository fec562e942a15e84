"""The SQL schema shared by the services (SQLAlchemy 2 declarative).

Every table of the one certrail database is mapped on :class:`Base`, so that
``Base.metadata`` is the whole schema: Alembic's ``env.py`` uses it as
``target_metadata`` (autogenerate), and tests can compare it to the migrated
database. To add a table: declare it here (or in a module imported here),
then write the migration under ``services/common/migrations/versions/``.

Conventions for tables:
- timestamps are :class:`UTCDateTime` columns: timezone-aware UTC datetimes in
  Python on every database (SQLite stores them as naive UTC text);
- constraint names come from :data:`NAMING_CONVENTION` (Alembic's batch mode
  on SQLite needs named constraints to alter them);
- functions that read or write a table take a ``Session`` (opened with
  ``services.common.db.write_session`` / ``read_session``) and return plain
  frozen dataclasses, not ORM objects, so callers never touch an expired
  instance after the session ended.

Tables so far:
- ``service_heartbeats``: one row per running service instance, upserted
  periodically (:func:`record_heartbeat`), listed by :func:`list_heartbeats`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Integer, MetaData, String, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "Heartbeat",
    "ServiceHeartbeat",
    "UTCDateTime",
    "list_heartbeats",
    "record_heartbeat",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database.

    Binding a naive datetime is an error (its zone would be a guess). Aware
    values are converted to UTC; SQLite, which has no zone, stores naive UTC.
    Values read back are always aware, in UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: pass a timezone-aware (UTC) datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ServiceHeartbeat(Base):
    """One running instance of a service, as last reported by itself."""

    __tablename__ = "service_heartbeats"

    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    hostname: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A snapshot of one ``service_heartbeats`` row."""

    service: str
    instance_id: str
    pid: int
    hostname: str
    version: str
    started_at: datetime
    last_seen_at: datetime


_HEARTBEAT_UPDATED_COLUMNS = ("pid", "hostname", "version", "started_at", "last_seen_at")
"""Columns an upsert overwrites (everything but the key)."""


def record_heartbeat(
    session: Session,
    service: str,
    instance_id: str,
    *,
    pid: int,
    hostname: str,
    version: str,
    started_at: datetime,
    now: datetime | None = None,
) -> None:
    """Insert or update the heartbeat of one service instance (``INSERT ... ON CONFLICT DO UPDATE``).

    ``now`` (default: the current UTC time) becomes ``last_seen_at``. Call it
    inside ``write_session``; the caller's transaction commits it.
    """
    values: dict[str, Any] = {
        "service": service,
        "instance_id": instance_id,
        "pid": pid,
        "hostname": hostname,
        "version": version,
        "started_at": started_at,
        "last_seen_at": now if now is not None else datetime.now(UTC),
    }
    table = ServiceHeartbeat.__table__
    dialect_name = session.get_bind().dialect.name
    if dialect_name == "postgresql":
        pg_insert = postgresql.insert(table).values(values)
        statement: Any = pg_insert.on_conflict_do_update(
            index_elements=[table.c.service, table.c.instance_id],
            set_={name: pg_insert.excluded[name] for name in _HEARTBEAT_UPDATED_COLUMNS},
        )
    elif dialect_name == "sqlite":
        lite_insert = sqlite.insert(table).values(values)
        statement = lite_insert.on_conflict_do_update(
            index_elements=[table.c.service, table.c.instance_id],
            set_={name: lite_insert.excluded[name] for name in _HEARTBEAT_UPDATED_COLUMNS},
        )
    else:
        raise NotImplementedError(f"record_heartbeat: unsupported database {dialect_name!r}")
    session.execute(statement)



def list_heartbeats(session: Session) -> list[Heartbeat]:
    """Every recorded heartbeat, ordered by service and instance id."""
    rows = session.scalars(
        select(ServiceHeartbeat).order_by(ServiceHeartbeat.service, ServiceHeartbeat.instance_id)
    )
    return [
        Heartbeat(
            service=row.service,
            instance_id=row.instance_id,
            pid=row.pid,
            hostname=row.hostname,
            version=row.version,
            started_at=row.started_at,
            last_seen_at=row.last_seen_at,
        )
        for row in rows
    ]
