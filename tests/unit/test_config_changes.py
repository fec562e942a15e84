"""The one path of configuration changes (services/gateway/config/; decision 0019): each change
writes its table and its admin event (the outbox) in one transaction; a refused change writes only
the event; secrets never reach an event; the relay publishes unsent rows once, in order, and
survives a failed publish."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from sqlalchemy import Engine, event, select

from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import decode
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session
from services.common.db_schema import GatewayAdminOutbox, GatewayProfile, GatewayRequesterKey, GatewayToken
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway.api_common import Problem
from services.gateway.config import outbox, profiles, tokens
from services.gateway.config.actor import Actor, cli_actor_name
from services.gateway.config.change import refuse
from services.gateway.config.tokens import KeyScheme
from services.gateway.policy.tokens import Role
from tests.gateway_fixtures import BOX, NOW, _connector, _profile

TOPICS = Topics("t-config.certrail")
HMAC_SECRET = b"h-secret-material-" + b"z" * 20


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'gw.db'}")
    upgrade(settings)
    engine = make_engine(settings)
    _connector(engine, "emca")
    yield engine
    engine.dispose()


def actor(engine: Engine, name: str = "root-admin") -> Actor:
    return Actor(engine, name, lambda: NOW)


def outbox_events(engine: Engine) -> list[tuple[GatewayAdminOutbox, Any]]:
    with read_session(engine) as session:
        rows = list(session.scalars(select(GatewayAdminOutbox).order_by(GatewayAdminOutbox.seq)))
        session.expunge_all()
    return [(row, decode(row.value.encode(), CATALOG)) for row in rows]


def count(engine: Engine, table: type[Any]) -> int:
    with read_session(engine) as session:
        return len(list(session.scalars(select(table))))


def test_a_token_and_its_event_are_written_together_and_the_event_holds_no_token(engine: Engine) -> None:
    who = actor(engine)
    new, described = tokens.create_token(who, identity="ci", role=Role.REQUESTER, profiles=None, description="CI",
                                         expires_at=None)
    [(row, envelope)] = outbox_events(engine)
    assert who.recorded == [row.seq] and row.sent_at is None
    assert (type(envelope.data).__name__, envelope.data.token_id, envelope.data.actor, envelope.data.outcome) == (
        "TokenCreated", new.token_id, "root-admin", "succeeded")
    assert envelope.data.change == {"identity": "ci", "role": "requester", "profiles": None, "description": "CI",
                                    "expires_at": None}
    assert row.key == f"token_id:{new.token_id}" and row.channel == "events.gateway"
    assert new.token not in row.value and new.token_hash not in row.value
    assert described["created_by"] == "root-admin" and count(engine, GatewayToken) == 1
    tokens.revoke_token(who, new.token_id)
    assert [type(e.data).__name__ for _, e in outbox_events(engine)] == ["TokenCreated", "TokenRevoked"]


def test_when_the_event_cannot_be_written_the_change_is_not_written_either(engine: Engine) -> None:
    def refuse_outbox(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO GATEWAY_ADMIN_OUTBOX"):
            raise RuntimeError("outbox unavailable")

    event.listen(engine, "before_cursor_execute", refuse_outbox)
    try:
        with pytest.raises(RuntimeError, match="outbox unavailable"):
            tokens.create_token(actor(engine), identity="ci", role=Role.ADMIN, profiles=None, description=None, expires_at=None)
        with pytest.raises(RuntimeError):
            profiles.put_profile(actor(engine), _profile("web", "emca"), create=True)
    finally:
        event.remove(engine, "before_cursor_execute", refuse_outbox)
    assert count(engine, GatewayToken) == 0 and count(engine, GatewayProfile) == 0 and outbox_events(engine) == []


def test_a_refused_change_writes_only_its_event(engine: Engine) -> None:
    who = actor(engine, "cli:operator")
    with pytest.raises(Problem) as refused:
        tokens.create_token(who, identity="ci", role=Role.REQUESTER, profiles=["nope"], description=None, expires_at=None)
    assert refused.value.code == "PROFILE_NOT_FOUND"
    with pytest.raises(Problem) as expired:
        tokens.create_token(who, identity="ci", role=Role.REQUESTER, profiles=None, description=None,
                            expires_at=NOW - timedelta(seconds=1))
    assert expired.value.code == "SCHEMA_VIOLATION"
    with pytest.raises(Problem) as missing_connector:
        profiles.put_profile(who, _profile("web", "no-such-connector"), create=True)
    assert missing_connector.value.code == "CONNECTOR_NOT_FOUND"
    assert count(engine, GatewayToken) == 0 and count(engine, GatewayProfile) == 0
    events = [e.data for _, e in outbox_events(engine)]
    assert [(type(e).__name__, e.outcome.value, e.actor, e.error.code.value) for e in events] == [
        ("TokenCreated", "refused", "cli:operator", "PROFILE_NOT_FOUND"),
        ("TokenCreated", "refused", "cli:operator", "SCHEMA_VIOLATION"),
        ("ProfileCreated", "refused", "cli:operator", "CONNECTOR_NOT_FOUND"),
    ]
    assert events[0].token_id == tokens.REFUSED_TOKEN_ID and who.recorded == [r.seq for r, _ in outbox_events(engine)]


def test_changes_to_nothing_that_exists_are_refused_unrecorded(engine: Engine) -> None:
    who = actor(engine)
    for change, code in [(lambda: tokens.revoke_token(who, "000000000000"), "TOKEN_NOT_FOUND"),
                         (lambda: profiles.delete_profile(who, "nope"), "PROFILE_NOT_FOUND"),
                         (lambda: tokens.revoke_requester_key(who, requester="ci", key_id="k"), "REQUESTER_KEY_NOT_FOUND")]:
        with pytest.raises(Problem) as refused:
            change()
        assert refused.value.code == code
    assert outbox_events(engine) == [] and who.recorded == []


def test_requester_keys_are_recorded_without_their_secret(engine: Engine) -> None:
    who = actor(engine)
    given = base64.b64encode(HMAC_SECRET).decode()
    assert tokens.add_requester_key(who, BOX, requester="ci", key_id="k1", scheme=KeyScheme.HMAC, secret_base64=given,
                                    public_key_pem=None) is None
    generated = tokens.add_requester_key(who, BOX, requester="ci", key_id="k2", scheme=KeyScheme.HMAC, secret_base64=None,
                                         public_key_pem=None)
    assert generated is not None and len(generated) == 32
    with pytest.raises(Problem) as exists:
        tokens.add_requester_key(who, BOX, requester="ci", key_id="k1", scheme=KeyScheme.HMAC, secret_base64=given,
                                 public_key_pem=None)
    assert exists.value.code == "REQUESTER_KEY_EXISTS"
    tokens.revoke_requester_key(who, requester="ci", key_id="k1")
    assert count(engine, GatewayRequesterKey) == 2
    rows = outbox_events(engine)
    assert [(type(e.data).__name__, e.data.requester, e.data.key_id, e.data.outcome.value) for _, e in rows] == [
        ("RequesterKeyAdded", "ci", "k1", "succeeded"), ("RequesterKeyAdded", "ci", "k2", "succeeded"),
        ("RequesterKeyAdded", "ci", "k1", "refused"), ("RequesterKeyRevoked", "ci", "k1", "succeeded")]
    assert rows[0][1].data.change == {"scheme": "hmac-sha256", "secret": "***"}
    for row, _ in rows:
        for secret in (HMAC_SECRET, generated):
            for form in (secret, base64.b64encode(secret), base64.urlsafe_b64encode(secret), secret.hex().encode()):
                assert form not in row.value.encode()


def test_profiles_record_the_fields_they_change(engine: Engine) -> None:
    who = actor(engine)
    profiles.put_profile(who, _profile("web", "emca"), create=True)
    profiles.put_profile(who, _profile("web", "emca", validity_days=30), create=False)
    with pytest.raises(Problem) as exists:
        profiles.put_profile(who, _profile("web", "emca"), create=True)
    assert exists.value.code == "PROFILE_EXISTS"
    profiles.delete_profile(who, "web")
    events = [e.data for _, e in outbox_events(engine)]
    assert [(type(e).__name__, e.profile, e.outcome.value) for e in events] == [
        ("ProfileCreated", "web", "succeeded"), ("ProfileUpdated", "web", "succeeded"),
        ("ProfileCreated", "web", "refused"), ("ProfileDeleted", "web", "succeeded")]
    assert events[1].change == {"validity_days": 30} and count(engine, GatewayProfile) == 0


def test_a_refusal_whose_subject_is_no_valid_name_records_nothing(engine: Engine) -> None:
    who = actor(engine)
    refuse(who, profiles.ProfileCreated, {"profile": "not a name!"}, Problem("SCHEMA_VIOLATION", "bad"))
    assert outbox_events(engine) == [] and who.recorded == []


def test_the_cli_actor_is_the_os_user_or_the_given_identity() -> None:
    assert cli_actor_name("alice@example.com") == "alice@example.com"
    assert cli_actor_name().startswith("cli:")
    with pytest.raises(ValueError):
        cli_actor_name("two words")


class FlakyKafka:
    """Records what it is asked to publish; fails the calls listed in ``fail_calls`` (1-based)."""

    def __init__(self, fail_calls: Sequence[int] = ()) -> None:
        self.calls = 0
        self.fail_calls = set(fail_calls)
        self.records: list[dict[str, Any]] = []

    async def __call__(self, records: Sequence[dict[str, Any]]) -> None:
        self.calls += 1
        if self.calls in self.fail_calls:
            raise KafkaConnectionError("broker down")
        self.records.extend(records)


def make_changes(engine: Engine, n: int) -> list[str]:
    ids = []
    for i in range(n):
        new, _ = tokens.create_token(actor(engine), identity=f"id-{i}", role=Role.REQUESTER, profiles=None,
                                     description=None, expires_at=None)
        ids.append(new.token_id)
    return ids


async def test_the_relay_publishes_unsent_rows_once_in_order_and_survives_a_failed_publish(engine: Engine) -> None:
    ids = make_changes(engine, 3)
    kafka = FlakyKafka(fail_calls=[1])
    now = [NOW]
    relay = outbox.OutboxRelay(engine, TOPICS, kafka, lambda: now[0], interval=timedelta(milliseconds=10),
                               grace=timedelta(seconds=3))
    assert await relay.relay_once() == 0 and kafka.calls == 0  # younger than the grace: their doors' to publish
    now[0] = NOW + timedelta(seconds=4)
    with pytest.raises(KafkaConnectionError):
        await relay.relay_once()
    assert all(row.sent_at is None for row, _ in outbox_events(engine))
    assert await relay.relay_once() == 3
    assert [json.loads(r["value"])["data"]["token_id"] for r in kafka.records] == ids
    assert {r["topic"] for r in kafka.records} == {"t-config.certrail.events.gateway"}
    assert [r["value"] for r in kafka.records] == [row.value for row, _ in outbox_events(engine)]  # byte for byte
    assert all(row.sent_at is not None for row, _ in outbox_events(engine))
    assert await relay.relay_once() == 0 and len(kafka.records) == 3
    # a young row is left to the door that wrote it, until the grace period has passed
    make_changes(engine, 1)  # written at NOW (the actor's clock), the relay's clock is NOW + 4 s
    assert await relay.relay_once() == 1 and len(kafka.records) == 4


async def test_the_first_round_at_start_leaves_fresh_rows_to_their_door(engine: Engine) -> None:
    # a gateway answers its API before its relay's first round: a row its door is publishing at that
    # moment must not be taken too (it would put the event on the topic twice)
    make_changes(engine, 2)  # written at NOW
    kafka = FlakyKafka(fail_calls=[])
    now = [NOW + timedelta(seconds=1)]
    relay = outbox.OutboxRelay(engine, TOPICS, kafka, lambda: now[0], interval=timedelta(milliseconds=10),
                               grace=timedelta(seconds=3))
    task = asyncio.create_task(relay.run_forever())
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while relay.rounds < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert relay.rounds >= 2 and kafka.records == []
        now[0] = NOW + timedelta(seconds=4)  # the door had its chance: the relay takes over
        while len(kafka.records) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert len(kafka.records) == 2
    finally:
        relay.stop()
        await asyncio.wait_for(task, 5)


async def test_run_forever_keeps_going_after_failures_and_stops(engine: Engine) -> None:
    make_changes(engine, 2)
    kafka = FlakyKafka(fail_calls=[1, 2])
    relay = outbox.OutboxRelay(engine, TOPICS, kafka, lambda: datetime.now(UTC), interval=timedelta(milliseconds=20),
                               grace=timedelta(0))
    task = asyncio.create_task(relay.run_forever())
    deadline = asyncio.get_running_loop().time() + 10
    while len(kafka.records) < 2 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    relay.stop()
    await asyncio.wait_for(task, 5)
    assert relay.failures == 2 and len(kafka.records) == 2


async def test_a_door_publishes_what_it_wrote_and_a_failed_publish_leaves_it_to_the_relay(engine: Engine) -> None:
    make_changes(engine, 1)  # someone else's row: not this door's to publish
    who = actor(engine)
    tokens.create_token(who, identity="mine", role=Role.ADMIN, profiles=None, description=None, expires_at=None)
    down = FlakyKafka(fail_calls=[1])
    await outbox.publish_recorded(engine, TOPICS, down, who.recorded, NOW)
    assert down.records == [] and all(row.sent_at is None for row, _ in outbox_events(engine))
    up = FlakyKafka()
    await outbox.publish_recorded(engine, TOPICS, up, who.recorded, NOW)
    [published] = up.records
    assert json.loads(published["value"])["data"]["change"]["identity"] == "mine"
    assert [row.sent_at is not None for row, _ in outbox_events(engine)] == [False, True]
