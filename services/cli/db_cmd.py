"""`certrail db ...`: schema migrations of the SQL databases, and the split into one per service.

Each service has its own database (decision 0017, "Storage"): ``CERTRAIL_<SERVICE>_DB_URL`` if set, else
``CERTRAIL_DB_URL`` (one database shared by all four, e.g. PostgreSQL), else the SQLite file
``var/<service>.db``; read when a command runs. ``upgrade``, ``downgrade`` and ``current`` act on each
distinct database once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from alembic.util import CommandError
from sqlalchemy.exc import SQLAlchemyError

from services.common import migrate
from services.common.db import safe_url
from services.common.db_split import SplitRefused, TableCopy, split
from services.common.settings import DatabaseSettings, service_databases

# No locals in tracebacks: they would show the database URL with its password.
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)


def _databases() -> list[migrate.Database]:
    return migrate.distinct_databases(service_databases())


def _label(database: migrate.Database) -> str:
    return f"{safe_url(database.settings.url)} ({', '.join(database.services)})"


@contextmanager
def _database_errors(settings: DatabaseSettings) -> Iterator[None]:
    """Turn a database error into a one-line message and exit status 1."""
    try:
        yield
    except SQLAlchemyError as exc:
        cause = exc.orig if getattr(exc, "orig", None) is not None else exc
        typer.echo(f"error: database {safe_url(settings.url)}: {cause}", err=True)
        raise typer.Exit(code=1) from exc
    except CommandError as exc:  # e.g. an unknown revision
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc


@app.command()
def upgrade(
    revision: Annotated[str, typer.Option("--revision", help="Target revision.")] = "head",
) -> None:
    """Migrate each service's database up to a revision (default: the newest)."""
    for database in _databases():
        with _database_errors(database.settings):
            migrate.upgrade(database.settings, revision)
            typer.echo(f"{_label(database)}: at revision {migrate.current(database.settings) or '(base)'}")


@app.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision; 'base' removes every table.")],
) -> None:
    """Migrate each service's database down to a revision."""
    for database in _databases():
        with _database_errors(database.settings):
            migrate.downgrade(database.settings, revision)
            typer.echo(f"{_label(database)}: at revision {migrate.current(database.settings) or '(base)'}")


@app.command()
def current() -> None:
    """Show each service's database's revision and whether it is the newest."""
    for database in _databases():
        with _database_errors(database.settings):
            revision = migrate.current(database.settings)
            at_head = migrate.check_at_head(database.settings)
        state = "head" if at_head else f"behind (newest: {migrate.head()})"
        typer.echo(f"{_label(database)}: {revision or '(base)'} [{state}]")


@app.command("split")
def split_command(
    source: Annotated[str, typer.Option(
        "--from", help="The shared database of an existing installation, e.g. sqlite:///var/certrail.db or "
        "$CERTRAIL_DB_URL (left untouched).", show_default=False)],
) -> None:
    """Copy each service's tables from the shared database into the service's own database (migrated first):
    CERTRAIL_<SERVICE>_DB_URL, else var/<service>.db (unset CERTRAIL_DB_URL). Refuses when a table to fill
    already holds rows."""
    settings = DatabaseSettings(url=source)

    def progress(copy: TableCopy) -> None:
        typer.echo(f"  {copy.service:<8} {copy.table:<40} {copy.rows:>9} rows")

    with _database_errors(settings):
        try:
            report = split(settings, service_databases(), progress=progress)
        except SplitRefused as refused:
            typer.echo(f"error: {refused}", err=True)
            raise typer.Exit(code=1) from refused
    for database in report.databases:
        rows = sum(report.rows(service) for service in database.services)
        typer.echo(f"{_label(database)}: {rows} rows copied")
    typer.echo(f"{safe_url(source)} was left as it was; start the services with their own databases.")
