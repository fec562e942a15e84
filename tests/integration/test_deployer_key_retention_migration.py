"""Migration 0016 (decision 0026) on SQLite and PostgreSQL: keys already superseded when it runs (an older key
of a certificate whose newer key's serial is deployed) are marked superseded at the upgrade; the live key, a
key of a certificate never renewed and a newer key whose deployment failed are not; downgrading drops the
tombstones of destroyed keys (they hold nothing to give back)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select, text

from services.common import migrate
from services.common.db import make_engine
from services.common.db_schema import DeployerBotKeyRow
from services.common.settings import DatabaseSettings

pytestmark = [pytest.mark.integration]
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(db_settings: DatabaseSettings) -> Iterator[Engine]:
    engine = make_engine(db_settings)
    yield engine
    engine.dispose()


def _at(engine: Engine, value: datetime) -> datetime:
    return value.replace(tzinfo=None) if engine.dialect.name == "sqlite" else value


def _key(engine: Engine, cause: str, certificate_id: str, serial: str | None, minutes: int) -> None:
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO deployer_bot_keys (cause_id, certificate_id, profile, public_key_sha256, key_algorithm, private_key, "
            "private_key_key_id, csr_pem, request_id, request_event, status, serial, created_at) VALUES (:cause, :cid, 'web', "
            ":hash, 'EC-P256', :key, 'k1', 'csr', :cause, '{}', :status, :serial, :created)"),
            {"cause": cause, "cid": certificate_id, "hash": cause.ljust(64, "0")[:64], "key": b"token", "serial": serial,
             "status": "issued" if serial else "requested", "created": _at(engine, T0 + timedelta(minutes=minutes))})


def _deployment(engine: Engine, certificate_id: str, serial: str, status: str) -> None:
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO deployer_deployments (certificate_id, serial, target_name, target_kind, status, attempts, cause_id, "
            "certificate_pem, chain_pem, public_key_sha256, started_at) VALUES (:cid, :serial, 'files', 'file', :status, 1, "
            "'c', 'pem', '[]', :hash, :at)"), {"cid": certificate_id, "serial": serial, "status": status, "hash": "0" * 64,
                                                "at": _at(engine, T0)})


def test_0016_marks_the_keys_already_superseded(db_settings: DatabaseSettings, engine: Engine) -> None:
    migrate.upgrade(db_settings, "0015")
    _key(engine, "renewed-old", "renewed", "01", 0)
    _key(engine, "renewed-unissued", "renewed", None, 1)
    _key(engine, "renewed-live", "renewed", "02", 5)
    _deployment(engine, "renewed", "01", "deployed")
    _deployment(engine, "renewed", "02", "deployed")
    _key(engine, "failed-old", "failed", "11", 0)
    _key(engine, "failed-new", "failed", "12", 5)
    _deployment(engine, "failed", "11", "deployed")
    _deployment(engine, "failed", "12", "failed")  # the newer key never served: the older one is still needed
    _key(engine, "single", "single", "21", 0)
    _deployment(engine, "single", "21", "deployed")
    before = datetime.now(UTC)
    migrate.upgrade(db_settings)
    with engine.connect() as connection:  # read through the model's types: the value is one UTCDateTime reads back
        rows = {cause: (superseded, reason) for cause, superseded, reason in connection.execute(select(
            DeployerBotKeyRow.cause_id, DeployerBotKeyRow.superseded_at, DeployerBotKeyRow.retire_reason))}
    marked = {cause for cause, (superseded, _) in rows.items() if superseded is not None}
    assert marked == {"renewed-old", "renewed-unissued"}
    for cause in marked:
        superseded, reason = rows[cause]
        assert reason == "superseded"
        assert before - timedelta(seconds=1) <= superseded <= datetime.now(UTC)

    with engine.begin() as connection:  # one of them destroyed, then the migration undone
        connection.execute(text("UPDATE deployer_bot_keys SET private_key = NULL, destroyed_at = :now "
                                "WHERE cause_id = 'renewed-old'"), {"now": _at(engine, T0)})
    migrate.downgrade(db_settings, "0015")
    with engine.connect() as connection:
        left = {cause for (cause,) in connection.execute(text("SELECT cause_id FROM deployer_bot_keys"))}
    assert left == {"renewed-unissued", "renewed-live", "failed-old", "failed-new", "single"}
