"""The auditor's own loop on the real broker (issue 17): the hostile records are stored with their
code and never stop it; a database it cannot write to (here: not migrated yet) is retried, never
skipped, reported stalled with the stuck offset and the lag while it lasts, and clears once the
records are stored."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from services.auditor.consumer_loop import CONSUMER, AuditConsumer, LoopSettings
from services.auditor.metrics import AuditMetrics
from services.common import migrate
from services.common.contracts.envelope import encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateDeployed
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session
from services.common.db_schema import AuditRecord
from services.common.kafka_config import producer_kwargs
from services.common.progress import ProgressTracker
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.topics_admin import delete_topics, ensure_topics
from tests.conftest import poll_until
from tests.unit.examples import CERT_ID, NOW, examples

pytestmark = pytest.mark.integration

DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE_NUMBER = b'{"n":' + b"7" * 50_000 + b"}"


async def test_hostile_records_are_stored_and_a_failing_database_stalls_then_recovers(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    topics = Topics(f"test.auditloop{uuid.uuid4().hex[:8]}")
    await ensure_topics(kafka_settings, [topics.requests], partitions=1)
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'audit.db'}")  # not migrated yet: every write fails
    engine = make_engine(db)
    registry = CollectorRegistry()
    progress = ProgressTracker(registry, "auditor", stall_after=2)
    loop = AuditConsumer(
        kafka=kafka_settings,
        settings=LoopSettings(group_id=f"auditloop-{uuid.uuid4().hex[:8]}", topic_refresh_interval_ms=1000,
                              retry_backoff_initial_s=0.05, retry_backoff_max_s=0.3),
        topics=topics, engine=engine, metrics=AuditMetrics(registry, topics), checkpointer=None,
        clock=lambda: datetime.now(UTC), progress=progress,
    )
    task = asyncio.create_task(loop.run())
    labels = {"service": "auditor", "consumer": CONSUMER}
    lag_labels = {**labels, "topic": topics.requests, "partition": "0"}
    producer = AIOKafkaProducer(**producer_kwargs(kafka_settings))
    await producer.start()
    try:
        valid = encode(make_event(examples()[CertificateDeployed], id="e-after", source="/t", time=NOW, subject=CERT_ID))
        for value in (DEEP, HUGE_NUMBER, valid):  # offsets 0, 1, 2
            await producer.send_and_wait(topics.requests, value, key=b"k")

        await poll_until(lambda: progress.stalled(), "the auditor to be reported stalled", 60)
        verdict = progress.stalled()[CONSUMER]
        assert verdict.startswith(f"stalled: {topics.requests}/0@0 failed ") and "OperationalError" in verdict
        assert registry.get_sample_value("certrail_consumer_stalled", labels) == 1
        await poll_until(lambda: registry.get_sample_value("certrail_consumer_lag_records", lag_labels) == 3,
                         "the lag behind the unstored records", 10)

        await asyncio.to_thread(migrate.upgrade, db)  # the database is fixed: the same records are stored
        await poll_until(lambda: registry.get_sample_value("certrail_consumer_stalled", labels) == 0, "the stall to clear", 60)
        await poll_until(lambda: registry.get_sample_value("certrail_consumer_lag_records", lag_labels) == 0, "lag 0", 10)
        with read_session(engine) as session:
            rows = session.execute(select(AuditRecord.offset, AuditRecord.decode_error)
                                   .where(AuditRecord.topic == topics.requests).order_by(AuditRecord.offset)).all()
        assert [(row.offset, row.decode_error) for row in rows] == [
            (0, ErrorCode.JSON_LIMIT_EXCEEDED), (1, ErrorCode.JSON_LIMIT_EXCEEDED), (2, None)]
        assert registry.get_sample_value("certrail_consumer_handler_failures_total", {**labels, "kind": "transient"}) >= 2
    finally:
        await producer.stop()
        loop.stop()
        await asyncio.wait_for(task, 30)
        engine.dispose()
        await delete_topics(kafka_settings, [topics.requests])


async def test_a_failed_batch_rewinds_every_partition_so_no_prefetched_record_is_skipped(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """Regression (issue 23): after a failed write the auditor rewound only the failed batch's partitions, so the
    records of another partition that a batch fetched meanwhile held were dropped as stale and never stored. Small
    batches over two partitions keep a prefetched batch of the other partition in flight at each failure."""
    topics = Topics(f"test.auditrewind{uuid.uuid4().hex[:8]}")
    await ensure_topics(kafka_settings, [topics.requests], partitions=2)
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'audit.db'}")
    migrate.upgrade(db)
    engine = make_engine(db)
    registry = CollectorRegistry()
    loop = AuditConsumer(
        kafka=kafka_settings,
        settings=LoopSettings(group_id=f"auditrewind-{uuid.uuid4().hex[:8]}", max_batch_records=5,
                              topic_refresh_interval_ms=1000, retry_backoff_initial_s=0.05, retry_backoff_max_s=0.2),
        topics=topics, engine=engine, metrics=AuditMetrics(registry, topics), checkpointer=None,
        clock=lambda: datetime.now(UTC), progress=ProgressTracker(registry, "auditor", stall_after=100),
    )
    store = loop._store
    calls = 0

    def failing_every_third(records: list[Any], entries: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls % 3 == 1 and calls < 30:  # the 1st, 4th, 7th ... write fails: always with a batch prefetched
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return store(records, entries)

    loop._store = failing_every_third  # type: ignore[method-assign]
    producer = AIOKafkaProducer(**producer_kwargs(kafka_settings))
    await producer.start()
    expected: set[tuple[int, int]] = set()
    try:
        for i in range(60):
            partition = i % 2
            value = encode(make_event(examples()[CertificateDeployed], id=f"e-{i}", source="/t", time=NOW, subject=CERT_ID))
            sent = await producer.send_and_wait(topics.requests, value, key=b"k", partition=partition)
            expected.add((sent.partition, sent.offset))
        task = asyncio.create_task(loop.run())

        def stored() -> list[tuple[int, int]]:
            with read_session(engine) as session:
                return [tuple(row) for row in session.execute(  # type: ignore[misc]
                    select(AuditRecord.partition, AuditRecord.offset).where(AuditRecord.topic == topics.requests))]

        try:
            await poll_until(lambda: set(stored()) == expected,
                             lambda: f"every record stored; missing {sorted(expected - set(stored()))}", 90)
            assert len(stored()) == len(expected)  # each once
            assert registry.get_sample_value("certrail_audit_batch_failures_total") >= 3
        finally:
            loop.stop()
            await asyncio.wait_for(task, 30)
    finally:
        await producer.stop()
        engine.dispose()
        await delete_topics(kafka_settings, [topics.requests])
