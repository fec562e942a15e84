"""`certrail audit trail --target NAME`: the deployer's target and binding events (services/deployer/config/)
in the audit store, stored by the auditor's own store code from the deployer outbox's exact bytes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from services.auditor.admin_trail import admin_trail
from services.auditor.records import RawRecord
from services.auditor.store import store_records
from services.cli.audit_cmd import app as audit_cli
from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session
from services.common.db_schema import DeployerAdminOutbox
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.deployer.config import targets as path
from services.deployer.config.change import Actor, Refused
from services.deployer.store import TargetSpec

TOPICS = Topics("certrail")
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[DatabaseSettings, Engine]]:
    settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'one.db'}")
    upgrade(settings)
    engine = make_engine(settings)
    yield settings, engine
    engine.dispose()


async def _reachable(_: TargetSpec) -> None:
    return None


async def audited(engine: Engine, tmp_path: Path) -> None:
    alice, bob = Actor(engine, "alice", lambda: NOW), Actor(engine, "cli:bob", lambda: NOW)
    for name in ("edge", "other"):
        await path.put_target(alice, SecretBox([generate_key()]), name=name, kind="file", config={"dir": str(tmp_path / name)},
                              secrets={}, replace=False, probe=_reachable)
    path.bind(bob, "web", "edge")
    with pytest.raises(Refused):
        path.remove_target(alice, "edge")
    with read_session(engine) as session:
        rows = session.execute(select(DeployerAdminOutbox.channel, DeployerAdminOutbox.key, DeployerAdminOutbox.value)
                               .order_by(DeployerAdminOutbox.seq)).all()
    records = [RawRecord(TOPICS.channel(channel), 0, offset, 1_700_000_000_000 + offset, 0, key.encode(), value.encode(), ())
               for offset, (channel, key, value) in enumerate(rows)]
    store_records(engine, records, inventory_topics=TOPICS, now=NOW)


async def test_target_events_are_found_by_target_and_actor(db: tuple[DatabaseSettings, Engine], tmp_path: Path) -> None:
    settings, engine = db
    await audited(engine, tmp_path)
    with read_session(engine) as session:
        edge = admin_trail(session, target="edge")
        by_bob = admin_trail(session, actor="cli:bob", target="edge")
    assert [(e.event_type.split(".")[3], e.subject, e.actor, e.outcome) for e in edge] == [
        ("target_created", "target:edge", "alice", "succeeded"), ("target_bound", "target:edge <- profile web", "cli:bob", "succeeded"),
        ("target_deleted", "target:edge", "alice", "refused")]
    assert edge[0].change["kind"] == "file" and edge[2].error is not None and "TARGET_IN_USE" in edge[2].error
    assert [e.event_type.split(".")[3] for e in by_bob] == ["target_bound"]

    found = CliRunner().invoke(audit_cli, ["trail", "--target", "edge", "--json"], env={"CERTRAIL_DB_URL": settings.url})
    assert found.exit_code == 0, found.output
    assert [json.loads(line)["subject"] for line in found.stdout.splitlines()] == [e.subject for e in edge]
