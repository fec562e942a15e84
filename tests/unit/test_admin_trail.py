"""`certrail audit trail --connector/--profile/--token/--requester/--actor`: the admin events in the
audit store, found by subject (the record's key) and actor (the event's data), filters combined,
in Kafka's order; stored by the auditor's own store code from the outbox's exact bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from services.auditor.admin_trail import admin_trail
from services.auditor.records import RawRecord
from services.auditor.store import store_records
from services.cli.audit_cmd import app as audit_cli
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session
from services.common.db_schema import GatewayAdminOutbox
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway.config import profiles, tokens
from services.gateway.config.actor import Actor
from services.gateway.config.tokens import KeyScheme
from services.gateway.policy.tokens import Role
from tests.gateway_fixtures import BOX, NOW, _connector, _profile

TOPICS = Topics("certrail")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[DatabaseSettings, Engine]]:
    settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'one.db'}")
    upgrade(settings)
    engine = make_engine(settings)
    yield settings, engine
    engine.dispose()


def audited(engine: Engine) -> None:
    """What the gateway would publish, stored as the auditor stores records."""
    _connector(engine, "emca")
    alice, bob = Actor(engine, "alice", lambda: NOW), Actor(engine, "cli:bob", lambda: NOW)
    profiles.put_profile(alice, _profile("web", "emca"), create=True)
    profiles.put_profile(bob, _profile("web", "emca", validity_days=30), create=False)
    tokens.add_requester_key(bob, BOX, requester="ci", key_id="k1", scheme=KeyScheme.HMAC, secret_base64=None,
                             public_key_pem=None)
    tokens.revoke_requester_key(alice, requester="ci", key_id="k1")
    tokens.create_token(alice, identity="ops", role=Role.AUDITOR, profiles=None, description=None, expires_at=None)
    with read_session(engine) as session:
        rows = session.execute(select(GatewayAdminOutbox.channel, GatewayAdminOutbox.key, GatewayAdminOutbox.value)
                               .order_by(GatewayAdminOutbox.seq)).all()
    records = [RawRecord(TOPICS.channel(channel), 0, offset, 1_700_000_000_000 + offset, 0, key.encode(), value.encode(), ())
               for offset, (channel, key, value) in enumerate(rows)]
    store_records(engine, records, inventory_topics=TOPICS, now=NOW)


def test_admin_events_are_found_by_subject_and_actor(db: tuple[DatabaseSettings, Engine]) -> None:
    _, engine = db
    audited(engine)
    with read_session(engine) as session:
        everything = admin_trail(session)
        web = admin_trail(session, profile="web")
        keys = admin_trail(session, requester="ci")
        by_bob = admin_trail(session, actor="cli:bob")
        alice_on_keys = admin_trail(session, actor="alice", requester="ci")
        nothing = admin_trail(session, connector="emca")
    assert [e.event_type.split(".")[3] for e in everything] == [
        "profile_created", "profile_updated", "requester_key_added", "requester_key_revoked", "token_created"]
    assert [(e.subject, e.actor, e.outcome) for e in web] == [("profile:web", "alice", "succeeded"),
                                                             ("profile:web", "cli:bob", "succeeded")]
    assert web[1].change == {"validity_days": 30} and "validity_days=30" in web[1].summary
    assert [(e.subject, e.actor) for e in keys] == [("requester:ci/k1", "cli:bob"), ("requester:ci/k1", "alice")]
    assert keys[0].change == {"scheme": "hmac-sha256", "secret": "***"}
    assert [e.event_type.split(".")[3] for e in by_bob] == ["profile_updated", "requester_key_added"]
    assert [e.event_type.split(".")[3] for e in alice_on_keys] == ["requester_key_revoked"]
    assert nothing == []
    with pytest.raises(ValueError):
        admin_trail(session, colour="red")


def test_the_cli_lists_them_and_refuses_an_id_with_filters(db: tuple[DatabaseSettings, Engine]) -> None:
    settings, engine = db
    audited(engine)
    runner = CliRunner()
    env = {"CERTRAIL_DB_URL": settings.url}
    table = runner.invoke(audit_cli, ["trail", "--requester", "ci"], env=env)
    assert table.exit_code == 0, table.output
    assert "requester:ci/k1 by cli:bob: succeeded" in table.stdout and "requester_key_revoked" in table.stdout
    assert runner.invoke(audit_cli, ["trail", "--token", "000000000000"], env=env).exit_code == 1
    both = runner.invoke(audit_cli, ["trail", "some-id", "--actor", "alice"], env=env)
    assert both.exit_code == 2 and "not both" in both.stderr
    assert runner.invoke(audit_cli, ["trail"], env=env).exit_code == 2
