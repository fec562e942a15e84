"""``certrail audit replay``: rebuild a store from Kafka and compare it with the live one.

The records of one topic in a range -- by offsets, or by time through the
broker's offset-for-time lookup -- are read outside any consumer group and
stored in a fresh database by the same code the live auditor runs
(store.store_records: chains, duplicate links, inventory). Ranges are
half-open, per partition: ``--from`` is the first offset (or the first record
at or after that time), ``--to`` the first offset NOT replayed (or the first
record at or after that time), like Kafka's end offsets. A time range is thus
the offsets between the two lookups: exactly the records stamped in
[from, to) when timestamps grow with offsets (LogAppendTime, or CreateTime
from well-behaved producers).

`diff_stores` compares the replayed rows with the live rows of the same
offsets: the content (what the hashes cover) and the envelope columns, the
first-occurrence links where both stores hold the first occurrence, and the
chain hashes where both chains agree on the previous hash. The live rows are
read without trusting their SQL types: a value that is not what its column
must hold is a difference ("value (unreadable in the live store)"), never a crash.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import Engine, Select, func, select

from services.auditor.kafka_reader import kafka_reader, offsets_at, read_range, topic_partitions
from services.auditor.records import raw_record
from services.auditor.store import store_records
from services.auditor.verify_read import StoredRow, read_records
from services.common.contracts.topics import Topics
from services.common.db import read_session
from services.common.db_schema import AuditRecord
from services.common.settings import KafkaSettings

_OFFSET = re.compile(r"^[0-9]+$")
COMPARED_COLUMNS = (
    "timestamp_ms", "timestamp_type", "key", "value", "headers", "private_keys_removed", "original_sha256",
    "original_size", "decode_error", "decode_reason", "event_id", "event_type", "source", "subject", "correlation_id",
    "causation_id", "event_time", "certificate_id", "request_id",
)


class ReplayError(RuntimeError):
    """The replay cannot run as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class Bound:
    """One end of a range: an offset (the same in every partition) or a time."""

    offset: int | None = None
    time: datetime | None = None


def parse_bound(text: str) -> Bound:
    """``123`` (an offset) or an ISO 8601 time with a zone (``2026-01-15T10:00:00Z``)."""
    text = text.strip()
    if _OFFSET.fullmatch(text):
        return Bound(offset=int(text))
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ReplayError(f"{text!r} is neither an offset nor an ISO 8601 time") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ReplayError(f"the time {text!r} has no zone: add one (e.g. Z or +05:30)")
    return Bound(time=when)


@dataclass
class ReplayResult:
    topic: str
    ranges: dict[int, tuple[int, int]]  # partition -> [start, stop)
    records: int = 0
    stored: int = 0


def ensure_fresh(engine: Engine, topic: str) -> None:
    with read_session(engine) as session:
        count = session.scalar(select(func.count()).select_from(AuditRecord).where(AuditRecord.topic == topic))
    if count:
        raise ReplayError(f"the target database already holds {count} rows of {topic}: replay into a fresh database")


async def _resolve(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    bound: Bound | None,
    begin: dict[TopicPartition, int],
    end: dict[TopicPartition, int],
    default: dict[TopicPartition, int],
) -> dict[TopicPartition, int]:
    if bound is None:
        return dict(default)
    if bound.offset is not None:
        return {tp: min(max(bound.offset, begin[tp]), end[tp]) for tp in tps}
    assert bound.time is not None
    return await offsets_at(consumer, tps, bound.time, end)


async def replay(
    *, kafka: KafkaSettings, topics: Topics, topic: str, into: Engine, start: Bound | None, stop: Bound | None,
    now: Callable[[], datetime],
) -> ReplayResult:
    """Store the records of ``topic`` in [start, stop) in ``into`` (which must hold none of them)."""
    ensure_fresh(into, topic)
    tps = await topic_partitions(kafka, names=[topic])
    if not tps:
        raise ReplayError(f"topic {topic} does not exist")
    async with kafka_reader(kafka) as consumer:
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        starts = await _resolve(consumer, tps, start, begin, end, begin)
        stops = await _resolve(consumer, tps, stop, begin, end, end)
        ranges = {tp: (starts[tp], max(starts[tp], stops[tp])) for tp in tps}
        result = ReplayResult(topic, {tp.partition: r for tp, r in ranges.items()})
        async for batch in read_range(consumer, ranges):
            records = [raw_record(r) for r in batch]
            stored = await asyncio.to_thread(store_records, into, records, inventory_topics=topics, now=now())
            result.records += len(records)
            result.stored += stored.stored
    return result


@dataclass(frozen=True, slots=True)
class RowDifference:
    partition: int
    offset: int
    what: str  # "only in the live store", "only in the replay", or the differing columns


@dataclass
class DiffResult:
    topic: str
    compared: int = 0
    differences: list[RowDifference] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not self.differences


def _rows(engine: Engine, topic: str, partition: int, start: int, stop: int) -> Iterator[StoredRow]:
    """The rows of [start, stop), read without trusting their SQL types (verify_read.py): a row whose
    topic, partition or offset was tampered with is not among them (it shows as missing from the store)."""
    table = AuditRecord.__table__

    def only(query: Select[Any]) -> Select[Any]:
        return query.where(table.c.topic == topic, table.c.partition == partition,
                           table.c.offset >= start, table.c.offset < stop)

    with read_session(engine) as session:
        for row, _ in read_records(session, only):
            if row is not None and start <= row.offset < stop:
                yield row


def _compare(live: StoredRow, replayed: StoredRow, in_replay: set[tuple[str, int, int]]) -> list[str]:
    differing = [c for c in COMPARED_COLUMNS if c not in live.unreadable and getattr(live, c) != getattr(replayed, c)]
    differing += [f"{c} (unreadable in the live store)" for c in sorted(live.unreadable)]
    first_live = (live.first_topic, live.first_partition, live.first_offset)
    first_replay = (replayed.first_topic, replayed.first_partition, replayed.first_offset)
    if first_live != first_replay and (live.first_offset is None or first_live in in_replay):
        differing.append("first occurrence")
    if live.prev_hash == replayed.prev_hash and live.row_hash != replayed.row_hash and "row_hash" not in live.unreadable:
        differing.append("row_hash")
    return differing


def diff_stores(live: Engine, replayed: Engine, topic: str, ranges: dict[int, tuple[int, int]]) -> DiffResult:
    """Compare the rows of ``topic`` in ``ranges`` (partition -> [start, stop)) in both stores."""
    result = DiffResult(topic)
    in_replay = {
        (topic, p, o) for p, (a, b) in ranges.items() for o in (r.offset for r in _rows(replayed, topic, p, a, b))
    }
    for partition, (start, stop) in sorted(ranges.items()):
        live_rows = {r.offset: r for r in _rows(live, topic, partition, start, stop)}
        for row in _rows(replayed, topic, partition, start, stop):
            result.compared += 1
            other = live_rows.pop(row.offset, None)
            if other is None:
                result.differences.append(RowDifference(partition, row.offset, "only in the replay (missing from the live store)"))
                continue
            differing = _compare(other, row, in_replay)
            if differing:
                result.differences.append(RowDifference(partition, row.offset, "differs: " + ", ".join(differing)))
        for offset in sorted(live_rows):
            result.differences.append(RowDifference(partition, offset, "only in the live store (not in Kafka's records)"))
    return result

