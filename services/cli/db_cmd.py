"""`certrail db ...`: schema migrations of the SQL database.

The database comes from ``CERTRAIL_DB_*`` (``CERTRAIL_DB_URL``; default the
SQLite file ``var/certrail.db``), read when a command runs.
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
from services.common.settings import DatabaseSettings

# No locals in tracebacks: they would show the database URL with its password.
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)


def _settings() -> DatabaseSettings:
    return DatabaseSettings()


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
    """Migrate the database up to a revision (default: the newest)."""
    settings = _settings()
    with _database_errors(settings):
        migrate.upgrade(settings, revision)
        typer.echo(f"{safe_url(settings.url)}: at revision {migrate.current(settings) or '(base)'}")


@app.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision; 'base' removes every table.")],
) -> None:
    """Migrate the database down to a revision."""
    settings = _settings()
    with _database_errors(settings):
        migrate.downgrade(settings, revision)
        typer.echo(f"{safe_url(settings.url)}: at revision {migrate.current(settings) or '(base)'}")


@app.command()
def current() -> None:
    """Show the database's revision and whether it is the newest."""
    settings = _settings()
    with _database_errors(settings):
        revision = migrate.current(settings)
        at_head = migrate.check_at_head(settings)
    state = "head" if at_head else f"behind (newest: {migrate.head()})"
    typer.echo(f"{safe_url(settings.url)}: {revision or '(base)'} [{state}]")
