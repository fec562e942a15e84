"""`certrail db split`: from one shared database to a database per service (decision 0017, "Storage").

An installation from before decision 0017's step 4 keeps every service's tables in one database
(``var/certrail.db`` or ``CERTRAIL_DB_URL``). :func:`split` copies each service's tables' rows from that
database into the service's own (after migrating it): the owner of a table is
``services.common.db_schema.owner_of``. It copies nothing when any table it would fill already holds rows,
and never writes to the source. ``service_heartbeats`` is not copied: each service writes its own row
again when it starts.

The tables are the declared schema (``db_schema.Base.metadata``, which is what the migrations make), so
the source must be at the newest revision too; rows are read and inserted with SQLAlchemy Core in
chunks, parents before children, one transaction per target database (all of a database's tables or
none). On PostgreSQL the sequences of integer keys are moved past the copied rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import Engine, Integer, Table, func, insert, inspect, select
from sqlalchemy.engine import Connection

from services.common import migrate
from services.common.db import make_engine, read_session, safe_url
from services.common.db_schema import Base, owner_of
from services.common.settings import DatabaseSettings

__all__ = ["SplitRefused", "SplitReport", "TableCopy", "owned_tables", "split"]

CHUNK_ROWS = 1_000


class SplitRefused(RuntimeError):
    """The split was not started; the message says why (no password). Nothing was copied."""


@dataclass(frozen=True)
class TableCopy:
    service: str
    table: str
    rows: int


@dataclass
class SplitReport:
    copies: list[TableCopy] = field(default_factory=list)
    databases: list[migrate.Database] = field(default_factory=list)

    def rows(self, service: str) -> int:
        return sum(copy.rows for copy in self.copies if copy.service == service)


def owned_tables(service: str) -> list[Table]:
    """The tables ``service`` owns, parents before children."""
    return [table for table in Base.metadata.sorted_tables if owner_of(table.name) == service]


def split(
    source: DatabaseSettings,
    targets: Mapping[str, DatabaseSettings],
    *,
    progress: Callable[[TableCopy], None] = lambda _copy: None,
    chunk_rows: int = CHUNK_ROWS,
) -> SplitReport:
    """Copy each service's tables from ``source`` into ``targets[service]`` (each migrated first).

    Refuses (:class:`SplitRefused`, nothing copied) when a target is the source, when the source is not at the
    newest revision or lacks a table, or when a table to fill already holds rows in its target.
    """
    unowned = sorted(name for name in Base.metadata.tables if owner_of(name) is None)
    if unowned:
        raise SplitRefused(f"tables of no service: {', '.join(unowned)}")
    for service, settings in targets.items():
        if migrate.same_database(settings.url, source.url):
            raise SplitRefused(f"the {service}'s database is the source {safe_url(source.url)}: set "
                               f"CERTRAIL_{service.upper()}_DB_URL (or unset CERTRAIL_DB_URL for var/{service}.db)")
    if not migrate.check_at_head(source):
        raise SplitRefused(f"{safe_url(source.url)} is not at the newest schema ({migrate.current(source) or 'never migrated'}):"
                           f" migrate it first (CERTRAIL_DB_URL=<it> certrail db upgrade)")
    databases = migrate.upgrade_each(targets)
    report = SplitReport(databases=databases)
    source_engine = make_engine(source)
    engines = {id(db): make_engine(db.settings) for db in databases}
    try:
        missing = sorted(set(Base.metadata.tables) - set(inspect(source_engine).get_table_names()))
        if missing:
            raise SplitRefused(f"{safe_url(source.url)} lacks tables: {', '.join(missing)}")
        _refuse_filled(databases, engines)
        for database in databases:
            tables = [(service, table) for service in database.services for table in owned_tables(service)]
            target = engines[id(database)]
            with target.begin() as into, read_session(source_engine) as reading:
                source_conn = reading.connection()
                for service, table in tables:
                    copied = 0
                    result = source_conn.execution_options(yield_per=chunk_rows).execute(select(table))
                    for chunk in result.mappings().partitions():
                        into.execute(insert(table), [dict(row) for row in chunk])
                        copied += len(chunk)
                    if copied and into.dialect.name == "postgresql":
                        _advance_sequences(into, table)
                    copy = TableCopy(service, table.name, copied)
                    report.copies.append(copy)
                    progress(copy)
    finally:
        source_engine.dispose()
        for engine in engines.values():
            engine.dispose()
    return report


def _refuse_filled(databases: list[migrate.Database], engines: Mapping[int, Engine]) -> None:
    filled = []
    for database in databases:
        with read_session(engines[id(database)]) as session:
            for service in database.services:
                for table in owned_tables(service):
                    if session.execute(select(func.count()).select_from(table)).scalar_one():
                        filled.append(f"{table.name} ({service}, {safe_url(database.settings.url)})")
    if filled:
        raise SplitRefused("these tables already hold rows; nothing was copied: " + ", ".join(filled))


def _advance_sequences(connection: Connection, table: Table) -> None:
    """PostgreSQL: each integer key's sequence past the largest copied value (the copy gave the keys)."""
    for column in table.primary_key.columns:
        if not isinstance(column.type, Integer) or column.autoincrement is False:
            continue
        sequence: str | None = connection.execute(select(func.pg_get_serial_sequence(table.name, column.name))).scalar_one()
        if sequence is not None:
            connection.execute(select(func.setval(sequence, select(func.max(column)).scalar_subquery())))

