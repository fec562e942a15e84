"""Bulk statements on the auditor's hot path, run with the driver's executemany.

SQLAlchemy's per-row parameter handling costs more than SQLite's own insert
for the auditor's batches, so the batch INSERT and the inventory upserts are
plain ``INSERT ... [ON CONFLICT (key) DO UPDATE SET c = excluded.c]``
statements (the same text on SQLite >= 3.24 and PostgreSQL), with identifiers
quoted by the dialect and each value passed through its column type's own
bind processing (e.g. UTCDateTime), exactly as an ORM insert would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, LargeBinary, Table, event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry

from services.common.db_schema import UTCDateTime

_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


_SQLITE_UTC_CACHE: dict[datetime, str] = {}

#: a time, or its SQLite text when a prepare worker bound it already (records.prepare_batch(sqlite_times=True))
BoundTime = datetime | str


def utc_or_none(value: datetime) -> datetime | None:
    """An aware time in UTC, or None when UTC cannot hold it (year 1 with a positive
    offset, 9999 with a negative one: valid RFC 3339, but no instant a column can store)."""
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def sqlite_text(value: datetime) -> str:
    """An aware time as SQLite stores a UTCDateTime (naive UTC text with microseconds), uncached."""
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("naive datetime: pass a timezone-aware (UTC) datetime")
    utc = value.astimezone(UTC) if offset else value
    # "YYYY-MM-DD HH:MM:SS.ffffff+00:00" without its offset: the same text as SQLAlchemy's
    # "%04d-%02d-%02d %02d:%02d:%02d.%06d", in half the time of formatting the fields
    return utc.isoformat(" ", "microseconds")[:26]


def sqlite_utc(value: BoundTime | None) -> str | None:
    """UTCDateTime's value on SQLite, as SQLAlchemy stores it (`sqlite_text`),
    without its per-value processor chain. The same instants recur (a batch's
    stored_at, an event's time in several inventory columns): they are
    formatted once. Text is that form already (bound by the prepare worker):
    passed through."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    cached = _SQLITE_UTC_CACHE.get(value)
    if cached is not None:
        return cached
    text = sqlite_text(value)
    if len(_SQLITE_UTC_CACHE) >= 4096:
        _SQLITE_UTC_CACHE.clear()
    _SQLITE_UTC_CACHE[value] = text
    return text


def utc_aware(value: datetime | None) -> datetime | None:
    """UTCDateTime's value on PostgreSQL (an aware datetime in UTC), without its processor chain."""
    if value is None:
        return None
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("naive datetime: pass a timezone-aware (UTC) datetime")
    return value.astimezone(UTC) if offset or value.tzinfo is not UTC else value


def time_binder(dialect: Dialect) -> Callable[[datetime | None], Any]:
    """How a UTCDateTime value is passed to ``dialect``'s driver (for rows built already bound)."""
    return sqlite_utc if dialect.name == "sqlite" else utc_aware


#: SQLite settings of the auditor's own connections (see `tune_for_ingest` and docs/audit.md)
INGEST_CACHE_KIB = 65_536
INGEST_WAL_AUTOCHECKPOINT_PAGES = 8_192


def tune_for_ingest(engine: Engine) -> None:
    """Per-connection SQLite settings for the auditor's writer (nothing on PostgreSQL).

    Applied to each new connection of ``engine`` after services/common/db.py's
    own settings (WAL, busy timeout, ``synchronous=NORMAL``, kept), only in the
    auditor's process (docs/audit.md "SQLite settings"; docs/benchmarks.md):

    - ``wal_autocheckpoint`` of 8,192 pages (32 MiB with 4 KiB pages) instead
      of 1,000: fewer, larger checkpoints, so index pages that every batch
      touches are copied to the database file once per several batches. The
      WAL file may grow to about that size (other processes' commits still
      checkpoint at their own threshold). With ``synchronous=NORMAL`` the WAL
      is synced at checkpoints, so on a power loss (not a crash of the
      process) the commits since the last checkpoint may be lost: up to that
      many pages instead of 1,000;
    - ``cache_size`` of 64 MiB (instead of 2 MiB), so that the audit table's
      indexes stay in the page cache as the table grows.

    ``synchronous=FULL`` (an fsync per commit) was measured too and left out:
    free on an idle disk, it halved the ingest rate on this shared one.
    """
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA wal_autocheckpoint = {INGEST_WAL_AUTOCHECKPOINT_PAGES}")
            cursor.execute(f"PRAGMA cache_size = -{INGEST_CACHE_KIB}")
        finally:
            cursor.close()


def _processors(table: Table, columns: Sequence[str], dialect: Dialect) -> list[tuple[int, Callable[[Any], Any]]]:
    result: list[tuple[int, Callable[[Any], Any]]] = []
    for index, name in enumerate(columns):
        column_type = table.c[name].type
        if isinstance(column_type, LargeBinary):
            continue  # both drivers take bytes as they are
        if isinstance(column_type, UTCDateTime) and dialect.name == "sqlite":
            result.append((index, sqlite_utc))
            continue
        processor = column_type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            result.append((index, processor))
    return result


def executemany(
    session: Session,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    upsert_key: Sequence[str] | None = None,
    bound: bool = False,
) -> None:
    """INSERT ``rows`` (values in ``columns`` order); with ``upsert_key``, a row
    whose key exists replaces that row's other columns. The rows must not repeat a key.
    ``bound``: the values are already in the driver's form (built with `time_binder`),
    else each goes through its column type's bind processing.

    One prepared statement and the driver's executemany (psycopg 3 pipelines
    it: no round trip per row; measured faster here than multi-row VALUES)."""
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    placeholder = _PLACEHOLDERS.get(dialect.paramstyle)
    if placeholder is None or dialect.name not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"audit store: unsupported database {dialect.name} ({dialect.paramstyle})")
    preparer = dialect.identifier_preparer
    head = f"INSERT INTO {preparer.format_table(table)} ({', '.join(preparer.quote(c) for c in columns)}) VALUES "
    tail = ""
    if upsert_key:
        updated = [c for c in columns if c not in upsert_key]
        tail = f" ON CONFLICT ({', '.join(preparer.quote(c) for c in upsert_key)}) DO UPDATE SET " + ", ".join(
            f"{preparer.quote(c)} = excluded.{preparer.quote(c)}" for c in updated
        )
    values = "(" + ", ".join([placeholder] * len(columns)) + ")"
    processors = [] if bound else _processors(table, columns, dialect)
    if processors:
        converted = []
        for row in rows:
            items = list(row)
            for index, processor in processors:
                items[index] = processor(items[index])
            converted.append(tuple(items))
        rows = converted
    connection.exec_driver_sql(head + values + tail, list(rows))  # type: ignore[arg-type]
