"""The registry's ``record`` hook (decision 0019): what a caller writes beside a connector change commits
in the change's own transaction, so a hook that fails rolls the change back with it; on SQLite and
PostgreSQL (db_settings). And the issuer's path uses it (decision 0034): a change and its admin event in the
issuer's outbox are one transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from services.common import migrate
from services.common.admin_outbox import Actor
from services.common.connectors.models import ChangeAction, ConnectorChange, ConnectorEdit, ConnectorStatus
from services.common.connectors.secretbox import generate_key
from services.common.db import make_engine, read_session
from services.common.db_schema import EmcaConnectorRow, GatewayProfile, IssuerAdminOutbox
from services.common.emca.fake import FakeEmca
from services.common.emca.types import EmcaVersion
from services.common.settings import DatabaseSettings
from services.issuer.registry import changes as path
from services.issuer.registry.registry import ConnectorRegistry
from tests.unit.test_connector_registry import make_registry
from tests.unit.test_connector_validation import spec_for

NOW = datetime(2026, 1, 20, 12, 0, tzinfo=UTC)


class HookFailed(RuntimeError):
    pass


@pytest.fixture
def engine(db_settings: DatabaseSettings) -> Iterator[Engine]:
    """A migrated database of the test's own, on SQLite and PostgreSQL."""
    migrate.upgrade(db_settings)
    made = make_engine(db_settings)
    yield made
    made.dispose()


def stored(engine: Engine) -> list[tuple[str, str, int, str | None]]:
    """Every connector as (name, status, revision, secrets key id)."""
    with read_session(engine) as session:
        rows = session.scalars(select(EmcaConnectorRow).order_by(EmcaConnectorRow.name))
        return [(r.name, r.status, r.revision, r.secrets_key_id) for r in rows]


def outbox_rows(engine: Engine) -> int:
    with read_session(engine) as session:
        return session.scalar(select(func.count()).select_from(IssuerAdminOutbox)) or 0


def failing(seen: list[ConnectorChange]) -> Callable[[Session, ConnectorChange], None]:
    """A hook that writes a row in the change's session (a profile naming the connector), then raises."""
    def hook(session: Session, change: ConnectorChange) -> None:
        seen.append(change)
        session.add(GatewayProfile(name=f"p-{len(seen)}", connector=change.connector, spec="{}", revision=1,
                                   created_at=NOW, updated_at=NOW))
        session.flush()
        raise HookFailed(change.action.value)
    return hook


CHANGES: dict[str, Callable[[ConnectorRegistry, Any], Awaitable[Any] | Any]] = {
    "update": lambda r, hook: r.update("c1", ConnectorEdit(concurrency=3), record=hook),
    "disable": lambda r, hook: r.disable("c1", "maintenance", record=hook),
    "enable": lambda r, hook: r.enable("c1", record=hook),
    "delete": lambda r, hook: r.delete("c1", record=hook),
    "rotate_secrets": lambda r, hook: r.rotate_secrets(record=hook),
}


async def test_a_failing_hook_rolls_back_the_new_connector(engine: Engine) -> None:
    emca, key = FakeEmca(), generate_key()
    seen: list[ConnectorChange] = []
    with pytest.raises(HookFailed):
        await make_registry(engine, emca, key).create(spec_for(emca, EmcaVersion.V4_2_4), record=failing(seen))
    assert [(c.action, c.connector, c.change["status"]) for c in seen] == [(ChangeAction.CREATED, "c1", "enabled")]
    assert stored(engine) == []
    with read_session(engine) as session:
        assert session.scalars(select(GatewayProfile)).all() == []  # the hook's own row went with it


@pytest.mark.parametrize("name", list(CHANGES))
async def test_a_failing_hook_rolls_back_the_change(engine: Engine, name: str) -> None:
    emca, key = FakeEmca(), generate_key()
    registry = make_registry(engine, emca, key)
    await registry.create(spec_for(emca, EmcaVersion.V4_2_4))
    if name == "enable":
        registry.disable("c1")
    if name == "rotate_secrets":
        registry = make_registry(engine, emca, key, keys=[generate_key(), key])
    before = stored(engine)
    seen: list[ConnectorChange] = []
    with pytest.raises(HookFailed):
        result = CHANGES[name](registry, failing(seen))
        if isinstance(result, Awaitable):
            await result
    assert len(seen) == 1 and seen[0].connector == "c1"
    assert stored(engine) == before  # same status, revision and secrets key: nothing was written
    with read_session(engine) as session:
        assert session.scalars(select(GatewayProfile)).all() == []


async def test_the_issuers_path_writes_the_event_in_the_change_transaction(engine: Engine) -> None:
    emca, key = FakeEmca(), generate_key()
    registry = make_registry(engine, emca, key)
    actor = Actor(engine, "root-admin", lambda: NOW)
    await path.create_connector(actor, registry, spec_for(emca, EmcaVersion.V4_2_4))
    await path.disable_connector(actor, registry, "c1", "maintenance")
    assert outbox_rows(engine) == 2 and len(actor.recorded) == 2
    assert stored(engine)[0][1] == ConnectorStatus.DISABLED.value

    # the event cannot be written (the actor's clock fails while it is made): the change does not commit either
    def broken_clock() -> datetime:
        raise HookFailed("no time for the event")

    with pytest.raises(HookFailed):
        await path.enable_connector(Actor(engine, "root-admin", broken_clock), registry, "c1")
    assert stored(engine)[0][1] == ConnectorStatus.DISABLED.value and outbox_rows(engine) == 2
