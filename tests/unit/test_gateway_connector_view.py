"""The gateway's own view of the emCA connectors (services/gateway/connector_view.py, decisions 0017 and 0034):
the connector admin events folded into gateway_connectors (created, updated, activated, deactivated, deleted),
idempotent and deaf to an older event arriving late; intake and the profile checks read it; migration 0025 fills it
once from the issuer's registry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from services.common.contracts.admin import (
    AdminOutcome,
    ConnectorActivated,
    ConnectorCreated,
    ConnectorDeactivated,
    ConnectorDeleted,
    ConnectorUpdated,
    event_error,
)
from services.common.contracts.envelope import Envelope, make_event
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import EmcaConnectorRow
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway import connector_view
from tests.gateway_fixtures import NOW


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'gw.db'}")
    upgrade(db)
    engine = make_engine(db)
    yield engine
    engine.dispose()


def _event(cls: type[Any], at: timedelta, *, name: str = "emca", change: dict[str, Any] | None = None,
           refused: bool = False) -> Envelope:
    data = cls(connector=name, actor="admin", outcome=AdminOutcome.REFUSED if refused else AdminOutcome.SUCCEEDED,
               change=change or {}, error=event_error("CONNECTOR_EXISTS", "exists") if refused else None)
    return make_event(data, id=f"{cls.__name__}-{name}-{at.total_seconds()}", source="/certrail/issuer/config",
                      time=NOW + at, subject=None)


def _apply(engine: Engine, *events: Envelope) -> list[bool]:
    with write_session(engine) as session:
        return [connector_view.apply_in(session, e) for e in events]


def _status(engine: Engine, name: str = "emca") -> str | None:
    with read_session(engine) as session:
        return connector_view.live_status(session, name)


def test_the_life_of_a_connector(engine: Engine) -> None:
    assert _status(engine) is None
    assert _apply(engine, _event(ConnectorCreated, timedelta(0), change={"status": "enabled"})) == [True]
    assert _status(engine) == "enabled"
    _apply(engine, _event(ConnectorDeactivated, timedelta(1)))
    assert _status(engine) == "disabled"
    _apply(engine, _event(ConnectorUpdated, timedelta(2), change={"base_url": "https://emca.example"}))
    assert _status(engine) == "disabled", "an edit keeps a disabled connector disabled"
    _apply(engine, _event(ConnectorActivated, timedelta(3)))
    assert _status(engine) == "enabled"
    _apply(engine, _event(ConnectorDeleted, timedelta(4)))
    assert _status(engine) is None
    _apply(engine, _event(ConnectorCreated, timedelta(5)))
    assert _status(engine) == "enabled", "a name may be created again after its deletion"


def test_redelivered_and_late_events_change_nothing(engine: Engine) -> None:
    created, disabled, deleted = (_event(ConnectorCreated, timedelta(0)), _event(ConnectorDeactivated, timedelta(1)),
                                  _event(ConnectorDeleted, timedelta(2)))
    assert _apply(engine, created, disabled, disabled) == [True, True, False]
    assert _apply(engine, created) == [False], "older than the last event folded"
    assert _status(engine) == "disabled"
    _apply(engine, deleted)
    assert _apply(engine, created, disabled) == [False, False], "a tombstone: a late event does not resurrect it"
    assert _status(engine) is None


def test_refusals_and_other_connectors_change_nothing(engine: Engine) -> None:
    assert _apply(engine, _event(ConnectorCreated, timedelta(0), refused=True)) == [False]
    assert _status(engine) is None
    _apply(engine, _event(ConnectorCreated, timedelta(0), name="other"))
    assert (_status(engine), _status(engine, "other")) == (None, "enabled")


def test_an_update_naming_a_status_sets_it_and_one_seen_first_means_enabled(engine: Engine) -> None:
    _apply(engine, _event(ConnectorUpdated, timedelta(0), change={"concurrency": 4}))
    assert _status(engine) == "enabled", "a connector first seen by an edit (history before the view) exists"
    _apply(engine, _event(ConnectorUpdated, timedelta(1), change={"status": "disabled"}))
    assert _status(engine) == "disabled"


def test_a_fold_is_seen_by_the_same_transaction(engine: Engine) -> None:
    with write_session(engine) as session:
        assert connector_view.live_status(session, "emca") is None  # read once, remembered for the transaction
        connector_view.fold(session, "emca", connector_view.ENABLED, NOW)
        assert connector_view.live_status(session, "emca") == "enabled"


def _registry_row(name: str, status: str) -> dict[str, Any]:
    return dict(name=name, version="V4.2.4+", base_url="https://emca.example", username="u", issuing_ca="CA",
                subscriber_id="SUB", default_profile="TLS Server", concurrency=4, ca_bundle_pem=None,
                pinned_ca_sha256="0" * 64, pinned_chain_pem="", secrets=b"x", secrets_key_id="k",
                secret_fields="password", status=status, status_reason=None, last_test_ok=True, last_test_code=None,
                last_test_message=None, last_tested_at=NOW, revision=1, created_at=NOW, updated_at=NOW)


def test_migration_0025_fills_the_view_once_from_the_registry(db_settings: DatabaseSettings) -> None:
    db = db_settings  # SQLite and PostgreSQL
    upgrade(db, "0023")
    engine = make_engine(db)
    try:
        with write_session(engine) as session:
            session.execute(insert(EmcaConnectorRow), [_registry_row("on", "enabled"), _registry_row("off", "disabled"),
                                                       _registry_row("broken", "misconfigured")])
        upgrade(db)
        assert [_status(engine, n) for n in ("on", "off", "broken", "none")] == ["enabled", "disabled", "enabled", None]
        assert _apply(engine, _event(ConnectorCreated, timedelta(seconds=-1), name="off")) == [False], "older than the copy"
        assert _apply(engine, _event(ConnectorActivated, timedelta(1), name="off")) == [True]
        assert _status(engine, "off") == "enabled"
    finally:
        engine.dispose()
