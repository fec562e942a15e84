"""`certrail demo` seeds its try-out file target and binding through the deployer's one path
(services/deployer/config/): probed, each change an admin event in the deployer's outbox naming the
local operator, and a second run records nothing more. (``engine``: tests/conftest.py's migrated SQLite.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from services.cli import demo
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import decode
from services.common.db import read_session
from services.common.db_schema import DeployerAdminOutbox
from services.deployer import store
from services.gateway.config.actor import cli_actor_name


def recorded(engine: Engine) -> list[tuple[str, str, str | None, str, str]]:
    with read_session(engine) as session:
        values = session.scalars(select(DeployerAdminOutbox.value).order_by(DeployerAdminOutbox.seq)).all()
    events: list[Any] = [decode(v.encode(), CATALOG).data for v in values]
    return [(type(e).__name__, e.target, getattr(e, "profile", None), e.actor, e.outcome.value) for e in events]


def test_the_demo_target_and_binding_go_through_the_one_path(engine: Engine, tmp_path: Path) -> None:
    var_dir, deploy_dir = tmp_path / "var", tmp_path / "var" / "deploy" / "demo-web"
    var_dir.mkdir()
    demo._bind_file_target(engine, var_dir, deploy_dir)
    demo._bind_file_target(engine, var_dir, deploy_dir)  # again: exists and bound, nothing more recorded
    operator = cli_actor_name()
    assert operator.startswith("cli:")
    assert recorded(engine) == [("TargetCreated", demo.TARGET, None, operator, "succeeded"),
                                ("TargetBound", demo.TARGET, demo.PROFILE, operator, "succeeded")]
    with read_session(engine) as session:
        assert store.get_target(session, demo.TARGET).config.dir == str(deploy_dir)  # type: ignore[union-attr]
        assert store.bindings(session, demo.PROFILE) == [(demo.PROFILE, demo.TARGET)]


def test_a_target_that_fails_its_probe_stops_the_demo(engine: Engine, tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    with pytest.raises(demo.DemoError, match="INSTALL_FAILED"):
        demo._bind_file_target(engine, var_dir, blocker / "deploy")
    assert [(e[0], e[4]) for e in recorded(engine)] == [("TargetCreated", "refused")]
    with read_session(engine) as session:
        assert store.bindings(session, demo.PROFILE) == []
