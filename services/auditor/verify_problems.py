"""What ``certrail audit verify`` reports: problems of stable kinds (docs/audit.md lists them)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ProblemKind(StrEnum):
    MODIFIED = "modified"  # the row's content does not match its hash
    CHAIN_BROKEN = "chain_broken"  # the row does not link to the row before it
    GAP = "gap"  # rows are missing between two stored rows (or before the first)
    DUPLICATE_OFFSET = "duplicate_offset"  # two rows hold the same offset of one partition
    UNREADABLE_COLUMN = "unreadable_column"  # a column holds a value of the wrong SQL type or shape
    MISSING = "missing"  # Kafka retains a record (below the auditor's committed offset) that is not stored
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"  # the row at a signed head has another hash: the chain was rewritten
    CHECKPOINT_ROW_MISSING = "checkpoint_row_missing"  # the row at a signed head is gone
    DIFFERS_FROM_KAFKA = "differs_from_kafka"  # the stored content is not what Kafka retains at that offset
    DERIVED_MISMATCH = "derived_mismatch"  # the envelope columns are not what the stored value says
    HEAD_MISMATCH = "head_mismatch"  # audit_chain_heads disagrees with the last stored row
    BAD_CHECKPOINT = "bad_checkpoint"  # a checkpoint claims a pinned key but its signature does not verify
    UNEXPECTED_ROW = "unexpected_row"  # a stored row at or beyond Kafka's end offset
    KAFKA_UNAVAILABLE = "kafka_unavailable"  # the Kafka checks could not run
    VERIFY_INCOMPLETE = "verify_incomplete"  # verify itself failed (database unreachable, ...): nothing is vouched for


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    detail: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    row_id: int | None = None
    column: str | None = None

    def describe(self) -> str:
        where = ""
        if self.topic is not None:
            where = f"{self.topic}/{self.partition}" + (f"@{self.offset}" if self.offset is not None else "")
        if self.row_id is not None:
            where += (" " if where else "") + f"(row {self.row_id}" + (f", column {self.column})" if self.column else ")")
        elif self.column is not None:
            where += (" " if where else "") + f"(column {self.column})"
        return f"[{self.kind}] {where + ': ' if where else ''}{self.detail}"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "topic": self.topic, "partition": self.partition, "offset": self.offset,
                "row_id": self.row_id, "column": self.column, "detail": self.detail}
