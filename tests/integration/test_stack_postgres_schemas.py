"""`certrail up --db postgresql` on the local PostgreSQL (services/common/stack_db.py): one database of the stack's
own with a schema per service, each service's tables migrated into its own schema, found again by the next
`certrail up` with the same var dir, dropped by `certrail down --drop-database`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from services.common import migrate
from services.common.db_schema import GatewayLease
from services.common.settings import DATABASE_OWNERS, DatabaseSettings
from services.common.stack_db import drop_database, postgres_database, stored_url

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def test_each_service_gets_a_migrated_schema_of_its_own_in_the_stacks_database(postgres_url: str, tmp_path: Path) -> None:
    server = make_url(postgres_url).set(database="postgres").render_as_string(hide_password=False)
    urls = postgres_database(tmp_path, server)
    try:
        assert postgres_database(tmp_path, server) == urls  # the next `certrail up` finds it again
        databases = migrate.upgrade_each({s: DatabaseSettings(url=u) for s, u in urls.items()})
        assert sorted(d.services[0] for d in databases) == sorted(DATABASE_OWNERS)  # four schemas, each migrated
        whole = create_engine(stored_url(tmp_path), poolclass=NullPool)  # type: ignore[arg-type]
        try:
            with whole.connect() as connection:
                schemas = set(connection.execute(text("SELECT nspname FROM pg_namespace")).scalars())
                assert set(DATABASE_OWNERS) <= schemas
                assert "alembic_version" not in inspect(connection).get_table_names(schema="public")
                for service in DATABASE_OWNERS:  # each at the newest revision, in its own schema
                    assert "alembic_version" in inspect(connection).get_table_names(schema=service)
            # a row written through the gateway's URL is in the gateway's schema only
            gateway = create_engine(urls["gateway"], poolclass=NullPool)
            with gateway.begin() as connection:
                connection.execute(insert(GatewayLease).values(name="scheduler", holder="test", expires_at=datetime.now(UTC)))
            gateway.dispose()
            with whole.connect() as connection:
                assert connection.execute(text("SELECT COUNT(*) FROM gateway.gateway_leases")).scalar_one() == 1
                assert connection.execute(text("SELECT COUNT(*) FROM issuer.gateway_leases")).scalar_one() == 0
        finally:
            whole.dispose()
    finally:
        dropped = drop_database(tmp_path)
    assert dropped is not None and stored_url(tmp_path) is None
