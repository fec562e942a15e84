"""The database half of ``certrail audit verify``: one pass over every stored
row, in (topic, partition, offset) order, checking each partition's chain.

For each row: its hash must match its content and ``prev_hash`` (else the row
was MODIFIED); it must link (``prev_offset``, ``prev_hash``) to the row before
it (else rows are missing -- a GAP -- or the chain is BROKEN); and its envelope
columns must be what its value says (DERIVED_MISMATCH); no two rows may hold
one offset (DUPLICATE_OFFSET). Rows are read raw (verify_read.py): a value of
the wrong SQL type or shape is UNREADABLE_COLUMN (row id and column), never a
crash, and the checks that need it are skipped. The pass also collects
what the Kafka half needs: each partition's stored offset range, the holes in
it, and the stored hash at each offset a signed checkpoint names.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import String, cast
from sqlalchemy.orm import Session

from services.auditor.chain import GENESIS, ChainContent, content_hash, row_hash
from services.auditor.records import Event, decode_record, derive_attributes, headers_from_json
from services.auditor.verify_problems import Problem, ProblemKind
from services.auditor.verify_read import CONTENT, StoredRow, read_heads, read_records
from services.common.contracts.catalog import CATALOG
from services.common.db_schema import AuditRecord

__all__ = ["UNREADABLE_HASH", "PartitionKey", "PartitionScan", "Problem", "ProblemKind", "StoreScan", "scan_store", "stored_content"]

PartitionKey = tuple[str, int]
UNREADABLE_HASH = ""
_DERIVED = ("event_id", "event_type", "source", "subject", "correlation_id", "causation_id", "event_time",
            "certificate_id", "request_id")


@dataclass
class PartitionScan:
    rows: int = 0
    first_offset: int | None = None
    last_offset: int | None = None
    last_hash: str | None = None
    holes: list[tuple[int, int]] = field(default_factory=list)  # inclusive offset ranges with no row
    hashes_at: dict[int, str] = field(default_factory=dict)  # offset -> stored row_hash, for the checkpoint heads
    # (UNREADABLE_HASH where the row is stored but its row_hash is unreadable: reported already)


@dataclass
class StoreScan:
    partitions: dict[PartitionKey, PartitionScan] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    rows_checked: int = 0


def stored_content(row: AuditRecord | StoredRow) -> ChainContent:
    """What a stored row's hash covers, read back from its columns (an ORM row's headers are still JSON)."""
    headers = headers_from_json(row.headers) if isinstance(row.headers, str) or row.headers is None else row.headers
    return ChainContent(
        topic=row.topic, partition=row.partition, offset=row.offset, timestamp_ms=row.timestamp_ms,
        timestamp_type=row.timestamp_type, key=row.key, value=row.value, headers=headers,
        private_keys_removed=row.private_keys_removed, original_sha256=row.original_sha256,
        original_size=row.original_size,
    )


def _envelope(row: StoredRow) -> Event | None:
    """The decoded message, as `records.prepare` saw it (a value stored redacted was invalid when received)."""
    if row.original_sha256 is not None:
        return None
    return decode_record(row.value, CATALOG)[0]


def _label(row: StoredRow) -> str:
    if row.event_id:
        return f"event {row.event_id} ({row.event_type or 'no type'})"
    return f"record ({row.decode_error or 'no envelope'})"


def _check_hash(row: StoredRow, coords: dict[str, object], problems: list[Problem]) -> None:
    if CONTENT & row.unreadable or {"prev_hash", "prev_offset", "row_hash"} & row.unreadable:
        return  # reported as UNREADABLE_COLUMN: the hash cannot be recomputed
    assert row.prev_hash is not None
    try:
        recomputed = row_hash(row.prev_hash, row.prev_offset, content_hash(stored_content(row)))
    except (ValueError, struct.error, OverflowError) as exc:  # e.g. an integer out of the encoding's range
        problems.append(Problem(ProblemKind.MODIFIED, f"{_label(row)}: unreadable stored content ({exc})", **coords))
        return
    if recomputed != row.row_hash:
        problems.append(Problem(ProblemKind.MODIFIED, f"{_label(row)}: content does not match its hash", **coords))


def _check_link(row: StoredRow, prev: StoredRow | None, coords: dict[str, object], problems: list[Problem]) -> None:
    if {"prev_hash", "prev_offset"} & row.unreadable:
        return
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
    if row.prev_offset is not None and row.prev_offset >= row.offset:
        problems.append(Problem(
            ProblemKind.CHAIN_BROKEN, f"links to offset {row.prev_offset}, not to one before it: rows were reordered", **coords
        ))
    elif row.prev_offset != prev.offset:
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
    elif "row_hash" not in prev.unreadable and row.prev_hash != prev.row_hash:
        problems.append(Problem(
            ProblemKind.CHAIN_BROKEN, f"its prev_hash is not the hash of the row before it (offset {prev.offset})", **coords
        ))


def _check_derived(row: StoredRow, coords: dict[str, object], problems: list[Problem]) -> None:
    if {"value", "original_sha256"} & row.unreadable:
        return
    attrs = derive_attributes(row.value, _envelope(row))
    wrong = [name for name in _DERIVED if name not in row.unreadable and getattr(row, name) != getattr(attrs, name)]
    if wrong:
        problems.append(Problem(
            ProblemKind.DERIVED_MISMATCH, f"{', '.join(wrong)} differ from what the stored value says", **coords
        ))


def _check_row(row: StoredRow, prev: StoredRow | None, problems: list[Problem]) -> None:
    coords: dict[str, object] = {"topic": row.topic, "partition": row.partition, "offset": row.offset, "row_id": row.id}
    _check_hash(row, coords, problems)
    _check_link(row, prev, coords, problems)
    _check_derived(row, coords, problems)


def scan_store(
    session: Session, want_hashes: Mapping[PartitionKey, set[int]], topics: set[str] | None = None
) -> StoreScan:
    """Check every chain (or those of ``topics``); note the stored hash at the offsets in ``want_hashes``.
    Never raises on what the rows hold: a value it cannot read is an UNREADABLE_COLUMN problem."""
    scan = StoreScan()
    table = AuditRecord.__table__
    only = None if topics is None else (lambda query: query.where(cast(table.c.topic, String).in_(sorted(topics))))
    prev: StoredRow | None = None
    current: PartitionScan | None = None
    for row, problems in read_records(session, only):
        scan.problems.extend(problems)
        if row is None:  # no place in any chain: reported, and its offset counts as not stored
            continue
        key = (row.topic, row.partition)
        if prev is None or (prev.topic, prev.partition) != key:
            prev = None
            current = scan.partitions.setdefault(key, PartitionScan())
            current.first_offset = row.offset
        assert current is not None
        scan.rows_checked += 1
        if prev is not None and row.offset == prev.offset:
            scan.problems.append(Problem(
                ProblemKind.DUPLICATE_OFFSET, f"a second row holds offset {row.offset} (the first is row {prev.id})",
                topic=row.topic, partition=row.partition, offset=row.offset, row_id=row.id,
            ))
            continue  # the chain goes on from the first
        _check_row(row, prev, scan.problems)
        if prev is not None and row.offset > prev.offset + 1:
            current.holes.append((prev.offset + 1, row.offset - 1))
        if row.offset in want_hashes.get(key, ()):
            current.hashes_at[row.offset] = row.row_hash or UNREADABLE_HASH
        current.rows += 1
        current.last_offset, current.last_hash = row.offset, row.row_hash
        prev = row
    _check_heads(session, scan, topics)
    return scan


def _check_heads(session: Session, scan: StoreScan, topics: set[str] | None) -> None:
    for head, problems in read_heads(session):
        if head is not None and topics is not None and head.topic not in topics:
            continue
        scan.problems.extend(problems)
        if head is None or head.offset is None or head.row_hash is None:
            continue
        part = scan.partitions.get((head.topic, head.partition))
        last = part.last_offset if part else None
        if head.offset < 0 and last is None:
            continue
        if last != head.offset or (part is not None and part.last_hash is not None and part.last_hash != head.row_hash):
            scan.problems.append(Problem(
                ProblemKind.HEAD_MISMATCH,
                f"the chain head says offset {head.offset} (hash {head.row_hash[:12]}...) but the last stored row is "
                + (f"offset {last} (hash {part.last_hash[:12] if part and part.last_hash else '?'}...)" if last is not None else "none"),
                topic=head.topic, partition=head.partition, offset=head.offset,
            ))
