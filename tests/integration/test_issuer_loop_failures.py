"""The issuer's own consumer loop on the real broker (issue 17): a command that fails every time
is dead-lettered with HANDLER_FAILED after ``poison_attempts`` and the partition goes on; a
transient failure is retried, never dead-lettered, reported stalled while it lasts (with the lag
behind it), and clears once it passes. The command processor is a test double: the loop is
what is under test."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import OperationalError

from services.common.consumer import InboundRecord
from services.common.contracts.catalog import CATALOG
from services.common.contracts.deadletter import DeadLetter
from services.common.contracts.envelope import decode
from services.common.contracts.errors import ErrorCode
from services.common.contracts.topics import Topics
from services.common.kafka_config import producer_kwargs
from services.common.progress import ProgressTracker
from services.common.runtime.keyed_loop import Work
from services.common.settings import KafkaSettings
from services.common.topics_admin import delete_topics, ensure_topics
from services.issuer.consumer_loop import CONSUMER, IssuerConsumer, LoopSettings
from services.issuer.metrics import IssuerMetrics
from services.issuer.state import StoredRecord
from tests.conftest import poll_until

pytestmark = pytest.mark.integration


class ScriptedProcessor:
    """Fails ``poison`` every time and ``stuck*`` while the database is "down"; handles the rest."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self.handled: list[str] = []
        self.database_down = True

    async def handle(self, record: InboundRecord, work: Work) -> None:
        name = (record.value or b"").decode()
        self.attempts[name] += 1
        if name == "poison":
            raise ValueError("this command breaks the processor every time")
        if name.startswith("stuck") and self.database_down:
            raise OperationalError("UPDATE intents SET x = ?", {"x": "s3cret"}, Exception("database is locked"))
        self.handled.append(name)

    async def poll_pending(self, mine: set[tuple[str, int]]) -> None:
        return None


class NoConnectors:
    def known(self, name: str) -> None:
        return None

    def runtimes(self) -> list[object]:
        return []


@pytest.fixture
async def topic(kafka_settings: KafkaSettings) -> AsyncIterator[tuple[Topics, str]]:
    topics = Topics(f"test.issuerloop.{uuid.uuid4().hex[:10]}")
    name = topics.commands("emca-test")
    await ensure_topics(kafka_settings, [name], partitions=1)
    yield topics, name
    await delete_topics(kafka_settings, [name])


async def test_poison_commands_are_dead_lettered_and_transient_failures_stall_then_recover(
    kafka_settings: KafkaSettings, topic: tuple[Topics, str]
) -> None:
    topics, name = topic
    registry = CollectorRegistry()
    progress = ProgressTracker(registry, "issuer", stall_after=2)
    processor = ScriptedProcessor()
    published: list[StoredRecord] = []

    async def publish_raw(records: list[StoredRecord]) -> None:
        published.extend(records)

    loop = IssuerConsumer(
        kafka=kafka_settings,
        settings=LoopSettings(group_id=f"issuerloop-{uuid.uuid4().hex[:8]}", poison_attempts=3, retry_backoff_max_s=0.3,
                              commit_interval_s=0.05),
        topics=topics, processor=processor, pool=NoConnectors(), metrics=IssuerMetrics(registry),  # type: ignore[arg-type]
        publish_raw=publish_raw, clock=lambda: datetime(2026, 12, 6, tzinfo=UTC), progress=progress,
    )
    task = asyncio.create_task(loop.run())
    producer = AIOKafkaProducer(**producer_kwargs(kafka_settings))
    await producer.start()
    labels = {"service": "issuer", "consumer": CONSUMER}
    lag_labels = {**labels, "topic": name, "partition": "0"}
    try:
        for value in (b"poison", b"good", b"stuck", b"stuck-behind"):  # offsets 0..3, one certificate
            await producer.send_and_wait(name, value, key=b"cert-1")

        # the poison command: dead-lettered after 3 attempts; the one behind it handled
        await poll_until(lambda: "good" in processor.handled, "the command behind the poison one", 60)
        assert processor.attempts["poison"] == 3
        (letter_record,) = published
        letter = decode(letter_record.value, CATALOG).data
        assert isinstance(letter, DeadLetter) and letter.code is ErrorCode.HANDLER_FAILED
        assert (letter.source.topic, letter.source.offset) == (name, 0)
        assert letter.reason.endswith("ValueError: this command breaks the processor every time")

        # the transient failure: retried, never dead-lettered, stalled after 2 failures, lag true
        await poll_until(lambda: progress.stalled(), "the loop to be reported stalled", 60)
        verdict = progress.stalled()[CONSUMER]
        assert verdict.startswith(f"stalled: {name}/0@2 failed ") and "OperationalError: database is locked" in verdict
        assert "s3cret" not in verdict
        assert registry.get_sample_value("certrail_consumer_stalled", labels) == 1
        await poll_until(lambda: registry.get_sample_value("certrail_consumer_lag_records", lag_labels) == 2,
                         "the lag behind the stuck command", 10)
        assert "stuck-behind" not in processor.handled and len(published) == 1

        # the database is back: both handled, no longer stalled, lag 0
        processor.database_down = False
        await poll_until(lambda: {"stuck", "stuck-behind"} <= set(processor.handled), "the stuck commands", 60)
        await poll_until(lambda: registry.get_sample_value("certrail_consumer_stalled", labels) == 0, "the stall to clear", 10)
        await poll_until(lambda: registry.get_sample_value("certrail_consumer_lag_records", lag_labels) == 0, "lag 0", 10)
        assert progress.stalled() == {} and len(published) == 1
        failures = {kind: registry.get_sample_value("certrail_consumer_handler_failures_total", {**labels, "kind": kind})
                    for kind in ("failed", "transient")}
        assert failures["failed"] == 3 and failures["transient"] is not None and failures["transient"] >= 2
    finally:
        await producer.stop()
        loop.stop()
        await asyncio.wait_for(task, 30)
