"""`certrail db split --from URL`: the shared database of an existing installation copied into a database per
service (decision 0017, "Storage"): each service's file holds exactly its own tables' rows, the source is left as
it was, and a second split refuses."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Boolean, Engine, Integer, LargeBinary, Table, func, insert, select
from sqlalchemy.types import TypeDecorator
from typer.testing import CliRunner

from services.cli.db_cmd import app as db_cli
from services.common import migrate
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import Base, owner_of
from services.common.db_split import split
from services.common.settings import DATABASE_OWNERS, DatabaseSettings, service_db_url_env

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
#: tables of every owner, and the heartbeats every service writes (not copied: each writes its own again)
FILLED = {"gateway_leases": 3, "gateway_tokens": 2, "issuer_admin_outbox": 4, "issuer_crl_watch": 1,
          "emca_connectors": 2, "deployer_bindings": 2, "deployer_targets": 1, "certificate_serials": 5,
          "audit_verify_runs": 3, "service_heartbeats": 2}


def _value(table: Table, column: Any, i: int) -> object:
    kind = column.type.impl if isinstance(column.type, TypeDecorator) else column.type
    if "DateTime" in type(column.type).__name__ or "DateTime" in type(kind).__name__:
        return T0
    if isinstance(kind, Boolean):
        return False
    if isinstance(kind, Integer):
        return i
    if isinstance(kind, LargeBinary):
        return f"{table.name}-{i}".encode()
    return f"{column.name}-{i}"


def _rows(table: Table, count: int) -> list[dict[str, object]]:
    columns = [c for c in table.columns if not (c.primary_key and isinstance(c.type, Integer) and c.autoincrement is not False
                                                and len(table.primary_key.columns) == 1)]
    return [{c.name: _value(table, c, i) for c in columns if not c.nullable or c.primary_key} for i in range(1, count + 1)]


def _counts(engine: Engine) -> dict[str, int]:
    with read_session(engine) as session:
        found = {name: session.execute(select(func.count()).select_from(table)).scalar_one()
                 for name, table in Base.metadata.tables.items()}
    return {name: n for name, n in found.items() if n}


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[DatabaseSettings]:
    settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    migrate.upgrade(settings)
    source = make_engine(settings)
    try:
        with write_session(source) as session:
            for name, count in FILLED.items():
                session.execute(insert(Base.metadata.tables[name]), _rows(Base.metadata.tables[name], count))
        assert _counts(source) == FILLED
    finally:
        source.dispose()
    yield settings


def test_split_copies_each_services_rows_into_its_own_database_once(shared: DatabaseSettings, tmp_path: Path) -> None:
    env = {service_db_url_env(s): f"sqlite:///{tmp_path / 'split' / f'{s}.db'}" for s in DATABASE_OWNERS}
    env["CERTRAIL_DB_URL"] = ""  # unset: each service's own
    runner = CliRunner()
    result = runner.invoke(db_cli, ["split", "--from", shared.url], env=env)
    assert result.exit_code == 0, result.output
    assert "certificate_serials" in result.output and "5 rows" in result.output

    for service in DATABASE_OWNERS:
        target = DatabaseSettings(url=env[service_db_url_env(service)])
        assert migrate.check_at_head(target)
        engine = make_engine(target)
        try:
            assert _counts(engine) == {t: n for t, n in FILLED.items() if owner_of(t) == service}, service
            with read_session(engine) as session:  # the rows themselves, keys included
                table = Base.metadata.tables["audit_verify_runs" if service == "auditor" else "gateway_leases"]
                if owner_of(table.name) == service:
                    copied = session.execute(select(table).order_by(*table.primary_key.columns)).all()
                    source = make_engine(shared)
                    try:
                        with read_session(source) as original:
                            assert copied == original.execute(select(table).order_by(*table.primary_key.columns)).all()
                    finally:
                        source.dispose()
        finally:
            engine.dispose()

    source = make_engine(shared)
    try:
        assert _counts(source) == FILLED  # the source is untouched
    finally:
        source.dispose()

    again = runner.invoke(db_cli, ["split", "--from", shared.url], env=env)
    assert again.exit_code == 1
    assert "already hold rows" in again.output and "nothing was copied" in again.output


def test_split_refuses_a_target_that_is_the_source(shared: DatabaseSettings) -> None:
    result = CliRunner().invoke(db_cli, ["split", "--from", shared.url], env={"CERTRAIL_DB_URL": shared.url})
    assert result.exit_code == 1
    assert "is the source" in result.output


def test_split_refuses_a_source_behind_the_schema(tmp_path: Path) -> None:
    old = DatabaseSettings(url=f"sqlite:///{tmp_path / 'old.db'}")
    migrate.upgrade(old, "0001")
    env = {service_db_url_env(s): f"sqlite:///{tmp_path / f'{s}.db'}" for s in DATABASE_OWNERS}
    result = CliRunner().invoke(db_cli, ["split", "--from", old.url], env={**env, "CERTRAIL_DB_URL": ""})
    assert result.exit_code == 1
    assert "not at the newest schema" in result.output
    assert not any((tmp_path / f"{s}.db").exists() for s in DATABASE_OWNERS)


@pytest.mark.postgres
def test_split_into_postgresql_moves_the_key_sequences_past_the_copied_rows(
        shared: DatabaseSettings, postgres_settings: DatabaseSettings, tmp_path: Path) -> None:
    targets = {s: DatabaseSettings(url=f"sqlite:///{tmp_path / f'{s}.db'}") for s in DATABASE_OWNERS}
    targets["auditor"] = postgres_settings
    report = split(shared, targets)
    assert report.rows("auditor") == FILLED["certificate_serials"] + FILLED["audit_verify_runs"]
    engine = make_engine(postgres_settings)
    try:
        runs = Base.metadata.tables["audit_verify_runs"]
        with write_session(engine) as session:  # a new row gets the next key, not one the copy already gave
            new_id = session.execute(insert(runs).returning(runs.c.id), [_rows(runs, 1)[0]]).scalar_one()
        assert new_id == FILLED["audit_verify_runs"] + 1
        assert _counts(engine) == {"certificate_serials": 5, "audit_verify_runs": 4}
    finally:
        engine.dispose()
