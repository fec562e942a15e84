"""The runtime's ORM group commit (services/common/runtime/writer.py): steps queued together share
one transaction, a step that fails alone fails only its caller (the group is rolled back and written
one by one), and grouped reads share one read-only transaction. SQLite in a temp dir."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.common.db import make_engine, read_session
from services.common.db_schema import DeployerConnectorPinRow
from services.common.migrate import upgrade
from services.common.runtime.writer import SessionReads, SessionWriter
from services.common.settings import DatabaseSettings

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    upgrade(db)
    engine = make_engine(db)
    yield engine
    engine.dispose()


def _pin(session: Session, name: str) -> str:
    session.add(DeployerConnectorPinRow(connector=name, pinned_ca_sha256="ab" * 32, event_id=f"e-{name}", updated_at=NOW))
    session.flush()
    return name


def _broken(session: Session, name: str) -> str:
    _pin(session, name)
    raise ValueError(f"step {name} breaks")


def _pins(engine) -> list[str]:  # type: ignore[no-untyped-def]
    with read_session(engine) as session:
        return sorted(session.scalars(select(DeployerConnectorPinRow.connector)))


async def test_steps_queued_together_commit_in_one_group(engine) -> None:  # type: ignore[no-untyped-def]
    writer = SessionWriter(engine, name="test-writes")
    results = await asyncio.gather(*(writer.run(_pin, f"c{i}") for i in range(20)))
    assert results == [f"c{i}" for i in range(20)]
    assert _pins(engine) == sorted(f"c{i}" for i in range(20))
    assert writer.steps == 20 and writer.groups < 20  # queued in one event-loop turn: grouped


async def test_a_failing_step_fails_alone_and_the_others_are_written(engine) -> None:  # type: ignore[no-untyped-def]
    writer = SessionWriter(engine, name="test-writes")
    outcomes = await asyncio.gather(writer.run(_pin, "a"), writer.run(_broken, "b"), writer.run(_pin, "c"),
                                    return_exceptions=True)
    assert outcomes[0] == "a" and outcomes[2] == "c"
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "step b breaks"
    assert _pins(engine) == ["a", "c"]  # b's row was rolled back with its step, nobody else's


async def test_grouped_reads_share_one_read_only_transaction(engine) -> None:  # type: ignore[no-untyped-def]
    writer = SessionWriter(engine, name="test-writes")
    await writer.run(_pin, "x")
    reads = SessionReads(engine, name="test-reads")

    def count(session: Session) -> int:
        return int(session.scalar(select(func.count()).select_from(DeployerConnectorPinRow)) or 0)

    def write_through_a_read(session: Session) -> str:
        return _pin(session, "y")

    outcomes = await asyncio.gather(reads.run(count), reads.run(write_through_a_read), reads.run(count),
                                    return_exceptions=True)
    assert outcomes[0] == 1 and outcomes[2] == 1
    assert isinstance(outcomes[1], Exception)  # a read session refuses to write (query_only), and only that step fails
    assert _pins(engine) == ["x"] and reads.groups == 1
