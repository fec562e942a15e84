"""Alembic environment of the certrail database.

There is no alembic.ini: ``services.common.migrate`` builds the Alembic
``Config`` in code and hands over an open SQLAlchemy ``Connection`` (made by
``services.common.db.make_engine``, so the SQLite pragmas and BEGIN IMMEDIATE
apply) in ``config.attributes["connection"]``. The caller owns the
connection and its transaction; this file only runs the migrations in it.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from services.common.db_schema import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "certrail migrations need a connection in config.attributes['connection']; "
            "run them with `certrail db upgrade` or services.common.migrate"
        )
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: Alembic copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("certrail migrations do not support offline (--sql) mode")
run_migrations_online()
