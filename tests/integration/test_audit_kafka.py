"""The auditor against the real broker, on SQLite and PostgreSQL: every record
stored once (redeliveries and rebalances included), tampering found by
verify (even with a recomputed chain), deleted rows found as gaps, replay
equal to the live store, time-range replay exact, new topics picked up."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, delete, func, select, update

from services.auditor.app import prepare_pool_factory
from services.auditor.checkpoints import Checkpointer
from services.auditor.consumer_loop import AuditConsumer, LoopSettings
from services.auditor.inventory_read import get_certificate
from services.auditor.kafka_reader import kafka_reader
from services.auditor.keys import key_id
from services.auditor.metrics import AuditMetrics
from services.auditor.records import envelope_attributes
from services.auditor.replay import Bound, diff_stores, replay
from services.auditor.verify import VerifyReport, verify
from services.auditor.verify_store import ProblemKind, scan_store
from services.common import migrate
from services.common.consumer import Outbound
from services.common.contracts.envelope import CONTENT_TYPE, CONTENT_TYPE_HEADER, Message, encode, make_event
from services.common.contracts.events import CertificateDeployed, CertificateIssued, CertificateRevoked, RequestAccepted
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import AuditRecord
from services.common.kafka_config import producer_kwargs
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.topics_admin import delete_topics, ensure_topics
from tests.conftest import poll_until
from tests.integration.test_audit_store import recompute_chain
from tests.unit.examples import CERT_ID, NOW, examples

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EX = examples()
CONNECTOR = "emca-test"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms


@dataclass
class AuditEnv:
    kafka: KafkaSettings
    topics: Topics
    db: DatabaseSettings
    engine: Engine
    key: Ed25519PrivateKey
    tmp: Path
    created: list[str]

    @property
    def trusted(self) -> set[str]:
        return {key_id(self.key.public_key())}

    async def create_topics(self, *names: str, partitions: int = 2) -> None:
        await ensure_topics(self.kafka, list(names), partitions=partitions)
        self.created.extend(names)

    def fresh_db(self, name: str) -> tuple[DatabaseSettings, Engine]:
        settings = DatabaseSettings(url=f"sqlite:///{self.tmp / name}")
        migrate.upgrade(settings)
        return settings, make_engine(settings)


async def _make_env(kafka_settings: KafkaSettings, db_settings: DatabaseSettings, tmp_path: Path) -> AsyncIterator[AuditEnv]:
    prefix = f"t{uuid.uuid4().hex[:10]}.certrail"
    kafka = kafka_settings.model_copy(update={"topic_prefix": prefix})
    topics = Topics(prefix)
    migrate.upgrade(db_settings)
    engine = make_engine(db_settings)
    audit_env = AuditEnv(kafka, topics, db_settings, engine, Ed25519PrivateKey.generate(), tmp_path, [])
    await audit_env.create_topics(*topics.fixed(), topics.commands(CONNECTOR))
    try:
        yield audit_env
    finally:
        engine.dispose()
        await delete_topics(kafka, audit_env.created)


@pytest.fixture
async def env(kafka_settings: KafkaSettings, db_settings: DatabaseSettings, tmp_path: Path) -> AsyncIterator[AuditEnv]:
    """On SQLite and on PostgreSQL."""
    async for audit_env in _make_env(kafka_settings, db_settings, tmp_path):
        yield audit_env


@pytest.fixture
async def sqlite_env(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[AuditEnv]:
    """For what does not depend on the live database."""
    async for audit_env in _make_env(kafka_settings, DatabaseSettings(url=f"sqlite:///{tmp_path / 'live.db'}"), tmp_path):
        yield audit_env


def event(data: Message, event_id: str, *, subject: str = CERT_ID, at: datetime = NOW) -> bytes:
    return encode(make_event(data, id=event_id, source="/certrail/test", time=at, subject=subject, correlationid="req-1"))


async def produce(
    kafka: KafkaSettings, records: Sequence[tuple[str, bytes | None, bytes | None] | tuple[str, bytes | None, bytes | None, int]]
) -> None:
    producer = AIOKafkaProducer(**producer_kwargs(kafka))
    await producer.start()
    try:
        for record in records:
            topic, key, value = record[:3]
            timestamp = record[3] if len(record) > 3 else None  # type: ignore[misc]
            await producer.send_and_wait(
                topic, value, key=key, timestamp_ms=timestamp, headers=[(CONTENT_TYPE_HEADER, CONTENT_TYPE.encode())]
            )
    finally:
        await producer.stop()


def count_rows(engine: Engine, prefix: str) -> int:
    with read_session(engine) as session:
        return session.scalar(select(func.count()).select_from(AuditRecord).where(AuditRecord.topic.startswith(prefix))) or 0


class RunningAuditor:
    """One AuditConsumer (the service's loop) with a checkpointer publishing to Kafka."""

    def __init__(self, env: AuditEnv, group_id: str, *, prepare_processes: int = 0, **loop: Any) -> None:
        self.env = env
        self.registry = CollectorRegistry()
        self.metrics = AuditMetrics(self.registry, env.topics)
        self._producer = AIOKafkaProducer(**producer_kwargs(env.kafka))
        self.checkpointer = Checkpointer(
            env.key,
            auditor=f"test-{uuid.uuid4().hex[:6]}",
            group_id=group_id,
            topics=env.topics,
            publish=self._publish,
            clock=lambda: datetime.now(UTC),
        )
        self.consumer = AuditConsumer(
            kafka=env.kafka,
            settings=LoopSettings(group_id=group_id, topic_refresh_interval_ms=1000, **loop),
            topics=env.topics,
            engine=env.engine,
            metrics=self.metrics,
            checkpointer=self.checkpointer,
            clock=lambda: datetime.now(UTC),
            prepare_pool=prepare_pool_factory(prepare_processes) if prepare_processes else None,
        )
        self._task: asyncio.Task[None] | None = None

    async def _publish(self, messages: Sequence[Outbound]) -> None:
        for message in messages:
            await self._producer.send_and_wait(
                message.topic,
                message.value(),
                key=message.key.encode() if message.key else None,
                headers=[(k, v.encode()) for k, v in message.headers().items()],
            )

    async def __aenter__(self) -> RunningAuditor:
        await self._producer.start()
        self._task = asyncio.create_task(self.consumer.run())
        return self

    async def stop(self) -> None:
        self.consumer.stop()
        assert self._task is not None
        await asyncio.wait_for(self._task, 30)
        await self.checkpointer.publish(final=True)  # as the service does on shutdown
        await self._producer.stop()

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None and not self._task.done():
            await self.stop()
        elif self._producer._closed is False:  # noqa: SLF001 - stopped already
            await self._producer.stop()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


async def audit_all(
    env: AuditEnv, expected_rows: int, group_id: str | None = None, *, prepare_processes: int = 0, **loop: Any
) -> None:
    """Run an auditor until ``expected_rows`` rows are stored, then stop it (publishing a checkpoint)."""
    group = group_id or f"auditor-{uuid.uuid4().hex[:6]}"
    async with RunningAuditor(env, group, prepare_processes=prepare_processes, **loop) as auditor:
        await poll_until(lambda: count_rows(env.engine, env.topics.prefix) >= expected_rows, f"{expected_rows} rows",
                         interval_s=0.2, in_thread=True)
        await auditor.stop()


async def run_verify(env: AuditEnv, group_id: str) -> VerifyReport:
    return await verify(kafka=env.kafka, engine=env.engine, topics=env.topics, group_id=group_id, trusted_key_ids=env.trusted)


def lifecycle(env: AuditEnv, n: int) -> list[tuple[str, bytes | None, bytes | None]]:
    return [(env.topics.deployer_events, CERT_ID.encode(), event(EX[CertificateDeployed], f"d-{i}")) for i in range(n)]


async def test_every_record_is_stored_once_and_a_redelivered_event_is_linked(env: AuditEnv) -> None:
    topics = env.topics
    dup = event(EX[RequestAccepted], "accepted-1")
    await produce(
        env.kafka,
        [
            (topics.gateway_events, CERT_ID.encode(), dup),
            (topics.issuer_events, CERT_ID.encode(), event(EX[CertificateIssued], "issued-1")),
            (topics.gateway_events, CERT_ID.encode(), dup),  # the same event again, at a new offset
            (topics.requests, b"k", b"\xffpoison"),
            (topics.commands(CONNECTOR), b"k", None),  # a tombstone
            (topics.commands(CONNECTOR), b"k", b'{"specversion": "1.0"}'),
            # forged: a revocation on the deployer's topic is stored but never reaches the inventory (decision 0016)
            (topics.deployer_events, CERT_ID.encode(), event(EX[CertificateRevoked], "forged-revoked")),
        ],
    )
    group = f"auditor-{uuid.uuid4().hex[:6]}"
    await audit_all(env, 7, group)
    # A crash between the database commit and the offset commit looks like this:
    # every offset delivered again. Another group re-reads them all.
    async with RunningAuditor(env, f"again-{uuid.uuid4().hex[:6]}") as again:
        await poll_until(lambda: again.metric("certrail_audit_redelivered_records_total") >= 7, "the redelivery",
                         interval_s=0.2, in_thread=True)
    with read_session(env.engine) as session:
        everything = session.scalars(select(AuditRecord).where(AuditRecord.topic.startswith(topics.prefix))).all()
        stored = [r for r in everything if r.topic != topics.audit_checkpoints]
        by_topic = sorted((r.topic, r.offset, r.event_id, r.decode_error, r.first_offset) for r in stored)
        coordinates = {(r.topic, r.partition, r.offset) for r in stored}
        checkpoint_types = [r.event_type for r in everything if r.topic == topics.audit_checkpoints]
    # the first auditor's checkpoint was audited too (by the second)
    assert checkpoint_types == ["io.certrail.audit.checkpoint.v1"]
    assert len(stored) == 7 and len(coordinates) == 7
    events = [x for x in by_topic if x[0] in topics.events_topics()]
    assert [x[2] for x in events] == ["forged-revoked", "accepted-1", "accepted-1", "issued-1"]  # by topic name
    assert events[2][4] == events[1][1] and events[1][4] is None  # linked to its first occurrence
    assert sorted(x[3] for x in by_topic if x[0] not in topics.events_topics()) == [
        "NOT_CLOUDEVENT", "UNDECODABLE", "UNDECODABLE"]
    with read_session(env.engine) as session:
        view = get_certificate(session, CERT_ID, NOW)
    assert view is not None and view.status == "active" and view.last_event_type == CertificateIssued.TYPE
    report = await run_verify(env, group)
    assert report.ok, report.summary()
    assert report.checkpoints_trusted >= 1
    async with kafka_reader(env.kafka) as consumer:  # the auditor dead-letters nothing: it stores
        tps = [TopicPartition(topics.deadletter, p) for p in (0, 1)]
        assert set((await consumer.end_offsets(tps)).values()) == {0}


async def test_verify_names_a_row_changed_even_with_a_recomputed_chain(env: AuditEnv) -> None:
    await produce(env.kafka, lifecycle(env, 6))
    group = f"auditor-{uuid.uuid4().hex[:6]}"
    await audit_all(env, 6, group)
    assert (await run_verify(env, group)).ok
    with write_session(env.engine) as session:
        row = session.scalars(select(AuditRecord).where(AuditRecord.topic == env.topics.deployer_events, AuditRecord.offset == 2)).one()
        target = (row.partition, row.id)
        row.value = event(EX[CertificateRevoked], "d-2")  # history rewritten: "it was revoked, not deployed"
        for name, value in envelope_attributes(row.value)._asdict().items():  # a careful attacker fixes every column
            setattr(row, name, value)
        session.flush()
        recompute_chain(session, env.topics.deployer_events, row.partition)
    with read_session(env.engine) as session:
        assert scan_store(session, {}).problems == []  # consistent as far as the database can tell
    report = await run_verify(env, group)
    assert not report.ok
    kinds = {(p.kind, p.offset) for p in report.problems if p.topic == env.topics.deployer_events}
    assert (ProblemKind.DIFFERS_FROM_KAFKA, 2) in kinds
    assert any(k is ProblemKind.CHECKPOINT_MISMATCH for k, _ in kinds)
    named = next(p for p in report.problems if p.kind is ProblemKind.DIFFERS_FROM_KAFKA)
    assert (named.partition, named.row_id) == target and "value" in named.detail
    assert f"{env.topics.deployer_events}/{target[0]}@2 (row {target[1]})" in report.summary()


async def test_a_deleted_row_is_found_as_a_gap_and_a_missing_offset(env: AuditEnv) -> None:
    await produce(env.kafka, lifecycle(env, 6))
    group = f"auditor-{uuid.uuid4().hex[:6]}"
    await audit_all(env, 6, group)
    with write_session(env.engine) as session:
        partition = session.scalars(select(AuditRecord.partition).where(AuditRecord.topic == env.topics.deployer_events)).first()
        session.execute(delete(AuditRecord).where(AuditRecord.topic == env.topics.deployer_events, AuditRecord.offset == 3))
    report = await run_verify(env, group)
    found = {(p.kind, p.partition, p.offset) for p in report.problems}
    assert (ProblemKind.GAP, partition, 4) in found  # the next row links to the deleted one
    assert (ProblemKind.MISSING, partition, 3) in found  # and Kafka still has it
    # An attacker who also relinks the chain around the hole is still caught.
    with write_session(env.engine) as session:
        recompute_chain(session, env.topics.deployer_events, partition)
    report = await run_verify(env, group)
    found = {(p.kind, p.offset) for p in report.problems}
    assert (ProblemKind.MISSING, 3) in found and not any(k is ProblemKind.GAP for k, _ in found)


async def test_a_deleted_tail_row_is_missing_below_the_committed_offset(env: AuditEnv) -> None:
    await produce(env.kafka, lifecycle(env, 4))
    group = f"auditor-{uuid.uuid4().hex[:6]}"
    await audit_all(env, 4, group)
    with write_session(env.engine) as session:
        session.execute(delete(AuditRecord).where(AuditRecord.topic == env.topics.deployer_events, AuditRecord.offset == 3))
        session.execute(
            update(AuditRecord.__table__.metadata.tables["audit_chain_heads"])
            .where(AuditRecord.__table__.metadata.tables["audit_chain_heads"].c.topic == env.topics.deployer_events)
            .values(offset=2)
        )
    report = await run_verify(env, group)
    assert (ProblemKind.MISSING, 3) in {(p.kind, p.offset) for p in report.problems}


@pytest.mark.parametrize("prepare_processes", [0, 1], ids=["prepared-in-the-writer", "prepare-worker"])
async def test_replay_into_a_fresh_database_equals_the_live_store(env: AuditEnv, prepare_processes: int) -> None:
    """Replay prepares in its own thread; the live auditor in its writer thread or in a worker
    process (as the service runs on 2+ CPUs: on SQLite the worker also formats the times)."""
    topics = env.topics
    records = [
        *lifecycle(env, 3),
        (topics.issuer_events, CERT_ID.encode(), event(EX[CertificateIssued], "issued-1")),
        (topics.issuer_events, CERT_ID.encode(), event(EX[CertificateIssued], "issued-1")),  # duplicate id
        (topics.requests, b"r", event(EX[RequestAccepted], "r-1")),
        (topics.commands(CONNECTOR), b"c", b"garbage"),
    ]
    await produce(env.kafka, records)
    await audit_all(env, len(records), prepare_processes=prepare_processes)
    _, replayed = env.fresh_db("replay.db")
    try:
        for topic in (*topics.events_topics(), topics.requests, topics.commands(CONNECTOR)):
            result = await replay(
                kafka=env.kafka, topics=topics, topic=topic, into=replayed, start=None, stop=None, now=lambda: datetime.now(UTC)
            )
            difference = await asyncio.to_thread(diff_stores, env.engine, replayed, topic, result.ranges)
            assert difference.equal, difference.differences
            assert difference.compared == sum(1 for r in records if r[0] == topic)
        with read_session(env.engine) as live, read_session(replayed) as rebuilt:
            # the same inventory, last event included: one certificate's events span three topics, and
            # the inventory folds them by event time, not arrival (decision 0016; docs/audit.md)
            assert get_certificate(live, CERT_ID, NOW) == get_certificate(rebuilt, CERT_ID, NOW)
        # and a changed live row is a difference, named
        with write_session(env.engine) as session:
            session.execute(update(AuditRecord).where(AuditRecord.topic == topics.requests).values(key=b"forged"))
        requests_range = {p: (0, 1) for p in (0, 1)}
        difference = await asyncio.to_thread(diff_stores, env.engine, replayed, topics.requests, requests_range)
        assert [d.what for d in difference.differences] == ["differs: key"]
    finally:
        replayed.dispose()


async def test_a_time_range_replay_returns_exactly_that_range(sqlite_env: AuditEnv) -> None:
    env = sqlite_env
    topics = env.topics
    hour = 3_600_000
    phases = {name: T0 + i * hour for i, name in enumerate(["before", "during", "after"])}
    records = [
        (topics.deployer_events, f"cert-{i % 2}".encode(), event(EX[CertificateDeployed], f"{name}-{i}"), at + i)
        for name, at in phases.items()
        for i in range(5)
    ]
    await produce(env.kafka, records)
    _, rebuilt = env.fresh_db("window.db")
    try:
        start = Bound(time=datetime.fromtimestamp(phases["during"] / 1000, UTC))
        stop = Bound(time=datetime.fromtimestamp(phases["after"] / 1000, UTC))
        await replay(
            kafka=env.kafka,
            topics=topics,
            topic=topics.deployer_events,
            into=rebuilt,
            start=start,
            stop=stop,
            now=lambda: datetime.now(UTC),
        )
        with read_session(rebuilt) as session:
            ids = sorted(session.scalars(select(AuditRecord.event_id)))
            stamps = list(session.scalars(select(AuditRecord.timestamp_ms)))
        assert ids == sorted(f"during-{i}" for i in range(5))
        assert all(phases["during"] <= s < phases["after"] for s in stamps)
        # by offsets: [1, 3) in every partition
        _, by_offset = env.fresh_db("offsets.db")
        result = await replay(
            kafka=env.kafka,
            topics=topics,
            topic=topics.deployer_events,
            into=by_offset,
            start=Bound(offset=1),
            stop=Bound(offset=3),
            now=lambda: datetime.now(UTC),
        )
        with read_session(by_offset) as session:
            offsets = sorted(session.execute(select(AuditRecord.partition, AuditRecord.offset)).all())
        expected = [(p, o) for p, (a, b) in sorted(result.ranges.items()) for o in range(a, b)]
        assert offsets == expected and expected and {o for _, o in expected} == {1, 2}
        by_offset.dispose()
    finally:
        rebuilt.dispose()


async def test_a_new_connector_topic_is_picked_up(sqlite_env: AuditEnv) -> None:
    env = sqlite_env
    async with RunningAuditor(env, f"auditor-{uuid.uuid4().hex[:6]}"):
        await produce(env.kafka, lifecycle(env, 1))
        await poll_until(lambda: count_rows(env.engine, env.topics.prefix) >= 1, "the first record",
                         interval_s=0.2, in_thread=True)
        new_topic = env.topics.commands("emca-created-later")
        await env.create_topics(new_topic)
        await produce(env.kafka, [(new_topic, b"k", b"{}")])
        await poll_until(lambda: count_rows(env.engine, new_topic) == 1, "the new topic's record", timeout_s=60,
                         interval_s=0.2, in_thread=True)


async def test_partitions_moving_between_instances_lose_and_repeat_nothing(env: AuditEnv) -> None:
    topics = env.topics
    group = f"auditor-{uuid.uuid4().hex[:6]}"
    total = 400
    records = [
        (topics.deployer_events, f"cert-{i % 7}".encode(), event(EX[CertificateDeployed], f"d-{i}", subject=f"cert-{i % 7}"))
        for i in range(total)
    ]
    async with RunningAuditor(env, group, max_batch_records=25) as first:
        producing = asyncio.create_task(produce(env.kafka, records))
        await poll_until(lambda: count_rows(env.engine, topics.prefix) >= 50, "some rows", interval_s=0.2, in_thread=True)
        async with RunningAuditor(env, group, max_batch_records=25):  # a second instance joins: a rebalance
            await poll_until(lambda: count_rows(env.engine, topics.prefix) >= 200, "more rows",
                             interval_s=0.2, in_thread=True)
            await first.stop()  # the first leaves: another rebalance
            await producing
            await poll_until(lambda: count_rows(env.engine, topics.deployer_events) >= total, "every row",
                             interval_s=0.2, in_thread=True)
    with read_session(env.engine) as session:
        coordinates = session.execute(
            select(AuditRecord.partition, AuditRecord.offset).where(AuditRecord.topic == topics.deployer_events)
        ).all()
        assert scan_store(session, {}).problems == []
    assert len(coordinates) == len(set(coordinates)) == total
    report = await run_verify(env, group)
    assert report.ok, report.summary()
