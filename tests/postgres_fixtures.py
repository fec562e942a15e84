"""Database fixtures: run database tests on SQLite and on a real PostgreSQL.

Imported by tests/conftest.py (``from tests.postgres_fixtures import *``).

- ``postgres_url`` (session): a fresh, uniquely named database for this test
  session on the server at ``CERTRAIL_TEST_POSTGRES_URL`` (default: the one
  ``scripts/postgres.sh`` sets up), dropped at the end. (On a local server,
  databases left by killed sessions of this machine are dropped first.) When the server cannot
  be reached the tests that need it FAIL, saying how to start it; they are
  never skipped silently. Deselect them explicitly with ``-m "not postgres"``.
- ``db_settings`` (function, parametrised ``sqlite`` / ``postgresql``):
  ``DatabaseSettings`` for an empty database of its own: a SQLite file under
  ``tmp_path``, or a fresh PostgreSQL schema (first on the search_path) in the
  session database. The ``postgresql`` case carries the ``postgres`` mark.
- ``postgres_settings`` (function): the PostgreSQL case alone.

Tests own the engines they make and must dispose of them (an open transaction
would keep the schema from being dropped).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from services.common.db import normalise_url, safe_url
from services.common.proc import pid_exists
from services.common.settings import DatabaseSettings

__all__ = ["db_settings", "postgres_settings", "postgres_url"]

POSTGRES_URL_ENV = "CERTRAIL_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://certrail:certrail@127.0.0.1:5432/certrail"
_CONNECT_TIMEOUT_SECONDS = 5
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_TEST_DATABASE_RE = re.compile(r"certrail_test_(?P<pid>[0-9]+)_[0-9a-f]{8}")


def _admin_engine(url: URL) -> Engine:
    """An autocommit engine (CREATE/DROP DATABASE cannot run in a transaction)."""
    return create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"connect_timeout": _CONNECT_TIMEOUT_SECONDS},
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this test session (dropped afterwards)."""
    server_url = normalise_url(os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL)
    name = f"certrail_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = _admin_engine(server_url)
    error: OperationalError | None = None
    try:
        with admin.connect() as conn:
            if server_url.host in _LOCAL_HOSTS:
                _drop_leftovers(conn)
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except OperationalError as exc:
        error = exc
    if error is not None:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is not reachable at {safe_url(server_url)}: {error.orig}\n"
            "Start a local server with `sudo bash scripts/postgres.sh`, or point "
            f"{POSTGRES_URL_ENV} at one whose role may CREATE DATABASE. "
            "To run without PostgreSQL, deselect explicitly: -m 'not postgres'.",
            pytrace=False,
        )
    try:
        yield normalise_url(server_url.set(database=name)).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _drop_leftovers(conn: Connection) -> None:
    """Drop the databases of earlier test sessions on this machine that were killed
    before their teardown (their process is gone and nobody is connected)."""
    rows = conn.execute(
        text(
            "SELECT d.datname FROM pg_catalog.pg_database d WHERE d.datname LIKE 'certrail\\_test\\_%' "
            "AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.datname = d.datname)"
        )
    ).scalars()
    for leftover in rows.all():
        match = _TEST_DATABASE_RE.fullmatch(leftover)
        if match is None or pid_exists(int(match["pid"])):
            continue
        try:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{leftover}"')
        except DBAPIError:
            continue  # best effort: someone connected to it meanwhile, or dropped it


    return True


def _fresh_schema_settings(database_url: str) -> Iterator[DatabaseSettings]:
    """Settings for a new schema in ``database_url``; the schema is dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine(normalise_url(database_url))
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = normalise_url(database_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield DatabaseSettings(url=url.render_as_string(hide_password=False))
    finally:
        with admin.connect() as conn:
            # Fail rather than hang if a test left a transaction open on it.
            conn.execute(text("SET lock_timeout = '10s'"))
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def postgres_settings(postgres_url: str) -> Iterator[DatabaseSettings]:
    """DatabaseSettings for an empty PostgreSQL schema of this test's own."""
    yield from _fresh_schema_settings(postgres_url)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseSettings]:
    """DatabaseSettings for an empty database of this test's own, on each backend."""
    if request.param == "sqlite":
        yield DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    else:
        # Looked up only here, so the SQLite case never needs the server.
        yield from _fresh_schema_settings(request.getfixturevalue("postgres_url"))
