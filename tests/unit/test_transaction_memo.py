"""What one transaction reads once (services/common/db.transaction_memo): the deployer reads a profile's targets
and a connector's pin once per transaction (a grouped read of many certificates shares them), and never carries
them past the transaction's end."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.db import core, make_engine, read_session, transaction_memo, write_session
from services.common.db_schema import DeployerConnectorPinRow
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.deployer import projection, store
from services.deployer.targets.config import TargetKind

NOW = datetime(2026, 12, 6, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'memo.db'}")
    upgrade(db)
    engine = make_engine(db)
    yield engine
    engine.dispose()


def _count_selects(engine):  # type: ignore[no-untyped-def]
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]  # noqa: ARG001
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)
    return seen


def test_targets_are_read_once_per_transaction_and_again_in_the_next(engine) -> None:  # type: ignore[no-untyped-def]
    box = SecretBox([generate_key()])
    with write_session(engine) as session:
        store.add_target(session, box, "a", TargetKind.FILE, {"dir": "/srv/a"}, {}, NOW)
        store.bind(session, "web", "a", NOW)
    selects = _count_selects(engine)
    with read_session(engine) as session:
        first = store.targets_for_profile(session, "web", box)
        reads = len(selects)
        again = [store.targets_for_profile(session, "web", box) for _ in range(5)]
        assert len(selects) == reads  # no statement for the other certificates of the group
        assert all([t.name for t in a] == ["a"] for a in again) and [t.name for t in first] == ["a"]
        again[0].clear()  # a caller's list is its own
        assert [t.name for t in store.targets_for_profile(session, "web", box)] == ["a"]
    with write_session(engine) as session:  # another door binds a second target
        store.add_target(session, box, "b", TargetKind.FILE, {"dir": "/srv/b"}, {}, NOW)
        store.bind(session, "web", "b", NOW)
    with read_session(engine) as session:
        assert [t.name for t in store.targets_for_profile(session, "web", box)] == ["a", "b"]


def test_a_long_lived_session_forgets_at_commit_and_at_its_own_changes(engine) -> None:  # type: ignore[no-untyped-def]
    box = SecretBox([generate_key()])
    with Session(engine) as session:
        store.add_target(session, box, "a", TargetKind.FILE, {"dir": "/srv/a"}, {}, NOW)
        store.bind(session, "web", "a", NOW)
        session.flush()
        assert [t.name for t in store.targets_for_profile(session, "web", box)] == ["a"]
        store.unbind(session, "web", "a")  # its own change, in the same transaction
        assert store.targets_for_profile(session, "web", box) == []
        session.commit()
        with write_session(engine) as other:
            store.bind(other, "web", "a", NOW)
        assert [t.name for t in store.targets_for_profile(session, "web", box)] == ["a"]  # a new transaction


def test_a_pin_changed_in_the_transaction_is_read_again(engine) -> None:  # type: ignore[no-untyped-def]
    with write_session(engine) as session:
        assert projection.connector_pin(session, "sim") is None
        projection.set_pin(session, "sim", "AB" * 32, "e1", NOW, replace=False)
        assert projection.connector_pin(session, "sim") == "ab" * 32
        projection.forget_pin(session, "sim")
        assert projection.connector_pin(session, "sim") is None
    selects = _count_selects(engine)
    with read_session(engine) as session:
        for _ in range(3):
            assert projection.connector_pin(session, "sim") is None
        assert len(selects) == 1


def test_transaction_memo_lives_exactly_as_long_as_the_transaction(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        memo = transaction_memo(session, "k")
        memo["profile"] = "read once"
        assert transaction_memo(session, "k") is memo
        assert transaction_memo(session, "other") is not memo
        session.rollback()
        assert transaction_memo(session, "k") == {}
        transaction_memo(session, "k")["profile"] = "again"
        session.commit()
        assert "profile" not in transaction_memo(session, "k")


def test_core_sees_pending_orm_changes_and_follows_the_transaction(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        session.add(DeployerConnectorPinRow(connector="sim", pinned_ca_sha256="ab" * 32, event_id="e1", updated_at=NOW))
        first = core(session)
        assert first.execute(text("SELECT count(*) FROM deployer_connector_pins")).scalar() == 1  # flushed first
        assert core(session) is first
        session.rollback()
        assert core(session).execute(text("SELECT count(*) FROM deployer_connector_pins")).scalar() == 0
