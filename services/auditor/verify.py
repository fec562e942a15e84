"""``certrail audit verify``: is the audit log complete and unmodified?

In this order (so that concurrent writes by a running auditor cause no false alarm):

1. the signed checkpoints are read from Kafka (outside the database) and
   their signatures checked against the pinned key ids;
2. the auditor group's committed offsets are read from Kafka: everything
   below them was stored (offsets are committed after the database commit);
3. one pass over the database checks every chain (verify_store.py);
4. every signed head must be a stored row with exactly that hash: a chain
   rewritten with recomputed hashes fails here; the rows between the last
   matching head and the first mismatching one are then compared with the
   records Kafka retains, to name the rows that changed;
5. every offset in Kafka's retained range below the committed offset that has
   no row is looked up in Kafka: a record there is MISSING from the store
   (a deleted row, even when the attacker relinked the chain around it).

The report names each problem's row (topic/partition@offset, row id, event,
and the column when a stored value is unreadable). What the rows hold never
makes verify crash (verify_read.py reads them raw); an error of verify itself
(database unreachable, ...) propagates to the caller, which records a failed run.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy import Engine, Select, String, cast
from sqlalchemy.exc import DataError, ProgrammingError

from services.auditor.checkpoints import Trust, check_signature, read_checkpoints
from services.auditor.kafka_reader import committed_offsets, kafka_reader, read_range, topic_partitions
from services.auditor.records import content_of, envelope_attributes, prepare, raw_record
from services.auditor.verify_problems import Problem, ProblemKind
from services.auditor.verify_read import CONTENT, StoredRow, read_records
from services.auditor.verify_store import UNREADABLE_HASH, PartitionKey, StoreScan, scan_store, stored_content
from services.common.contracts.catalog import CATALOG
from services.common.contracts.topics import Topics
from services.common.db import read_session
from services.common.db_schema import AuditRecord
from services.common.settings import KafkaSettings

MAX_NAMED_PER_RANGE = 1000


@dataclass
class VerifyReport:
    started_at: datetime
    finished_at: datetime | None = None
    rows_checked: int = 0
    partitions: int = 0
    checkpoints_trusted: int = 0
    problems: list[Problem] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    not_yet_audited: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``certrail audit verify --json``)."""
        return {
            "ok": self.ok,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "rows_checked": self.rows_checked,
            "partitions": self.partitions,
            "checkpoints_trusted": self.checkpoints_trusted,
            "not_yet_audited": self.not_yet_audited,
            "problems": [p.as_dict() for p in self.problems],
            "notices": list(self.notices),
        }

    def summary(self) -> str:
        verdict = "OK" if self.ok else f"FAILED: {len(self.problems)} problem(s)"
        lines = [
            f"audit log verify {verdict}: {self.rows_checked} rows in {self.partitions} partitions, "
            f"{self.checkpoints_trusted} trusted checkpoints, {self.not_yet_audited} retained offsets not yet audited"
        ]
        lines += [p.describe() for p in self.problems]
        lines += [f"note: {n}" for n in self.notices]
        return "\n".join(lines)


@dataclass
class _Signed:
    """Trusted signed heads per partition: offset -> hash (the newest checkpoint wins on a conflict)."""

    heads: dict[PartitionKey, dict[int, str]] = field(default_factory=lambda: defaultdict(dict))


async def _signed_heads(kafka: KafkaSettings, topics: Topics, trusted: set[str], report: VerifyReport) -> _Signed:
    signed = _Signed()
    checkpoints, unreadable = await read_checkpoints(kafka, topics)
    untrusted: dict[str, int] = defaultdict(int)
    for stored in sorted(checkpoints, key=lambda c: c.checkpoint.signed_at):
        trust = check_signature(stored.checkpoint, trusted)
        if trust is Trust.UNKNOWN_KEY:
            untrusted[stored.checkpoint.key_id] += 1
        elif trust is Trust.BAD_SIGNATURE:
            report.problems.append(Problem(
                ProblemKind.BAD_CHECKPOINT,
                f"checkpoint signed by pinned key {stored.checkpoint.key_id[:16]}... does not verify (forged or corrupted)",
                topic=topics.audit_checkpoints, partition=stored.partition, offset=stored.offset,
            ))
        else:
            report.checkpoints_trusted += 1
            for head in stored.checkpoint.heads:
                signed.heads[(head.topic, head.partition)][head.offset] = head.hash
    for key, count in sorted(untrusted.items()):
        report.notices.append(f"{count} checkpoint(s) signed by key {key[:16]}..., which is not pinned, were ignored")
    for bad in unreadable:
        report.notices.append(f"record {topics.audit_checkpoints}/{bad.partition}@{bad.offset} is not a checkpoint: {bad.reason}")
    return signed


def _rows_where(engine: Engine, only: Callable[[Select[Any]], Select[Any]], start: int, stop: int) -> dict[int, StoredRow]:
    rows: dict[int, StoredRow] = {}
    with read_session(engine) as session:
        for row, _ in read_records(session, only):
            if row is not None and start <= row.offset < stop:
                rows.setdefault(row.offset, row)
    return rows


def _stored_rows(engine: Engine, topic: str, partition: int, start: int, stop: int) -> dict[int, StoredRow]:
    """The readable rows of [start, stop) by offset (unreadable rows are reported by the scan)."""
    table = AuditRecord.__table__

    def typed(query: Select[Any]) -> Select[Any]:  # the unique index's columns: a range read
        return query.where(table.c.topic == topic, table.c.partition == partition,
                           table.c.offset >= start, table.c.offset < stop)

    def as_text(query: Select[Any]) -> Select[Any]:  # whatever SQL type a tampered column now has
        return query.where(cast(table.c.topic, String) == topic, cast(table.c.partition, String) == str(partition))

    try:
        return _rows_where(engine, typed, start, stop)
    except (ProgrammingError, DataError):  # PostgreSQL: a column ALTERed to another type cannot be compared so
        return _rows_where(engine, as_text, start, stop)


async def _compare_with_kafka(
    kafka: KafkaSettings, engine: Engine, tp: TopicPartition, start: int, stop: int, report: VerifyReport, why: str
) -> None:
    """Name the rows in [start, stop) whose content is not what Kafka retains, and the records not stored."""
    stored = await asyncio.to_thread(_stored_rows, engine, tp.topic, tp.partition, start, stop)
    named = skipped = 0
    async with kafka_reader(kafka) as consumer:
        begin = (await consumer.beginning_offsets([tp]))[tp]
        if begin > start:
            report.notices.append(
                f"{tp.topic}/{tp.partition} offsets {start}..{min(begin, stop) - 1} ({why}) cannot be compared: "
                "Kafka no longer retains them"
            )
        async for batch in read_range(consumer, {tp: (max(start, begin), stop)}):
            for record in batch:
                if named >= MAX_NAMED_PER_RANGE:
                    skipped += 1
                    continue
                entry = prepare(raw_record(record), CATALOG)
                row = stored.get(record.offset)
                attrs = envelope_attributes(entry.value)
                what = f"event {attrs.event_id} ({attrs.event_type})" if attrs.event_id else "record"
                if row is None:
                    report.problems.append(Problem(
                        ProblemKind.MISSING, f"{what} is in Kafka but not in the store ({why})",
                        topic=tp.topic, partition=tp.partition, offset=record.offset,
                    ))
                    named += 1
                    continue
                if CONTENT & row.unreadable:
                    continue  # reported as UNREADABLE_COLUMN by the scan
                expected = content_of(entry)
                actual = stored_content(row)
                if actual != expected:
                    fields = [name for name in expected._fields if getattr(actual, name) != getattr(expected, name)]
                    report.problems.append(Problem(
                        ProblemKind.DIFFERS_FROM_KAFKA,
                        f"{what}: stored {', '.join(fields)} differ from the record Kafka retains ({why})",
                        topic=tp.topic, partition=tp.partition, offset=row.offset, row_id=row.id,
                    ))
                    named += 1
    if skipped:
        report.problems.append(Problem(
            ProblemKind.MISSING, f"... and {skipped} more records in offsets {start}..{stop - 1} ({why}) not listed",
            topic=tp.topic, partition=tp.partition,
        ))


def _check_signed_heads(scan: StoreScan, signed: _Signed, report: VerifyReport) -> list[tuple[PartitionKey, int, int]]:
    """Compare the signed heads with the stored hashes; return the ranges [start, stop) to compare with Kafka."""
    ranges = []
    for key, heads in sorted(signed.heads.items()):
        part = scan.partitions.get(key)
        stored = part.hashes_at if part else {}
        good_below = -1
        first_bad: int | None = None
        for offset in sorted(heads):
            actual = stored.get(offset)
            if actual == UNREADABLE_HASH:
                continue  # the row is stored but its row_hash is unreadable: reported by the scan
            if actual == heads[offset]:
                if first_bad is None:
                    good_below = offset
                continue
            kind = ProblemKind.CHECKPOINT_ROW_MISSING if actual is None else ProblemKind.CHECKPOINT_MISMATCH
            detail = ("the row a signed checkpoint names is not stored" if actual is None else
                      f"signed hash {heads[offset][:12]}... but the stored row has {actual[:12]}...: "
                      "rows up to here were changed and the chain recomputed")
            report.problems.append(Problem(kind, detail, topic=key[0], partition=key[1], offset=offset))
            first_bad = offset if first_bad is None else first_bad
        if first_bad is not None:
            ranges.append((key, good_below + 1, first_bad + 1))
        last_signed = max(heads)
        if part is not None and part.last_offset is not None and part.last_offset > last_signed:
            report.notices.append(
                f"{key[0]}/{key[1]}: rows after offset {last_signed} are not yet covered by a signed checkpoint"
            )
    for key, part in sorted(scan.partitions.items()):
        if key not in signed.heads:
            report.notices.append(f"{key[0]}/{key[1]}: no signed checkpoint covers its {part.rows} rows yet")
    return ranges


def offsets_without_rows(part_first: int | None, part_last: int | None, holes: Iterable[tuple[int, int]],
                    begin: int, audited_upto: int) -> list[tuple[int, int]]:
    """The ranges [start, stop) within [begin, audited_upto) that have no stored row."""
    if part_first is None or part_last is None:
        candidates = [(begin, audited_upto)]
    else:
        candidates = [(begin, part_first)] + [(a, b + 1) for a, b in holes] + [(part_last + 1, audited_upto)]
    return [(max(a, begin), min(b, audited_upto)) for a, b in candidates if min(b, audited_upto) > max(a, begin)]


async def verify(
    *, kafka: KafkaSettings, engine: Engine, topics: Topics, group_id: str, trusted_key_ids: set[str],
    only_topics: set[str] | None = None,
) -> VerifyReport:
    report = VerifyReport(started_at=datetime.now(UTC))
    try:
        signed = await _signed_heads(kafka, topics, trusted_key_ids, report)
        committed = await committed_offsets(kafka, group_id)
    except (KafkaError, OSError, TimeoutError) as exc:
        report.problems.append(Problem(ProblemKind.KAFKA_UNAVAILABLE, f"cannot read Kafka: {type(exc).__name__}: {exc}"))
        signed, committed = _Signed(), {}
    if not trusted_key_ids:
        report.notices.append("no checkpoint key is pinned: the chains are only checked for self-consistency")
    if only_topics is not None:
        signed.heads = defaultdict(dict, {k: v for k, v in signed.heads.items() if k[0] in only_topics})
    want = {key: set(heads) for key, heads in signed.heads.items()}

    def _scan() -> StoreScan:
        with read_session(engine) as session:
            return scan_store(session, want, only_topics)

    scan = await asyncio.to_thread(_scan)
    report.rows_checked = scan.rows_checked
    report.problems.extend(scan.problems)
    ranges = _check_signed_heads(scan, signed, report)
    try:  # what the database pass found stays reported when Kafka fails now
        for (key, start, stop) in ranges:
            await _compare_with_kafka(kafka, engine, TopicPartition(*key), start, stop, report, "checkpoint mismatch")
        if not any(p.kind is ProblemKind.KAFKA_UNAVAILABLE for p in report.problems):
            await _check_kafka_ranges(kafka, engine, topics, scan, committed, only_topics, report)
    except (KafkaError, OSError, TimeoutError) as exc:
        report.problems.append(Problem(
            ProblemKind.KAFKA_UNAVAILABLE, f"the comparison with Kafka could not complete: {type(exc).__name__}: {exc}"
        ))
    report.partitions = len(scan.partitions)
    _dedupe(report)
    report.finished_at = datetime.now(UTC)
    return report


async def _check_kafka_ranges(
    kafka: KafkaSettings, engine: Engine, topics: Topics, scan: StoreScan, committed: dict[TopicPartition, int],
    only_topics: set[str] | None, report: VerifyReport,
) -> None:
    stored_topics = sorted({t for t, _ in scan.partitions})
    partitions = await topic_partitions(kafka, names=stored_topics, pattern=topics.all_pattern)
    if only_topics is not None:
        partitions = [tp for tp in partitions if tp.topic in only_topics]
    async with kafka_reader(kafka) as consumer:
        begin = await consumer.beginning_offsets(partitions) if partitions else {}
        end = await consumer.end_offsets(partitions) if partitions else {}
    for key in sorted(set(scan.partitions) - {(tp.topic, tp.partition) for tp in partitions}):
        report.notices.append(f"{key[0]}/{key[1]} is stored but no longer exists in Kafka")
    for tp in partitions:
        part = scan.partitions.get((tp.topic, tp.partition))
        last = part.last_offset if part else None
        audited_upto = max(committed.get(tp, begin[tp]), (last + 1) if last is not None else begin[tp])
        report.not_yet_audited += max(0, end[tp] - audited_upto)
        if last is not None and last >= end[tp]:
            report.problems.append(Problem(
                ProblemKind.UNEXPECTED_ROW,
                f"stored rows reach offset {last} but Kafka's end offset is {end[tp]} (was the topic recreated?)",
                topic=tp.topic, partition=tp.partition, offset=last,
            ))
        for start, stop in offsets_without_rows(part.first_offset if part else None, last, part.holes if part else (),
                                           begin[tp], min(audited_upto, end[tp])):
            await _compare_with_kafka(kafka, engine, tp, start, stop, report, "offset range has no stored row")


def _dedupe(report: VerifyReport) -> None:
    seen: set[tuple[str, str | None, int | None, int | None, int | None, str | None]] = set()
    unique = []
    for problem in report.problems:
        key = (problem.kind.value, problem.topic, problem.partition, problem.offset, problem.row_id, problem.column)
        if key not in seen:
            seen.add(key)
            unique.append(problem)
    report.problems = unique
