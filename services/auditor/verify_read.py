"""Reading the audit tables without trusting them (``certrail audit verify``, and
the live store for ``replay --diff`` and ``export``).

Anyone with write access to the database can put any SQL type in any column
(on SQLite, per row: ``UPDATE audit_records SET value = CAST(value AS TEXT)``;
on PostgreSQL, per column: ``ALTER TABLE ... ALTER COLUMN ... TYPE``). The ORM
would crash on such a row (or, worse, hash a ``str`` as if it were bytes), so
verify reads every column raw -- no result processing -- and checks each value
against what the column must hold. A value of the wrong type or shape is an
UNREADABLE_COLUMN problem naming the row id and the column; the column is then
read as absent (``None``) and listed in ``StoredRow.unreadable``, so that the
checks that need it are skipped for that row (one problem per tampered value,
not a cascade) and the scan goes on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import LargeBinary, Select, case, cast, func, select, type_coerce
from sqlalchemy.orm import Session
from sqlalchemy.types import NullType

from services.auditor.records import headers_from_json
from services.auditor.verify_problems import Problem, ProblemKind
from services.common.db_schema import AuditChainHead, AuditRecord

_HASH = re.compile(r"[0-9a-f]{64}")

# What each column verify reads must hold: (kind, nullable).
RECORD_COLUMNS: dict[str, tuple[str, bool]] = {
    "id": ("int", False),
    "topic": ("text", False),
    "partition": ("int", False),
    "offset": ("int", False),
    "timestamp_ms": ("int", True),
    "timestamp_type": ("int", True),
    "key": ("bytes", True),
    "value": ("bytes", True),
    "headers": ("headers", True),
    "private_keys_removed": ("int", False),
    "original_sha256": ("hash", True),
    "original_size": ("int", True),
    "decode_error": ("text", True),
    "decode_reason": ("text", True),
    "event_id": ("text", True),
    "event_type": ("text", True),
    "source": ("text", True),
    "subject": ("text", True),
    "correlation_id": ("text", True),
    "causation_id": ("text", True),
    "event_time": ("time", True),
    "certificate_id": ("text", True),
    "request_id": ("text", True),
    "first_topic": ("text", True),
    "first_partition": ("int", True),
    "first_offset": ("int", True),
    "prev_offset": ("int", True),
    "prev_hash": ("hash", False),
    "row_hash": ("hash", False),
    "stored_at": ("time", False),
}
HEAD_COLUMNS: dict[str, tuple[str, bool]] = {
    "topic": ("text", False),
    "partition": ("int", False),
    "offset": ("int", False),
    "row_hash": ("hash", False),
}
PLACEMENT = frozenset({"id", "topic", "partition", "offset"})  # without these a row has no place in a chain
CONTENT = frozenset({"topic", "partition", "offset", "timestamp_ms", "timestamp_type", "key", "value", "headers",
                     "private_keys_removed", "original_sha256", "original_size"})
_DESCRIBED = {
    "int": "an integer", "text": "text", "bytes": "bytes", "headers": "a JSON list of [name, base64 value] pairs",
    "hash": "a SHA-256 hash (64 lower-case hex digits)", "time": "a timestamp",
}


class Unreadable(ValueError):
    """A stored value is not what its column must hold; the message says what it is instead."""


def _what(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return f"text of {len(value)} characters"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"{len(value)} bytes"
    return type(value).__name__  # int, float, bool, ... (never the value: it may be anything)


@dataclass(slots=True)
class StoredRow:
    """An ``audit_records`` row as verify read it (unreadable columns are None and listed in ``unreadable``)."""

    id: int
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    timestamp_type: int | None = None
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    private_keys_removed: int = 0
    original_sha256: str | None = None
    original_size: int | None = None
    decode_error: str | None = None
    decode_reason: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    source: str | None = None
    subject: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    event_time: datetime | None = None
    certificate_id: str | None = None
    request_id: str | None = None
    first_topic: str | None = None
    first_partition: int | None = None
    first_offset: int | None = None
    prev_offset: int | None = None
    prev_hash: str | None = None
    row_hash: str | None = None
    stored_at: datetime | None = None
    unreadable: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class StoredHead:
    topic: str
    partition: int
    offset: int | None
    row_hash: str | None


def _check(kind: str, nullable: bool, value: Any, to_time: Callable[[Any], Any]) -> Any:
    """The value as verify uses it, or Unreadable."""
    if value is None:
        if nullable:
            return None
        raise Unreadable("NULL where a value is required")
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "text" and isinstance(value, str):
        return value
    if kind == "bytes" and isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if kind == "hash" and isinstance(value, str):
        if _HASH.fullmatch(value):
            return value
        raise Unreadable(f"text of {len(value)} characters, not {_DESCRIBED[kind]}")
    if kind == "headers" and isinstance(value, str):
        try:
            return headers_from_json(value)
        except (ValueError, TypeError, RecursionError):  # not JSON, not pairs, not base64
            raise Unreadable(f"text that is not {_DESCRIBED[kind]}") from None
    if kind == "time" and isinstance(value, datetime | str):
        try:
            result = to_time(value)
        except (ValueError, TypeError, OverflowError, AttributeError):  # what the column type's own reading raises
            raise Unreadable(f"{_what(value)} that is not {_DESCRIBED[kind]}") from None
        if isinstance(result, datetime):
            return result
    raise Unreadable(f"{_what(value)}, not {_DESCRIBED[kind]}")


def _raw_select(session: Session, table: Any, columns: dict[str, tuple[str, bool]]) -> Select[Any]:
    """The columns with no result processing (NullType): the driver's values as they are. On SQLite,
    text comes back as its bytes beside its storage class (``_t_<name>``): Python's sqlite3 cannot even
    fetch a TEXT value that is not UTF-8 (CAST(x'ff' AS TEXT)), so the decoding happens in `_read`."""
    if session.get_bind().dialect.name != "sqlite":
        return select(*(type_coerce(table.c[name], NullType()).label(name) for name in columns))
    selected = []
    for name in columns:
        column = table.c[name]
        kind = func.typeof(column)
        selected.append(kind.label(f"_t_{name}"))
        selected.append(type_coerce(case((kind == "text", cast(column, LargeBinary)), else_=column), NullType()).label(name))
    return select(*selected)


def _sqlite_text(raw: Mapping[str, Any], name: str) -> Any:
    value = raw[name]
    if raw.get(f"_t_{name}") != "text" or not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise Unreadable(f"text of {len(value)} bytes that is not UTF-8") from None


def _time_reader(session: Session) -> Callable[[Any], Any]:
    dialect = session.get_bind().dialect
    column_type = AuditRecord.__table__.c.event_time.type
    processor = column_type.dialect_impl(dialect).result_processor(dialect, None)
    return processor if processor is not None else (lambda value: value)


def _read(raw: Mapping[str, Any], columns: dict[str, tuple[str, bool]], to_time: Callable[[Any], Any],
          bad: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, (kind, nullable) in columns.items():
        try:
            values[name] = _check(kind, nullable, _sqlite_text(raw, name), to_time)
        except Unreadable as exc:
            bad[name] = str(exc)
            values[name] = None
    return values


def _unreadable_problems(table: str, bad: dict[str, str], values: dict[str, Any], row_id: int | None) -> list[Problem]:
    where = {"topic": values.get("topic"), "partition": values.get("partition"), "offset": values.get("offset")}
    if where["topic"] is None or where["partition"] is None:  # no partition to name: the row id says which row
        where = {"topic": None, "partition": None, "offset": None}
    return [
        Problem(ProblemKind.UNREADABLE_COLUMN, f"{table}.{name} holds {reason}", row_id=row_id, column=name, **where)
        for name, reason in bad.items()
    ]


def read_records(session: Session, query_filter: Callable[[Select[Any]], Select[Any]] | None = None,
                 ) -> Iterator[tuple[StoredRow | None, list[Problem]]]:
    """Every ``audit_records`` row in (topic, partition, offset) order: the row (None when it cannot be
    placed in a chain: its id, topic, partition or offset is unreadable) and its UNREADABLE_COLUMN problems."""
    table = AuditRecord.__table__
    query = _raw_select(session, table, RECORD_COLUMNS).order_by(table.c.topic, table.c.partition, table.c.offset, table.c.id)
    if query_filter is not None:
        query = query_filter(query)
    to_time = _time_reader(session)
    for raw in session.execute(query.execution_options(yield_per=2000)).mappings():
        bad: dict[str, str] = {}
        values = _read(raw, RECORD_COLUMNS, to_time, bad)
        row_id = values["id"]
        problems = _unreadable_problems("audit_records", bad, values, row_id)
        if PLACEMENT & bad.keys():
            yield None, problems
            continue
        values["headers"] = values["headers"] or ()
        values["private_keys_removed"] = values["private_keys_removed"] or 0
        yield StoredRow(**values, unreadable=frozenset(bad)), problems


def read_heads(session: Session) -> Iterator[tuple[StoredHead | None, list[Problem]]]:
    """Every ``audit_chain_heads`` row (None when its topic or partition is unreadable), with its problems."""
    table = AuditChainHead.__table__
    to_time = _time_reader(session)
    query = _raw_select(session, table, HEAD_COLUMNS).order_by(table.c.topic, table.c.partition)
    for raw in session.execute(query).mappings():
        bad: dict[str, str] = {}
        values = _read(raw, HEAD_COLUMNS, to_time, bad)
        problems = _unreadable_problems("audit_chain_heads", bad, values, None)
        if {"topic", "partition"} & bad.keys():
            yield None, problems
            continue
        yield StoredHead(**values), problems
