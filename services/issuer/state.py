"""The issuer's durable state: one `IssuerOperation` row per issuance or revocation.

The exactly-once protocol (DESIGN.md "Exactly-once effect", docs/issuer.md):

1. `begin_attempt` writes the intent before emCA is called: the row exists, ``attempts`` + 1,
   ``uncertain`` set (this call may reach emCA). It returns whether an earlier attempt was left
   uncertain (a crash, a timeout after sending): on a dialect without applicationId dedupe,
   that is the POSSIBLE_DUPLICATE case.
2. `attempt_unsent` clears ``uncertain`` when emCA certainly did not act (connection refused,
   429, an answered refusal).
3. `record_outcome` stores the exact records to publish (and the new state) in one transaction,
   before anything is published; a redelivered command finds them (with `begin_attempt`, which
   leaves a settled row as it is, or with `load`) and re-publishes the same bytes.

Each step, ``*_in(conn, ...)``, runs inside a transaction its caller holds: the issuer's
`services.common.runtime.writer.StateWriter` runs the steps of all commands in flight in one transaction (a
group commit). They are SQLAlchemy Core statements on the ``issuer_operations`` table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Boolean, Connection, Engine, Insert, RowMapping, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from services.common.consumer import Outbound
from services.common.db import read_session, write_session
from services.common.db_schema import IssuerOperation
from services.common.runtime.prepared import prepared


class OpState(StrEnum):
    SUBMITTING = "submitting"  # intent recorded, no outcome yet
    PENDING = "pending"  # emCA holds it for manual approval; polled
    ISSUED = "issued"
    FAILED = "failed"
    REVOKED = "revoked"
    REVOCATION_FAILED = "revocation_failed"


FINAL_STATES = frozenset({OpState.ISSUED, OpState.FAILED, OpState.REVOKED, OpState.REVOCATION_FAILED})


@dataclass(frozen=True)
class StoredRecord:
    """A record to publish, exactly as first published (value = the encoded CloudEvent). ``type`` is the event's
    type when it is known without parsing ``value`` (not stored: a record read back from storage has None)."""

    topic: str
    key: str | None
    value: bytes
    type: str | None = field(default=None, compare=False)

    @classmethod
    def of(cls, outbound: Outbound) -> StoredRecord:
        return cls(outbound.topic, outbound.key, outbound.value(), outbound.event.type)


@dataclass(frozen=True)
class Operation:
    op_key: str
    kind: str
    command_id: str
    certificate_id: str
    request_id: str
    connector: str
    topic: str
    partition: int
    state: OpState
    uncertain: bool
    attempts: int
    command: str
    ca_request_id: str | None
    serial: str | None
    possible_duplicate: bool
    error_code: str | None
    outcome: tuple[StoredRecord, ...]
    next_poll_at: datetime | None
    poll_attempts: int
    created_at: datetime
    outcome_at: datetime | None

    @property
    def settled(self) -> bool:
        return self.state in FINAL_STATES


def _encode_outcome(records: Sequence[StoredRecord]) -> str:
    return json.dumps([{"topic": r.topic, "key": r.key, "value": r.value.decode("utf-8")} for r in records])


def _decode_outcome(text: str | None) -> tuple[StoredRecord, ...]:
    if not text:
        return ()
    return tuple(StoredRecord(item["topic"], item["key"], item["value"].encode("utf-8")) for item in json.loads(text))


#: the stored form of records to publish, shared with the revocation checks (services/issuer/revocation/store.py)
encode_outcome, decode_outcome = _encode_outcome, _decode_outcome

_TABLE = IssuerOperation.__table__
_KEY = _TABLE.c.op_key

# Statements are built once: building one per call (``.values(dict)``, ``where(...)``) and computing its
# cache key cost more of the issuer's CPU than running it (bench/issuer_state_steps.py). Values come as
# execution parameters; the WHERE binds are named ``k_*`` (a bind may not share a column's name).
_SELECT = select(_TABLE).where(_KEY == bindparam("k_op_key"))
_SELECT_FOR_UPDATE = _SELECT.with_for_update()
_INSERT = insert(_TABLE)
# The first attempt's intent is one statement: the row is inserted unless it exists (then it is read and updated).
# (RETURNING says whether it was: psycopg reports no rowcount for it.) One per supported database.
_INSERT_NEW: dict[str, Insert] = {
    "sqlite": sqlite.insert(_TABLE).on_conflict_do_nothing(index_elements=[_KEY]).returning(_KEY),
    "postgresql": postgresql.insert(_TABLE).on_conflict_do_nothing(index_elements=[_KEY]).returning(_KEY),
}
_UPDATE = update(_TABLE).where(_KEY == bindparam("k_op_key"))
_UNSENT = update(_TABLE).where(_KEY == bindparam("k_op_key"), _TABLE.c.state == OpState.SUBMITTING.value).values(
    uncertain=False, updated_at=bindparam("k_now"))
_OUTCOME = (
    update(_TABLE)
    .where(_KEY == bindparam("k_op_key"))
    .values(
        state=bindparam("k_state"), outcome=bindparam("k_outcome"), uncertain=False,
        serial=func.coalesce(bindparam("k_serial", type_=_TABLE.c.serial.type), _TABLE.c.serial),
        error_code=bindparam("k_error_code", type_=_TABLE.c.error_code.type),
        possible_duplicate=or_(_TABLE.c.possible_duplicate, bindparam("k_possible_duplicate", type_=Boolean())),
        ca_request_id=func.coalesce(bindparam("k_ca_request_id", type_=_TABLE.c.ca_request_id.type),
                                    _TABLE.c.ca_request_id),
        next_poll_at=bindparam("k_next_poll_at", type_=_TABLE.c.next_poll_at.type),
        updated_at=bindparam("k_now", type_=_TABLE.c.updated_at.type),
        outcome_at=bindparam("k_now", type_=_TABLE.c.outcome_at.type),
    )
)


def _operation(row: Mapping[str, Any]) -> Operation:
    return Operation(
        op_key=row["op_key"], kind=row["kind"], command_id=row["command_id"], certificate_id=row["certificate_id"],
        request_id=row["request_id"], connector=row["connector"], topic=row["topic"], partition=row["partition"],
        state=OpState(row["state"]), uncertain=bool(row["uncertain"]), attempts=row["attempts"], command=row["command"],
        ca_request_id=row["ca_request_id"], serial=row["serial"], possible_duplicate=bool(row["possible_duplicate"]),
        error_code=row["error_code"], outcome=_decode_outcome(row["outcome"]), next_poll_at=row["next_poll_at"],
        poll_attempts=row["poll_attempts"], created_at=row["created_at"], outcome_at=row["outcome_at"],
    )


@dataclass(frozen=True)
class NewOperation:
    """What `begin_attempt` needs to create the row on the first attempt."""

    op_key: str
    kind: str
    command_id: str
    certificate_id: str
    request_id: str
    connector: str
    topic: str
    partition: int
    command: str


# -- the steps, each inside a transaction its caller holds (Core statements; `writer.StateWriter`
#    runs the steps of every command in flight in one transaction) -----------------------------------


def _row(conn: Connection, op_key: str, *, for_update: bool = False) -> RowMapping | None:
    return conn.execute(_SELECT_FOR_UPDATE if for_update else _SELECT, {"k_op_key": op_key}).mappings().first()


def _insert(conn: Connection, values: dict[str, Any]) -> Operation:
    conn.execute(_INSERT, values)
    return _operation(values)


def _new_row(new: NewOperation, now: datetime, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "op_key": new.op_key, "kind": new.kind, "command_id": new.command_id, "certificate_id": new.certificate_id,
        "request_id": new.request_id, "connector": new.connector, "topic": new.topic, "partition": new.partition,
        "state": OpState.SUBMITTING.value, "uncertain": True, "attempts": 1, "command": new.command,
        "ca_request_id": None, "serial": None, "possible_duplicate": False, "error_code": None, "outcome": None,
        "next_poll_at": None, "poll_attempts": 0, "created_at": now, "updated_at": now, "outcome_at": None,
    }
    row.update(values)
    return row


def _update(conn: Connection, row: RowMapping, values: dict[str, Any]) -> Operation:
    conn.execute(_UPDATE, {"k_op_key": row["op_key"], **values})
    merged = dict(row)
    merged.update(values)
    return _operation(merged)


def load_in(conn: Connection, op_key: str) -> Operation | None:
    row = _row(conn, op_key)
    return None if row is None else _operation(row)


def begin_attempt_in(conn: Connection, new: NewOperation, now: datetime) -> tuple[Operation, bool]:
    """Record the intent (the row, attempts + 1, uncertain). Returns the operation and whether an
    earlier attempt had been left uncertain. A settled or pending row is returned unchanged."""
    values = _new_row(new, now)
    if prepared(conn).execute(_INSERT_NEW[conn.dialect.name], values).first() is not None:  # the first attempt: one statement
        return _operation(values), False
    row = _row(conn, new.op_key, for_update=True)  # it exists: the insert did nothing
    assert row is not None
    if row["state"] != OpState.SUBMITTING.value:
        return _operation(row), False
    values = {"uncertain": True, "attempts": row["attempts"] + 1, "topic": new.topic, "partition": new.partition,
              "updated_at": now}
    return _update(conn, row, values), bool(row["uncertain"])


def attempt_unsent_in(conn: Connection, op_key: str, now: datetime) -> None:
    """emCA certainly did not act on the last attempt: it is no longer uncertain."""
    conn.execute(_UNSENT, {"k_op_key": op_key, "k_now": now})


def record_outcome_in(
    conn: Connection,
    op_key: str,
    state: OpState,
    records: Sequence[StoredRecord],
    now: datetime,
    *,
    serial: str | None = None,
    error_code: str | None = None,
    possible_duplicate: bool = False,
    ca_request_id: str | None = None,
    next_poll_at: datetime | None = None,
    append: bool = False,
) -> None:
    """Store the outcome and the records to publish (exactly ``records``) before they are published; raises
    LookupError if there is no such operation. ``append`` keeps the records stored before (a pending approval's
    IssuancePending, then its final event). An earlier serial and emCA request id stay unless given; a possible
    duplicate stays reported."""
    if not append:  # one statement, nothing read back: the caller publishes the records it gave
        updated = prepared(conn).execute(_OUTCOME, {
            "k_op_key": op_key, "k_state": state.value, "k_outcome": _encode_outcome(records), "k_serial": serial,
            "k_error_code": error_code, "k_possible_duplicate": possible_duplicate, "k_ca_request_id": ca_request_id,
            "k_next_poll_at": next_poll_at, "k_now": now,
        })
        if updated.rowcount != 1:
            raise LookupError(f"no issuer operation {op_key!r}")
        return
    row = _row(conn, op_key, for_update=True)
    if row is None:
        raise LookupError(f"no issuer operation {op_key!r}")
    stored = [*_decode_outcome(row["outcome"]), *records]
    values = {
        "state": state.value, "outcome": _encode_outcome(stored), "uncertain": False,
        "serial": serial if serial is not None else row["serial"], "error_code": error_code,
        "possible_duplicate": possible_duplicate or row["possible_duplicate"],
        "ca_request_id": ca_request_id if ca_request_id is not None else row["ca_request_id"],
        "next_poll_at": next_poll_at, "updated_at": now, "outcome_at": now,
    }
    conn.execute(_UPDATE, {"k_op_key": op_key, **values})


def record_settled_without_attempt_in(
    conn: Connection, new: NewOperation, state: OpState, records: Sequence[StoredRecord], now: datetime, *, error_code: str
) -> Operation:
    """An outcome reached without calling emCA (deadline passed, unknown connector): row and outcome at once."""
    row = _row(conn, new.op_key, for_update=True)
    if row is not None and row["state"] != OpState.SUBMITTING.value:
        return _operation(row)
    settled = {"state": state.value, "uncertain": False, "error_code": error_code, "outcome": _encode_outcome(records),
               "updated_at": now, "outcome_at": now}
    if row is None:
        return _insert(conn, _new_row(new, now, attempts=0, **settled))
    return _update(conn, row, settled)


def due_pending(engine: Engine, partitions: Iterable[tuple[str, int]], now: datetime, limit: int = 100) -> list[Operation]:
    """Pending approvals on these partitions whose next poll is due, oldest first."""
    wanted = set(partitions)
    if not wanted:
        return []
    topics = sorted({topic for topic, _ in wanted})
    with read_session(engine) as session:
        rows = session.connection().execute(
            select(_TABLE)
            .where(_TABLE.c.state == OpState.PENDING.value, _TABLE.c.topic.in_(topics), _TABLE.c.next_poll_at <= now)
            .order_by(_TABLE.c.next_poll_at)
            .limit(limit * 4)
        ).mappings().all()
        return [_operation(r) for r in rows if (r["topic"], r["partition"]) in wanted][:limit]


def schedule_poll(engine: Engine, op_key: str, next_poll_at: datetime, now: datetime) -> None:
    with write_session(engine) as session:
        session.execute(
            update(IssuerOperation)
            .where(IssuerOperation.op_key == op_key, IssuerOperation.state == OpState.PENDING.value)
            .values(next_poll_at=next_poll_at, poll_attempts=IssuerOperation.poll_attempts + 1, updated_at=now)
        )


def count_pending(engine: Engine) -> int:
    """Pending approvals (served by the (state, topic, partition) index, not a scan)."""
    with read_session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(IssuerOperation)
                                  .where(IssuerOperation.state == OpState.PENDING.value)) or 0)
