"""Writing a batch of records to the audit log, in one transaction.

`write_batch` is called inside ``write_session`` (BEGIN IMMEDIATE on SQLite)
with the records of one fetched batch:

1. it reads the chain head of every (topic, partition) in the batch, locking
   it (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write lock is already
   held), so that two auditor instances overlapping during a rebalance can
   never fork a chain;
2. records at or below the head's offset are already stored (a redelivery
   after a rebalance or a crash between the database commit and the offset
   commit): they are skipped, so each (topic, partition, offset) is stored
   once;
3. a record whose event id was stored before at another offset is stored
   again and linked to that first occurrence (``first_topic/partition/offset``);
4. each new row gets ``prev_offset``, ``prev_hash`` and ``row_hash`` (chain.py)
   and the heads move forward;
5. the inventory (inventory.py) folds the new, valid, first-occurrence events
   that arrived on their producer's events topic (`Topics.may_arrive_on`) or on the
   single events topic of installations before decision 0016 (``<prefix>.events``,
   which no principal may write any more). An event on another producer's topic
   (a forgery: a CertificateIssued on the deployer's topic) is stored like every
   record but never folded, and counted as ``misrouted`` (the metric
   certrail_audit_invalid_records_total{code="PRODUCER_NOT_ALLOWED"}).

The caller commits the Kafka offsets only after the transaction committed.
"""

from __future__ import annotations

import functools
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.auditor.chain import GENESIS, row_hash
from services.auditor.inventory import InventoryEvent, apply_events
from services.auditor.records import AuditEntry, RawRecord, headers_to_json, prepare
from services.auditor.sql import executemany, time_binder
from services.common.contracts.catalog import CATALOG
from services.common.contracts.topics import Topics
from services.common.db import core, write_session
from services.common.db_schema import AuditChainHead, AuditRecord

_CHUNK = 500

PartitionKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Head:
    """The last stored row of one partition's chain (offset -1: nothing stored yet)."""

    topic: str
    partition: int
    offset: int
    row_hash: str


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets that Kafka did not deliver between two stored rows (transaction
    markers, compaction, or records deleted by retention before the auditor
    read them). ``verify`` checks them against Kafka."""

    topic: str
    partition: int
    first_missing: int
    last_missing: int


@dataclass
class BatchResult:
    stored: int = 0
    redelivered: int = 0  # same (topic, partition, offset) again: skipped
    duplicates: Counter[str] = field(default_factory=Counter)  # by topic: event ids stored before at another offset
    inventory_events: int = 0
    heads: dict[PartitionKey, Head] = field(default_factory=dict)  # heads this batch wrote
    gaps: list[Gap] = field(default_factory=list)
    stored_by_type: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, type or "invalid")
    invalid_by_code: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, error code)
    misrouted: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, type): not its producer's topic


@functools.cache
def _create_heads(dialect: str) -> Any:
    """The INSERT of missing heads, built once per dialect (building it, and its cache key, on every batch cost
    the auditor 7% of its CPU)."""
    table = AuditChainHead.__table__
    if dialect == "postgresql":
        insert: Any = postgresql.insert
    elif dialect == "sqlite":
        insert = sqlite.insert
    else:
        raise NotImplementedError(f"audit store: unsupported database {dialect!r}")
    return insert(table).on_conflict_do_nothing(index_elements=["topic", "partition"])


_SQLITE_HEADS = text(
    'SELECT topic, "partition", "offset", row_hash FROM audit_chain_heads WHERE topic IN (SELECT value FROM json_each(:topics))'
)

_PG_HEADS = text(
    # the wanted (topic, partition) pairs as two arrays: one cached statement whatever the batch, rows locked in one order
    'SELECT h.topic, h."partition", h."offset", h.row_hash FROM audit_chain_heads AS h '
    "JOIN unnest(CAST(:topics AS VARCHAR[]), CAST(:partitions AS INTEGER[])) AS wanted(topic, p) "
    'ON h.topic = wanted.topic AND h."partition" = wanted.p '
    'ORDER BY h.topic, h."partition" FOR UPDATE OF h'
)


def lock_heads(session: Session, keys: Iterable[PartitionKey], now: datetime) -> dict[PartitionKey, Head]:
    """Create missing heads (offset -1) and read all of ``keys``, locked for this transaction."""
    ordered = sorted(set(keys))
    if not ordered:
        return {}
    dialect = session.get_bind().dialect.name
    session.execute(
        _create_heads(dialect),
        [{"topic": t, "partition": p, "offset": -1, "row_hash": GENESIS, "records": 0, "updated_at": now} for t, p in ordered],
    )
    heads: dict[PartitionKey, Head] = {}
    statements = core(session)
    if dialect == "sqlite":
        # BEGIN IMMEDIATE holds the database's write lock already (there are no row locks): read the heads of
        # the batch's topics with one cached statement (an OR of the wanted keys is compiled anew for every batch)
        wanted = set(ordered)
        for row in statements.execute(_SQLITE_HEADS, {"topics": json.dumps(sorted({t for t, _ in ordered}))}):
            if (row[0], row[1]) in wanted:
                heads[(row[0], row[1])] = Head(row[0], row[1], row[2], row[3])
        return heads
    for start in range(0, len(ordered), _CHUNK):
        chunk = ordered[start : start + _CHUNK]
        rows = statements.execute(_PG_HEADS, {"topics": [t for t, _ in chunk], "partitions": [p for _, p in chunk]})
        for row in rows:
            heads[(row[0], row[1])] = Head(row[0], row[1], row[2], row[3])
    return heads


_PG_FIRST_OCCURRENCES = text(
    # a nested loop over the wanted ids with index lookups, whatever the table's statistics say
    # (with a long IN list, PostgreSQL may prefer a sequential scan of the whole audit log)
    'SELECT r.event_id, r.topic, r.partition, r."offset" '
    "FROM unnest(CAST(:ids AS VARCHAR[])) AS wanted(id) "
    "JOIN audit_records AS r ON r.event_id = wanted.id "
    "WHERE r.first_offset IS NULL ORDER BY r.id"
)


_SQLITE_FIRST_OCCURRENCES = text(
    # the wanted ids as one JSON array parameter: one cached statement whatever the batch
    # (an IN list of bound parameters is rendered anew for every batch); each id is looked up in ix_audit_records_event_id
    'SELECT event_id, topic, "partition", "offset" FROM audit_records '
    "WHERE event_id IN (SELECT value FROM json_each(:ids)) AND first_offset IS NULL ORDER BY id"
)


def _first_occurrences(session: Session, event_ids: Sequence[str]) -> dict[str, tuple[str, int, int]]:
    """For each event id already stored: the coordinates of its first occurrence."""
    found: dict[str, tuple[str, int, int]] = {}
    statements = core(session)
    if session.get_bind().dialect.name == "postgresql":
        for row in statements.execute(_PG_FIRST_OCCURRENCES, {"ids": list(event_ids)}):
            found.setdefault(row[0], (row[1], row[2], row[3]))
        return found
    for row in statements.execute(_SQLITE_FIRST_OCCURRENCES, {"ids": json.dumps(event_ids)}):
        found.setdefault(row[0], (row[1], row[2], row[3]))
    return found


#: the columns of an inserted row, in order (every column but the row id)
INSERT_COLUMNS = tuple(c.name for c in AuditRecord.__table__.columns if c.name != "id")
_ROW_HASH = INSERT_COLUMNS.index("row_hash")


def _row(
    entry: AuditEntry,
    prev_offset: int | None,
    prev_hash: str,
    first: tuple[str, int, int] | None,
    stored_at: Any,
    bind_time: Callable[[datetime | None], Any],
) -> tuple[Any, ...]:
    """One row's values in INSERT_COLUMNS order, in the driver's form (``bind_time``
    formats the event time; ``stored_at`` is bound already)."""
    attrs = entry.attributes
    return (
        *entry[:7],
        headers_to_json(entry.headers),
        *entry[8:13],
        *attrs[:6],
        bind_time(attrs.event_time),
        attrs.certificate_id,
        attrs.request_id,
        *(first or _NO_FIRST),
        prev_offset,
        prev_hash,
        row_hash(prev_hash, prev_offset, entry.content_hash),
        stored_at,
    )


_NO_FIRST = (None, None, None)


_HEADS = AuditChainHead.__table__
_MOVE_HEADS = (
    update(_HEADS)
    .where(_HEADS.c.topic == bindparam("b_topic"), _HEADS.c.partition == bindparam("b_partition"))
    .values(offset=bindparam("offset"), row_hash=bindparam("row_hash"), records=_HEADS.c.records + bindparam("added"),
            updated_at=bindparam("updated_at"))
)


def inventory_accepts(topics: Topics, topic: str, message_type: str) -> bool:
    """Whether an inventory event of ``message_type`` that arrived on ``topic`` may change the
    inventory: on its producer's events topic, or on the events topic before decision 0016."""
    cls = CATALOG.get(message_type)
    return cls is not None and (topic == topics.legacy_events or topics.may_arrive_on(cls, topic))


def write_batch(session: Session, entries: Sequence[AuditEntry], *, now: datetime, inventory_topics: Topics | None) -> BatchResult:
    """Store ``entries`` (one fetched batch) in the caller's transaction; see the module docstring.
    ``inventory_topics``: the installation's topics (None: no inventory)."""
    result = BatchResult()
    by_partition: dict[PartitionKey, dict[int, AuditEntry]] = defaultdict(dict)
    for entry in entries:
        by_partition[(entry.topic, entry.partition)].setdefault(entry.offset, entry)
    result.redelivered += len(entries) - sum(len(v) for v in by_partition.values())
    heads = lock_heads(session, by_partition, now)

    new: list[tuple[PartitionKey, list[AuditEntry]]] = []
    for key in sorted(by_partition):
        head = heads[key]
        ordered = [by_partition[key][o] for o in sorted(by_partition[key]) if o > head.offset]
        result.redelivered += len(by_partition[key]) - len(ordered)
        if ordered:
            new.append((key, ordered))

    event_ids = sorted({e.attributes.event_id for _, group in new for e in group if e.attributes.event_id})
    firsts = _first_occurrences(session, event_ids) if event_ids else {}

    bind_time = time_binder(session.get_bind().dialect)
    stored_at = bind_time(now)
    rows: list[tuple[Any, ...]] = []
    head_updates: list[dict[str, Any]] = []
    inventory: list[InventoryEvent] = []
    for key, group in new:
        head = heads[key]
        prev_offset: int | None = head.offset if head.offset >= 0 else None
        prev_hash = head.row_hash
        for entry in group:
            if prev_offset is not None and entry.offset > prev_offset + 1:
                result.gaps.append(Gap(entry.topic, entry.partition, prev_offset + 1, entry.offset - 1))
            event_id = entry.attributes.event_id
            first = firsts.get(event_id) if event_id else None
            if event_id and first is None:
                firsts[event_id] = (entry.topic, entry.partition, entry.offset)
            row = _row(entry, prev_offset, prev_hash, first, stored_at, bind_time)
            rows.append(row)
            prev_offset, prev_hash = entry.offset, row[_ROW_HASH]
            if first is not None:
                result.duplicates[entry.topic] += 1
            result.stored_by_type[(entry.topic, entry.type_label)] += 1
            if entry.decode_error is not None:
                result.invalid_by_code[(entry.topic, entry.decode_error)] += 1
            elif first is None and entry.inventory is not None and inventory_topics is not None:
                if inventory_accepts(inventory_topics, entry.topic, entry.type_label):
                    inventory.append(entry.inventory)
                else:
                    result.misrouted[(entry.topic, entry.type_label)] += 1
        assert prev_offset is not None
        result.heads[key] = Head(key[0], key[1], prev_offset, prev_hash)
        head_updates.append(
            {"b_topic": key[0], "b_partition": key[1], "offset": prev_offset, "row_hash": prev_hash, "added": len(group),
             "updated_at": now}
        )

    if rows:
        executemany(session, AuditRecord.__table__, INSERT_COLUMNS, rows, bound=True)
        session.execute(_MOVE_HEADS, head_updates)
        result.stored = len(rows)
    if inventory:
        result.inventory_events = apply_events(session, inventory)
    return result


def store_entries(engine: Engine, entries: Sequence[AuditEntry], *, inventory_topics: Topics | None, now: datetime) -> BatchResult:
    """Store prepared entries in one write transaction (what the live consumer, replay and the benchmark call)."""
    with write_session(engine) as session:
        return write_batch(session, entries, now=now, inventory_topics=inventory_topics)


def store_records(engine: Engine, records: Sequence[RawRecord], *, inventory_topics: Topics | None, now: datetime) -> BatchResult:
    """`prepare` the records (in this thread) and store them in one write transaction."""
    return store_entries(engine, [prepare(r, CATALOG) for r in records], inventory_topics=inventory_topics, now=now)
