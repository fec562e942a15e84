"""Migrations and the heartbeat table, on SQLite and on PostgreSQL (db_settings)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError, StatementError

from services.common import migrate
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import Base, Heartbeat, list_heartbeats, record_heartbeat
from services.common.settings import DatabaseSettings

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def engine(db_settings: DatabaseSettings) -> Iterator[Engine]:
    engine = make_engine(db_settings)
    yield engine
    engine.dispose()


def _tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def test_upgrade_downgrade_upgrade(db_settings: DatabaseSettings, engine: Engine) -> None:
    assert migrate.current(db_settings) is None
    assert not migrate.check_at_head(db_settings)

    migrate.upgrade(db_settings)
    assert migrate.current(db_settings) == migrate.head() is not None
    assert migrate.check_at_head(db_settings)
    assert {"service_heartbeats", "alembic_version"} <= _tables(engine)

    migrate.downgrade(db_settings, "base")
    assert migrate.current(db_settings) is None
    assert not migrate.check_at_head(db_settings)
    assert "service_heartbeats" not in _tables(engine)

    migrate.upgrade(db_settings, "head")
    assert migrate.check_at_head(db_settings)
    assert "service_heartbeats" in _tables(engine)


def test_upgrade_twice_is_a_no_op(db_settings: DatabaseSettings) -> None:
    migrate.upgrade(db_settings)
    migrate.upgrade(db_settings)
    assert migrate.current(db_settings) == migrate.head()


def test_concurrent_upgrades_are_serialised(db_settings: DatabaseSettings) -> None:
    # Four services starting at once may all run `certrail db upgrade`.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(migrate.upgrade, db_settings) for _ in range(4)]
    for future in futures:
        future.result()  # re-raises a worker's exception
    assert migrate.check_at_head(db_settings)


def test_migrated_schema_matches_the_models(db_settings: DatabaseSettings, engine: Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    migrate.upgrade(db_settings)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_heartbeat_upsert_inserts_then_updates(db_settings: DatabaseSettings, engine: Engine) -> None:
    migrate.upgrade(db_settings)
    with write_session(engine) as session:
        record_heartbeat(session, "gateway", "gw-1", pid=10, hostname="h1", version="0.1.0", started_at=T0, now=T0)
        record_heartbeat(session, "issuer", "is-1", pid=11, hostname="h1", version="0.1.0", started_at=T0, now=T0)

    later = T0 + timedelta(seconds=15)
    with write_session(engine) as session:
        record_heartbeat(
            session, "gateway", "gw-1", pid=10, hostname="h1", version="0.1.1", started_at=T0, now=later
        )

    with read_session(engine) as session:
        heartbeats = list_heartbeats(session)
    assert heartbeats == [
        Heartbeat("gateway", "gw-1", 10, "h1", "0.1.1", T0, later),
        Heartbeat("issuer", "is-1", 11, "h1", "0.1.0", T0, T0),
    ]
    for heartbeat in heartbeats:
        assert heartbeat.last_seen_at.tzinfo is not None
        assert heartbeat.last_seen_at.utcoffset() == timedelta(0)


def test_heartbeat_times_are_stored_as_utc(db_settings: DatabaseSettings, engine: Engine) -> None:
    migrate.upgrade(db_settings)
    ist = timezone(timedelta(hours=5, minutes=30))
    local = datetime(2025, 3, 1, 17, 30, tzinfo=ist)  # == T0
    with write_session(engine) as session:
        record_heartbeat(session, "auditor", "au-1", pid=1, hostname="h", version="v", started_at=local, now=local)
    with read_session(engine) as session:
        (heartbeat,) = list_heartbeats(session)
    assert heartbeat.started_at == T0
    assert heartbeat.started_at.tzinfo == UTC


def test_naive_datetimes_are_refused(db_settings: DatabaseSettings, engine: Engine) -> None:
    migrate.upgrade(db_settings)
    with pytest.raises(StatementError, match="naive datetime"):
        with write_session(engine) as session:
            record_heartbeat(
                session, "auditor", "au-1", pid=1, hostname="h", version="v", started_at=datetime(2025, 1, 1)
            )


def test_read_session_is_read_only(db_settings: DatabaseSettings, engine: Engine) -> None:
    migrate.upgrade(db_settings)
    with pytest.raises(DBAPIError, match="(?i)read.?only"):
        with read_session(engine) as session:
            record_heartbeat(session, "deployer", "d-1", pid=1, hostname="h", version="v", started_at=T0)
    with write_session(engine) as session:
        record_heartbeat(session, "deployer", "d-1", pid=1, hostname="h", version="v", started_at=T0)
    with read_session(engine) as session:
        assert [h.instance_id for h in list_heartbeats(session)] == ["d-1"]


@pytest.mark.postgres
def test_postgres_schema_per_test_is_isolated(postgres_settings: DatabaseSettings) -> None:
    # A fresh schema: nothing migrated yet, whatever other tests did.
    assert migrate.current(postgres_settings) is None
    engine = make_engine(postgres_settings)
    try:
        with read_session(engine) as session:
            assert session.execute(text("SELECT current_schema()")).scalar_one().startswith("t_")
    finally:
        engine.dispose()
