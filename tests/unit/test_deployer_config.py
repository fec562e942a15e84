"""The deployer's one configuration path (services/deployer/config/, decision 0019) on a migrated
database (SQLite and PostgreSQL), with a fake probe (the real probes meet real targets in tests/integration): each change writes
its table and its admin event in one transaction; a refusal writes only its event; a secret value is
never in an event; a bound target cannot be removed; the relay publishes unsent rows in order, byte for
byte, and retries a failed round with the same ids."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.contracts.admin import TargetBound, TargetCreated, TargetDeleted, TargetUnbound, TargetUpdated
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import decode
from services.common.contracts.errors import ErrorCode
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session
from services.common.db_schema import DeployerAdminOutbox, DeployerTargetRow
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.deployer import store
from services.deployer.config import targets as path
from services.deployer.config.change import Actor, ConfigCode, Refused
from services.deployer.config.outbox import OutboxRelay
from services.deployer.targets.base import TargetError

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
HMAC = "webhook-hmac-secret-" + "q" * 32


@pytest.fixture
def engine(db_settings: DatabaseSettings) -> Any:
    """A migrated database: SQLite and PostgreSQL (tests/postgres_fixtures.py)."""
    settings = db_settings
    upgrade(settings)
    engine = make_engine(settings)
    yield engine
    engine.dispose()


def actor(engine: Engine, name: str = "ops-oncall") -> Actor:
    return Actor(engine, name, lambda: NOW)


async def reachable(_: store.TargetSpec) -> None:
    return None


async def unreachable(spec: store.TargetSpec) -> None:
    raise TargetError(ErrorCode.TARGET_UNREACHABLE, f"no TLS answer from {spec.name}", transient=True)


def outbox(engine: Engine) -> list[tuple[str, Any, str]]:
    """(type name, data, raw value) of every outbox row, in order."""
    with read_session(engine) as session:
        rows = session.scalars(select(DeployerAdminOutbox).order_by(DeployerAdminOutbox.seq)).all()
        return [(type(decode(r.value.encode(), CATALOG).data).__name__, decode(r.value.encode(), CATALOG).data, r.value)
                for r in rows]


def target_names(engine: Engine) -> list[str]:
    with read_session(engine) as session:
        return list(session.scalars(select(DeployerTargetRow.name).order_by(DeployerTargetRow.name)))


async def test_a_target_is_stored_with_its_event_and_no_secret_value(engine: Engine) -> None:
    box = SecretBox([generate_key()])
    spec = await path.put_target(actor(engine), box, name="hook", kind="webhook", config={"url": "https://h.test/in"},
                                 secrets={"hmac_secret": HMAC}, replace=False, probe=reachable)
    assert spec.secret_names == ("hmac_secret",)
    [(name, data, raw)] = outbox(engine)
    assert name == "TargetCreated" and data.target == "hook" and data.actor == "ops-oncall" and data.outcome == "succeeded"
    assert data.change["kind"] == "webhook" and data.change["config"]["url"] == "https://h.test/in"
    assert data.change["secrets"] == {"hmac_secret": "***"}
    assert HMAC not in raw
    with read_session(engine) as session:
        assert store.get_target(session, "hook", box).secrets == {"hmac_secret": HMAC}  # stored, encrypted
        assert HMAC.encode() not in (session.get(DeployerTargetRow, "hook").secrets or b"")  # type: ignore[union-attr]

    await path.put_target(actor(engine), box, name="hook", kind="webhook", config={"url": "https://h.test/v2"},
                          secrets={"hmac_secret": HMAC}, replace=True, probe=reachable)
    assert outbox(engine)[-1][0] == TargetUpdated.__name__



async def test_a_replace_keeps_the_stored_secrets_it_leaves_out(engine: Engine) -> None:
    box = SecretBox([generate_key()])
    seen: list[dict[str, str]] = []

    async def probe(spec: store.TargetSpec) -> None:
        seen.append(dict(spec.secrets))

    await path.put_target(actor(engine), box, name="hook", kind="webhook", config={"url": "https://h.test/in"},
                          secrets={"hmac_secret": HMAC}, replace=False, probe=probe)
    await path.put_target(actor(engine), box, name="hook", kind="webhook", config={"url": "https://h.test/v2"},
                          secrets={}, replace=True, probe=probe)
    assert seen[-1] == {"hmac_secret": HMAC}  # probed with the kept secret
    name, data, raw = outbox(engine)[-1]
    assert name == "TargetUpdated" and data.change["secrets"] == {} and data.change["secrets_kept"] == ["hmac_secret"]
    assert data.change["config"]["url"] == "https://h.test/v2" and HMAC not in raw
    with read_session(engine) as session:
        assert store.get_target(session, "hook", box).secrets == {"hmac_secret": HMAC}

    # a new secret given replaces the stored one; nothing is kept
    other = "another-webhook-secret-" + "z" * 32
    await path.put_target(actor(engine), box, name="hook", kind="webhook", config={"url": "https://h.test/v2"},
                          secrets={"hmac_secret": other}, replace=True, probe=probe)
    assert "secrets_kept" not in outbox(engine)[-1][1].change
    with read_session(engine) as session:
        assert store.get_target(session, "hook", box).secrets == {"hmac_secret": other}

    # stored secrets the deployer's key can no longer read cannot be kept: refused, with what to do
    with pytest.raises(Refused) as refused:
        await path.put_target(actor(engine), SecretBox([generate_key()]), name="hook", kind="webhook",
                              config={"url": "https://h.test/v3"}, secrets={}, replace=True, probe=probe)
    assert refused.value.code == ConfigCode.INVALID_INPUT and "give them again" in refused.value.message
    assert outbox(engine)[-1][1].outcome == "refused"

async def test_a_failed_probe_refuses_the_target_and_records_only_the_refusal(engine: Engine) -> None:
    with pytest.raises(Refused) as refused:
        await path.put_target(actor(engine), SecretBox([generate_key()]), name="hook", kind="webhook",
                              config={"url": "https://h.test/in"}, secrets={"hmac_secret": HMAC}, replace=False,
                              probe=unreachable)
    assert refused.value.code == ErrorCode.TARGET_UNREACHABLE
    assert target_names(engine) == []
    [(name, data, raw)] = outbox(engine)
    assert name == TargetCreated.__name__ and data.outcome == "refused"
    assert data.error.code is ErrorCode.TARGET_UNREACHABLE and HMAC not in raw


@pytest.mark.parametrize(("kind", "config", "secrets", "code"), [
    ("file", {"dir": "relative"}, {}, ConfigCode.INVALID_INPUT),
    ("webhook", {"url": "http://plain.test/"}, {"hmac_secret": HMAC}, ConfigCode.INVALID_INPUT),
    ("webhook", {"url": "https://h.test/"}, {"hmac_secret": "short"}, ConfigCode.INVALID_INPUT),
    ("printer", {}, {}, ConfigCode.INVALID_INPUT),
])
async def test_invalid_targets_are_refused_before_the_probe(engine: Engine, kind: str, config: dict[str, Any],
                                                             secrets: dict[str, str], code: str) -> None:
    probed: list[str] = []

    async def probe(spec: store.TargetSpec) -> None:
        probed.append(spec.name)

    with pytest.raises(Refused) as refused:
        await path.put_target(actor(engine), SecretBox([generate_key()]), name="bad", kind=kind, config=config,
                              secrets=secrets, replace=False, probe=probe)
    assert refused.value.code == code and probed == [] and target_names(engine) == []
    [(_, data, raw)] = outbox(engine)
    assert data.outcome == "refused" and data.error.message.startswith("INVALID_INPUT:")
    assert all(value not in raw for value in secrets.values())


async def test_an_existing_target_is_not_replaced_without_replace(engine: Engine, tmp_path: Path) -> None:
    box = SecretBox([generate_key()])
    await path.put_target(actor(engine), box, name="files", kind="file", config={"dir": str(tmp_path / "a")}, secrets={},
                          replace=False, probe=reachable)
    with pytest.raises(Refused) as refused:
        await path.put_target(actor(engine), box, name="files", kind="file", config={"dir": str(tmp_path / "b")},
                              secrets={}, replace=False, probe=reachable)
    assert refused.value.code == ConfigCode.TARGET_EXISTS
    with read_session(engine) as session:
        assert store.get_target(session, "files").config.dir == str(tmp_path / "a")
    assert [(n, d.outcome) for n, d, _ in outbox(engine)] == [("TargetCreated", "succeeded"), ("TargetUpdated", "refused")]


async def test_the_change_and_its_event_are_one_transaction(engine: Engine, tmp_path: Path) -> None:
    """An event that cannot be written (an actor that is not an identity) takes the change with it."""
    with pytest.raises(ValueError, match="not valid"):
        await path.put_target(actor(engine, "not an identity!"), SecretBox([generate_key()]), name="files", kind="file",
                              config={"dir": str(tmp_path)}, secrets={}, replace=False, probe=reachable)
    assert target_names(engine) == [] and outbox(engine) == []


async def test_bind_unbind_and_remove_refused_while_bound(engine: Engine, tmp_path: Path) -> None:
    await path.put_target(actor(engine), SecretBox([generate_key()]), name="files", kind="file",
                          config={"dir": str(tmp_path)}, secrets={}, replace=False, probe=reachable)
    assert path.bind(actor(engine), "web", "files") is True
    assert path.bind(actor(engine), "web", "files") is False  # already bound: nothing new to record
    with pytest.raises(Refused) as missing:
        path.bind(actor(engine), "web", "nothing")
    assert missing.value.code == ConfigCode.TARGET_NOT_FOUND  # no such subject: not recorded
    with pytest.raises(Refused) as in_use:
        path.remove_target(actor(engine), "files")
    assert in_use.value.code == ConfigCode.TARGET_IN_USE and "unbind it first" in in_use.value.message
    assert target_names(engine) == ["files"]
    path.unbind(actor(engine, "cli:alice"), "web", "files")
    with pytest.raises(Refused) as unbound:
        path.unbind(actor(engine), "web", "files")
    assert unbound.value.code == ConfigCode.BINDING_NOT_FOUND
    path.remove_target(actor(engine), "files")
    assert target_names(engine) == []
    assert [(n, d.target, getattr(d, "profile", None), d.actor, d.outcome) for n, d, _ in outbox(engine)] == [
        (TargetCreated.__name__, "files", None, "ops-oncall", "succeeded"),
        (TargetBound.__name__, "files", "web", "ops-oncall", "succeeded"),
        (TargetDeleted.__name__, "files", None, "ops-oncall", "refused"),
        (TargetUnbound.__name__, "files", "web", "cli:alice", "succeeded"),
        (TargetDeleted.__name__, "files", None, "ops-oncall", "succeeded"),
    ]


async def test_the_relay_publishes_unsent_rows_in_order_and_retries_with_the_same_ids(engine: Engine, tmp_path: Path) -> None:
    for name in ("a", "b"):
        await path.put_target(actor(engine), SecretBox([generate_key()]), name=name, kind="file",
                              config={"dir": str(tmp_path / name)}, secrets={}, replace=False, probe=reachable)
    sent: list[tuple[str, str | None, bytes, dict[str, str]]] = []
    failing = True

    async def send(records: Sequence[tuple[str, str | None, bytes, dict[str, str]]]) -> None:
        if failing:
            raise TimeoutError("broker down")
        sent.extend(records)

    relay = OutboxRelay(engine, Topics("certrail"), send, lambda: NOW)
    with pytest.raises(TimeoutError):
        await relay.relay_once()
    failing = False
    assert await relay.relay_once() == 2
    assert await relay.relay_once() == 0  # marked sent
    assert [(t, k) for t, k, _, _ in sent] == [("certrail.events.deployer", "target:a"), ("certrail.events.deployer", "target:b")]
    assert [v.decode() for _, _, v, _ in sent] == [raw for _, _, raw in outbox(engine)]  # the stored bytes: same ids
    assert all(h["ce_type"] == TargetCreated.TYPE for _, _, _, h in sent)
    assert json.loads(sent[0][2])["source"] == "/certrail/deployer/config"
