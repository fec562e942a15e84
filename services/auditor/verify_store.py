"""The database half of ``certrail audit verify``: one pass over every stored
row, in (topic, partition, offset) order, checking each partition's chain.

For each row: its hash must match its content and ``prev_hash`` (else the row
was MODIFIED); it must link (``prev_offset``, ``prev_hash``) to the row before
it (else rows are missing -- a GAP -- or the chain is BROKEN); and its envelope
columns must be what its value says (DERIVED_MISMATCH). The pass also collects
what the Kafka half needs: each partition's stored offset range, the holes in
it, and the stored hash at each offset a signed checkpoint names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.auditor.chain import GENESIS, ChainContent, content_hash, row_hash
from services.auditor.records import Event, decode_record, derive_attributes, headers_from_json
from services.common.contracts.catalog import CATALOG
from services.common.db_schema import AuditChainHead, AuditRecord

PartitionKey = tuple[str, int]
_DERIVED = ("event_id", "event_type", "source", "subject", "correlation_id", "causation_id", "event_time",
            "certificate_id", "request_id")


class ProblemKind(StrEnum):
    MODIFIED = "modified"  # the row's content does not match its hash
    CHAIN_BROKEN = "chain_broken"  # the row does not link to the row before it
    GAP = "gap"  # rows are missing between two stored rows (or before the first)
    MISSING = "missing"  # Kafka retains a record (below the auditor's committed offset) that is not stored
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"  # the row at a signed head has another hash: the chain was rewritten
    CHECKPOINT_ROW_MISSING = "checkpoint_row_missing"  # the row at a signed head is gone
    DIFFERS_FROM_KAFKA = "differs_from_kafka"  # the stored content is not what Kafka retains at that offset
    DERIVED_MISMATCH = "derived_mismatch"  # the envelope columns are not what the stored value says
    HEAD_MISMATCH = "head_mismatch"  # audit_chain_heads disagrees with the last stored row
    BAD_CHECKPOINT = "bad_checkpoint"  # a checkpoint claims a pinned key but its signature does not verify
    UNEXPECTED_ROW = "unexpected_row"  # a stored row at or beyond Kafka's end offset
    KAFKA_UNAVAILABLE = "kafka_unavailable"  # the Kafka checks could not run


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    detail: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    row_id: int | None = None

    def describe(self) -> str:
        where = ""
        if self.topic is not None:
            where = f"{self.topic}/{self.partition}" + (f"@{self.offset}" if self.offset is not None else "")
            where += f" (row {self.row_id})" if self.row_id is not None else ""
            where += ": "
        return f"[{self.kind}] {where}{self.detail}"


@dataclass
class PartitionScan:
    rows: int = 0
    first_offset: int | None = None
    last_offset: int | None = None
    last_hash: str | None = None
    holes: list[tuple[int, int]] = field(default_factory=list)  # inclusive offset ranges with no row
    hashes_at: dict[int, str] = field(default_factory=dict)  # offset -> stored row_hash, for the checkpoint heads


@dataclass
class StoreScan:
    partitions: dict[PartitionKey, PartitionScan] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    rows_checked: int = 0


def stored_content(row: AuditRecord) -> ChainContent:
    """What a stored row's hash covers, read back from its columns."""
    return ChainContent(
        topic=row.topic, partition=row.partition, offset=row.offset, timestamp_ms=row.timestamp_ms, timestamp_type=row.timestamp_type, key=row.key, value=row.value,
        headers=headers_from_json(row.headers), private_keys_removed=row.private_keys_removed,
        original_sha256=row.original_sha256, original_size=row.original_size,
    )


def _envelope(row: AuditRecord) -> Event | None:
    """The decoded message, as `records.prepare` saw it (a value stored redacted was invalid when received)."""
    if row.original_sha256 is not None:
        return None
    return decode_record(row.value, CATALOG)[0]


def _label(row: AuditRecord) -> str:
    if row.event_id:
        return f"event {row.event_id} ({row.event_type or 'no type'})"
    return f"record ({row.decode_error or 'no envelope'})"


def _check_row(row: AuditRecord, prev: AuditRecord | None, problems: list[Problem]) -> None:
    coords = {"topic": row.topic, "partition": row.partition, "offset": row.offset, "row_id": row.id}
    try:
        recomputed = row_hash(row.prev_hash, row.prev_offset, content_hash(stored_content(row)))
    except ValueError as exc:  # a malformed stored column (e.g. headers that are not JSON)
        problems.append(Problem(ProblemKind.MODIFIED, f"{_label(row)}: unreadable stored content ({exc})", **coords))
        recomputed = None
    if recomputed is not None and recomputed != row.row_hash:
        problems.append(Problem(ProblemKind.MODIFIED, f"{_label(row)}: content does not match its hash", **coords))
    if prev is None:
        if row.prev_offset is not None:
            problems.append(Problem(
                ProblemKind.GAP,
                f"the first stored row links to offset {row.prev_offset}: rows up to offset {row.prev_offset} are missing",
                **coords,
            ))
        elif row.prev_hash != GENESIS:
            problems.append(Problem(ProblemKind.CHAIN_BROKEN, "the first stored row does not start a chain", **coords))
        return
    if row.prev_offset != prev.offset:
        if row.prev_offset is not None and row.prev_offset > prev.offset:
            problems.append(Problem(
                ProblemKind.GAP,
                f"rows missing between offsets {prev.offset} and {row.offset}: this row links to offset "
                f"{row.prev_offset}, which is not stored",
                **coords,
            ))
        else:
            problems.append(Problem(
                ProblemKind.CHAIN_BROKEN,
                f"links to offset {row.prev_offset} but the stored row before it is offset {prev.offset}",
                **coords,
            ))
    elif row.prev_hash != prev.row_hash:
        problems.append(Problem(
            ProblemKind.CHAIN_BROKEN, f"its prev_hash is not the hash of the row before it (offset {prev.offset})", **coords
        ))
    attrs = derive_attributes(row.value, _envelope(row))
    wrong = [name for name in _DERIVED if getattr(row, name) != getattr(attrs, name)]
    if wrong:
        problems.append(Problem(
            ProblemKind.DERIVED_MISMATCH, f"{', '.join(wrong)} differ from what the stored value says", **coords
        ))


def scan_store(
    session: Session, want_hashes: Mapping[PartitionKey, set[int]], topics: set[str] | None = None
) -> StoreScan:
    """Check every chain (or those of ``topics``); note the stored hash at the offsets in ``want_hashes``."""
    scan = StoreScan()
    query = select(AuditRecord).order_by(AuditRecord.topic, AuditRecord.partition, AuditRecord.offset)
    if topics is not None:
        query = query.where(AuditRecord.topic.in_(sorted(topics)))
    prev: AuditRecord | None = None
    current: PartitionScan | None = None
    for row in session.scalars(query.execution_options(yield_per=2000)):
        key = (row.topic, row.partition)
        if prev is None or (prev.topic, prev.partition) != key:
            prev = None
            current = scan.partitions.setdefault(key, PartitionScan())
            current.first_offset = row.offset
        assert current is not None
        _check_row(row, prev, scan.problems)
        if prev is not None and row.offset > prev.offset + 1:
            current.holes.append((prev.offset + 1, row.offset - 1))
        if row.offset in want_hashes.get(key, ()):
            current.hashes_at[row.offset] = row.row_hash
        current.rows += 1
        current.last_offset, current.last_hash = row.offset, row.row_hash
        scan.rows_checked += 1
        session.expunge(row)
        prev = row
    _check_heads(session, scan, topics)
    return scan


def _check_heads(session: Session, scan: StoreScan, topics: set[str] | None) -> None:
    for head in session.scalars(select(AuditChainHead).order_by(AuditChainHead.topic, AuditChainHead.partition)):
        if topics is not None and head.topic not in topics:
            continue
        part = scan.partitions.get((head.topic, head.partition))
        last = part.last_offset if part else None
        if head.offset < 0 and last is None:
            continue
        if last != head.offset or (part is not None and part.last_hash != head.row_hash):
            scan.problems.append(Problem(
                ProblemKind.HEAD_MISMATCH,
                f"the chain head says offset {head.offset} (hash {head.row_hash[:12]}...) but the last stored row is "
                + (f"offset {last} (hash {part.last_hash[:12] if part and part.last_hash else '?'}...)" if last is not None else "none"),
                topic=head.topic, partition=head.partition, offset=head.offset,
            ))
