"""The embedded stack's database (`certrail up --db sqlite|postgresql`).

SQLite: each service its own file, ``<var>/<service>.db`` (decision 0017, "Storage"). PostgreSQL: one
database of the stack's own, ``certrail_<random>``, with one schema per service (``gateway``, ``issuer``,
``deployer``, ``auditor``; each service's URL sets its ``search_path`` to its schema), created once on the
server of ``--postgres-url`` (its role may CREATE DATABASE) through the URL's own database, and remembered in
``<var>/database.json`` (0600: the URLs hold the password), so that the next `certrail up` with the same var
dir finds it again. A database remembered from before the schemas (no ``"schemas"`` in the file) stays shared by
the services. `certrail down --drop-database` drops it (``WITH (FORCE)``) and forgets it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Final

from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from services.common.db import normalise_url, safe_url
from services.common.kafka_principals import write_private
from services.common.settings import DATABASE_OWNERS, default_service_db_url

#: the server scripts/postgres.sh provides
DEFAULT_POSTGRES_URL: Final = "postgresql+psycopg://certrail:certrail@127.0.0.1:5432/certrail"
URL_FILE: Final = "database.json"


class StackDatabaseError(RuntimeError):
    """The stack's PostgreSQL database could not be made or dropped; the message says why (no password)."""


def sqlite_urls(var_dir: Path) -> dict[str, str]:
    """Each service's SQLite file under ``var_dir``, by service."""
    return {service: default_service_db_url(service, var_dir) for service in DATABASE_OWNERS}


def schema_url(url: str, schema: str) -> str:
    """``url`` with its connection's search path set to ``schema`` (PostgreSQL's ``options=-csearch_path=...``)."""
    return normalise_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


def postgres_urls(var_dir: Path) -> dict[str, str] | None:
    """The URLs of the PostgreSQL database ``var_dir`` remembers, by service: each its own schema (a database made
    before the schemas: the database itself, shared); None when it remembers none."""
    stored = _stored(var_dir)
    if stored is None:
        return None
    if not stored.get("schemas"):
        return dict.fromkeys(DATABASE_OWNERS, stored["url"])
    return {service: schema_url(stored["url"], service) for service in DATABASE_OWNERS}


def database_urls(var_dir: Path) -> dict[str, str]:
    """The databases of the stack in ``var_dir`` by service: the PostgreSQL database it remembers (a schema per
    service), else each service's SQLite file."""
    return postgres_urls(var_dir) or sqlite_urls(var_dir)


def _stored(var_dir: Path) -> dict[str, Any] | None:
    path = var_dir / URL_FILE
    return dict(json.loads(path.read_text())) if path.is_file() else None


def stored_url(var_dir: Path) -> str | None:
    """The stack's PostgreSQL database (without a schema), or None."""
    stored = _stored(var_dir)
    return None if stored is None else str(stored["url"])


def postgres_database(var_dir: Path, server_url: str) -> dict[str, str]:
    """The URLs of the stack's PostgreSQL database by service (`postgres_urls`): the one ``var_dir`` remembers,
    else a fresh one on the server with a schema per service."""
    known = postgres_urls(var_dir)
    if known is not None:
        return known
    server = normalise_url(server_url)
    if server.get_backend_name() != "postgresql":
        raise StackDatabaseError(f"--postgres-url must be a PostgreSQL URL, got {safe_url(server)}")
    name = f"certrail_{uuid.uuid4().hex[:12]}"
    _execute(server, f'CREATE DATABASE "{name}"')
    database = server.set(database=name)
    for service in DATABASE_OWNERS:  # names of our own, from a fixed list
        _execute(database, f'CREATE SCHEMA IF NOT EXISTS "{service}"')
    url = database.render_as_string(hide_password=False)
    var_dir.mkdir(parents=True, exist_ok=True)
    server_text = server.render_as_string(hide_password=False)
    write_private(var_dir / URL_FILE, json.dumps({"url": url, "server": server_text, "schemas": True}, indent=1) + "\n")
    found = postgres_urls(var_dir)
    assert found is not None
    return found


def drop_database(var_dir: Path) -> str | None:
    """Drop the database ``var_dir`` remembers (and forget it); returns its URL without password, or None."""
    stored = _stored(var_dir)
    if stored is None:
        return None
    url, server = normalise_url(stored["url"]), normalise_url(stored["server"])
    _execute(server, f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
    (var_dir / URL_FILE).unlink()
    return safe_url(url)


def _execute(server_url: object, statement: str) -> None:
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool,  # type: ignore[call-overload]
                           connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(statement)
    except OperationalError as exc:
        raise StackDatabaseError(f"{' '.join(statement.split()[:2]).lower()} on {safe_url(engine.url)} failed "
                                 f"(is the server running? `sudo bash scripts/postgres.sh`; may the role CREATE DATABASE?): "
                                 f"{exc.orig}") from exc
    finally:
        engine.dispose()
