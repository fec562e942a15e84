"""Schema migrations of the certrail database (Alembic, configured in code).

The Alembic environment lives in ``services/common/migrations`` (inside the
package, no alembic.ini). Every function here builds an engine with
``services.common.db.make_engine``, runs in one transaction on one connection
that it hands to ``env.py`` through ``config.attributes["connection"]``, and
disposes of the engine afterwards.

- ``upgrade`` / ``downgrade`` run in a single write transaction (``BEGIN
  IMMEDIATE`` on SQLite, which serialises concurrent runs; on PostgreSQL a
  transaction-level advisory lock does the same), so several services starting
  at once can all call ``upgrade`` safely: the first migrates, the others then
  find the schema at head.
- On SQLite, foreign key enforcement is switched off for the migration's
  connection (batch mode copies and drops tables, and DROP TABLE with
  enforcement on would delete or reject referencing rows) and
  ``PRAGMA foreign_key_check`` must come back clean before the commit.

Each service has a database of its own (decision 0017, "Storage"; or all share
``CERTRAIL_DB_URL``). There is one chain of migrations: it is applied to each
distinct database once (:func:`upgrade_each`), and a service uses only its own
tables there; the others stay empty.

To write a new migration, copy the newest file in ``migrations/versions`` or
run ``alembic.command.revision(make_config(), message="...", rev_id="0002")``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

from services.common.db import make_engine, normalise_url, read_session
from services.common.settings import DatabaseSettings

__all__ = [
    "MIGRATIONS_PATH",
    "Database",
    "MigrationError",
    "check_at_head",
    "current",
    "distinct_databases",
    "downgrade",
    "head",
    "make_config",
    "same_database",
    "upgrade",
    "upgrade_each",
]

MIGRATIONS_PATH = Path(__file__).resolve().with_name("migrations")
"""The Alembic script directory shipped inside the package."""

# pg_advisory_xact_lock key: the bytes of "certrail" as a (positive) bigint.
_PG_MIGRATION_LOCK_KEY = int.from_bytes(b"certrail", "big")


class MigrationError(RuntimeError):
    """A migration left the database inconsistent; it was rolled back."""


@dataclass(frozen=True)
class Database:
    """One distinct database and the services that use it."""

    settings: DatabaseSettings
    services: tuple[str, ...]


def _identity(url: str) -> str:
    """What makes two URLs the same database: the normalised URL, a SQLite file by its absolute path."""
    parsed = normalise_url(url)
    database = parsed.database
    if parsed.get_backend_name() == "sqlite" and database and database != ":memory:" and not database.startswith("file:"):
        parsed = parsed.set(database=str(Path(database).expanduser().absolute()))
    return parsed.render_as_string(hide_password=False)


def same_database(first: str, second: str) -> bool:
    """True when the two URLs name the same database."""
    return _identity(first) == _identity(second)


def distinct_databases(databases: Mapping[str, DatabaseSettings]) -> list[Database]:
    """Each distinct database of ``databases`` (service -> its settings) once, with the services that use it."""
    found: dict[str, Database] = {}
    for service, settings in databases.items():
        key = _identity(settings.url)
        known = found.get(key)
        found[key] = Database(settings, (service,)) if known is None else Database(known.settings, (*known.services, service))
    return list(found.values())


def upgrade_each(databases: Mapping[str, DatabaseSettings], revision: str = "head") -> list[Database]:
    """Migrate each distinct database of ``databases`` (service -> its settings) once; returns them."""
    distinct = distinct_databases(databases)
    for database in distinct:
        upgrade(database.settings, revision)
    return distinct


def make_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for the packaged migrations, optionally bound to ``connection``."""
    config = Config()
    # ConfigParser interpolates '%': escape it in the path.
    config.set_main_option("script_location", str(MIGRATIONS_PATH).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str | None:
    """The head revision of the packaged migrations (joined by ',' if branched)."""
    return _join(ScriptDirectory.from_config(make_config()).get_heads())


def upgrade(settings: DatabaseSettings, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (default: the newest)."""
    _migrate(settings, lambda config: command.upgrade(config, revision))


def downgrade(settings: DatabaseSettings, revision: str) -> None:
    """Migrate the database down to ``revision`` (``"base"``: drop everything)."""
    _migrate(settings, lambda config: command.downgrade(config, revision))


def current(settings: DatabaseSettings) -> str | None:
    """The database's revision, or None when it was never migrated."""
    return _join(_current_heads(settings))


def check_at_head(settings: DatabaseSettings) -> bool:
    """True when the database is at the newest revision of the packaged migrations."""
    script_heads = ScriptDirectory.from_config(make_config()).get_heads()
    return set(_current_heads(settings)) == set(script_heads)


def _current_heads(settings: DatabaseSettings) -> tuple[str, ...]:
    with _disposing(make_engine(settings)) as engine, read_session(engine) as session:
        return tuple(MigrationContext.configure(session.connection()).get_current_heads())


def _migrate(settings: DatabaseSettings, run: Callable[[Config], None]) -> None:
    with _disposing(make_engine(settings)) as engine, engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Outside any transaction (the driver is in autocommit mode until
            # SQLAlchemy's BEGIN), where this pragma takes effect.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")
        try:
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY}
                    )
                run(make_config(connection))
                if sqlite:
                    problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if problems:
                        raise MigrationError(
                            f"migration would violate foreign keys (rolled back): {problems[:10]}"
                        )
        finally:
            if sqlite:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys = ON")


@contextmanager
def _disposing(engine: Engine) -> Iterator[Engine]:
    try:
        yield engine
    finally:
        engine.dispose()


def _join(heads: tuple[str, ...] | list[str]) -> str | None:
    return ",".join(sorted(heads)) if heads else None
