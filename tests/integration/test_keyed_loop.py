"""The runtime's keyed loop (services/common/runtime/keyed_loop.py, decision 0017) with a handler of
its own, on the real broker, checked by the group's committed offsets as Kafka holds them:
nothing past a waiting record is committed, a paused partition delivers nothing more until it is
resumed, records of one key keep their order while other keys go on, and a poison record is
dead-lettered after its attempts so the partition moves on."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.common.consumer import InboundRecord
from services.common.kafka_config import admin_kwargs, producer_kwargs
from services.common.runtime.keyed_loop import KeyedLoop, LoopSettings, Work
from services.common.settings import KafkaSettings
from services.common.topics_admin import delete_topics, ensure_topics
from tests.conftest import poll_until

pytestmark = [pytest.mark.integration]


class Recorder(KeyedLoop):
    """Handles a record by remembering it; ``hold`` keeps the named values waiting, ``poison`` fails them."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.handled: dict[bytes, list[str]] = defaultdict(list)
        self.go = asyncio.Event()
        self.hold = {"wait"}
        self.poison = {"poison"}
        self.attempts: dict[str, int] = defaultdict(int)
        self.letters: list[tuple[int, str]] = []
        self.paused = False
        self.observed: list[frozenset[TopicPartition]] = []  # the paused partitions, once a second

    async def handle(self, record: InboundRecord, work: Work) -> None:
        value = (record.value or b"").decode()
        self.attempts[value] += 1
        if value in self.poison:
            raise ValueError(f"{value} breaks the handler")
        if value in self.hold:
            await self.go.wait()
        self.handled[record.key or b""].append(value)

    async def dead_letter(self, record: InboundRecord, reason: str) -> bool:
        self.letters.append((record.offset, reason))
        return True

    def must_wait(self, tp: TopicPartition) -> bool:  # noqa: ARG002
        return self.paused

    def observe(self, consumer: AIOKafkaConsumer) -> None:
        self.observed.append(frozenset(consumer.paused()))


async def test_commits_stop_at_the_lowest_unfinished_offset_pauses_hold_and_poison_moves_on(
        kafka_settings: KafkaSettings) -> None:
    topic = f"t{uuid.uuid4().hex[:8]}.keyed"
    group = f"keyed-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_settings, [topic], partitions=1)
    loop = Recorder(kafka=kafka_settings, settings=LoopSettings(group_id=group, poison_attempts=2, retry_backoff_max_s=0.2,
                                                              commit_interval_s=0.05, topic_refresh_interval_ms=1000),
                    consumer_name="keyed", topics=[topic], clock=lambda: datetime.now(UTC))
    producer = AIOKafkaProducer(**producer_kwargs(kafka_settings))
    admin = AIOKafkaAdminClient(**admin_kwargs(kafka_settings))
    tp = TopicPartition(topic, 0)

    async def committed() -> int | None:
        offsets = await admin.list_consumer_group_offsets(group)
        meta = offsets.get(tp)
        return None if meta is None or meta.offset < 0 else meta.offset

    async def send(key: bytes, *values: str) -> None:
        for value in values:
            await producer.send_and_wait(topic, value.encode(), key=key)

    task = asyncio.create_task(loop.run())
    await producer.start()
    await admin.start()
    try:
        # offsets 0..4: a waits behind "wait" on its key; b goes on
        await send(b"a", "a1", "wait", "a3")
        await send(b"b", "b1", "b2")
        await poll_until(lambda: loop.handled[b"b"] == ["b1", "b2"], "key b handled past key a's waiting record", 60)
        assert loop.handled[b"a"] == ["a1"]  # a3 waits behind "wait": order per key
        await poll_until(committed, "a first commit", 30)
        assert await committed() == 1  # offset 1 ("wait") is the lowest unfinished: nothing past it committed
        loop.go.set()
        await poll_until(lambda: loop.handled[b"a"] == ["a1", "wait", "a3"], "key a after the wait", 30)

        async def committed_is(offset: int) -> bool:
            return await committed() == offset
        await poll_until(lambda: committed_is(5), "the commit past everything finished", 30)

        # paused: nothing more is delivered or committed until it is resumed
        loop.paused = True
        await poll_until(lambda: loop.observed and tp in loop.observed[-1], "the partition paused", 30)
        await send(b"c", "c1")
        seen = len(loop.observed)
        await poll_until(lambda: len(loop.observed) >= seen + 2, "two more observations (about 2 s of polls)", 30)
        assert loop.handled[b"c"] == [] and await committed() == 5
        loop.paused = False
        await poll_until(lambda: loop.handled[b"c"] == ["c1"], "the paused record after resuming", 30)

        # a poison record: tried poison_attempts times, dead-lettered, and the record behind it handled
        await send(b"d", "poison", "d2")
        await poll_until(lambda: loop.handled[b"d"] == ["d2"], "the record behind the poison one", 60)
        assert loop.attempts["poison"] == 2
        assert [offset for offset, _ in loop.letters] == [6]
        assert loop.letters[0][1].startswith("failed on this record 2 times") and "breaks the handler" in loop.letters[0][1]
        await poll_until(lambda: committed_is(8), "the commit past the poison record", 30)
    finally:
        loop.stop()
        await asyncio.wait_for(task, 30)
        await admin.close()
        await producer.stop()
        await delete_topics(kafka_settings, [topic])
