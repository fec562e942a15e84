"""Reading Kafka outside any consumer group, for verify, replay and the
checkpoints: which partitions exist, their retained offset range, a group's
committed offsets, offsets by time, and the records of an offset range."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.common.kafka_config import admin_kwargs, client_kwargs
from services.common.settings import KafkaSettings

#: give up on a range when no new record arrived for this long while its end was not reached
IDLE_TIMEOUT_S = 10.0


@asynccontextmanager
async def kafka_reader(settings: KafkaSettings, max_poll_records: int = 2000) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer with no group (nothing committed), assigned by hand."""
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def topic_partitions(
    settings: KafkaSettings, *, names: list[str] | None = None, pattern: str | None = None
) -> list[TopicPartition]:
    """The partitions of the existing topics among ``names`` and/or whose whole name matches ``pattern``."""
    admin = AIOKafkaAdminClient(**admin_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        regex = re.compile(pattern) if pattern is not None else None
        wanted = sorted(t for t in existing if (names is not None and t in names) or (regex is not None and regex.fullmatch(t)))
        described = await admin.describe_topics(wanted) if wanted else []
    finally:
        await admin.close()
    return sorted(
        TopicPartition(t["topic"], p["partition"]) for t in described if not t["error_code"] for p in t["partitions"]
    )


async def committed_offsets(settings: KafkaSettings, group_id: str) -> dict[TopicPartition, int]:
    """The offsets ``group_id`` committed (the next offset it will read), per partition."""
    admin = AIOKafkaAdminClient(**admin_kwargs(settings))
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def epoch_millis_ceil(when: datetime) -> int:
    """Kafka's timestamp (ms since the epoch) of the first millisecond at or after ``when``, exactly."""
    whole, rest = divmod(when - _EPOCH, _MILLISECOND)
    return whole + (1 if rest else 0)


async def offsets_at(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], when: datetime, end: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """For each partition, the offset of the first record whose timestamp is at or
    after ``when`` (the broker's offset-for-time lookup); its end offset when none is."""
    if not partitions:
        return {}
    millis = epoch_millis_ceil(when)
    found = await consumer.offsets_for_times(dict.fromkeys(partitions, millis))
    return {tp: (found[tp].offset if found.get(tp) is not None else end[tp]) for tp in partitions}


async def read_range(
    consumer: AIOKafkaConsumer,
    ranges: Mapping[TopicPartition, tuple[int, int]],
    *,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """Yield batches of the records with start <= offset < stop, per partition
    (``ranges``: partition -> (start, stop)), in offset order per partition.
    Offsets without a record (transaction markers, compaction) are skipped."""
    todo = {tp: (start, stop) for tp, (start, stop) in ranges.items() if stop > start}
    if not todo:
        return
    consumer.assign(list(todo))
    for tp, (start, _) in todo.items():
        consumer.seek(tp, start)
    pending = set(todo)
    last_progress = time.monotonic()
    while pending:
        fetched = await consumer.getmany(*pending, timeout_ms=500)
        batch = [r for tp, records in fetched.items() for r in records if r.offset < todo[tp][1]]
        if batch:
            last_progress = time.monotonic()
            yield batch
        for tp in list(pending):
            if await consumer.position(tp) >= todo[tp][1]:
                pending.discard(tp)
        if pending and time.monotonic() - last_progress > idle_timeout_s:
            names = ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(pending))
            raise TimeoutError(f"no records for {idle_timeout_s:.0f}s before the end of the range on {names}")
        await asyncio.sleep(0)
