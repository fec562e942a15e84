"""Small pure parts of the auditor: SQLite and PostgreSQL time binding, the
bound audit row, the ingest connection settings, replay bounds, the offsets
verify looks up in Kafka, the inventory's derived status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite

from services.auditor.chain import content_hash, row_hash
from services.auditor.records import AuditEntry, EnvelopeAttributes, content_of
from services.auditor.replay import Bound, ReplayError, parse_bound
from services.auditor.sql import (
    INGEST_CACHE_KIB,
    INGEST_WAL_AUTOCHECKPOINT_PAGES,
    sqlite_utc,
    time_binder,
    tune_for_ingest,
    utc_aware,
)
from services.auditor.store import INSERT_COLUMNS, _row
from services.auditor.verify import offsets_without_rows
from services.common.db import make_engine, write_session
from services.common.db_schema import AuditRecord
from services.common.inventory_read import effective_status
from services.common.settings import DatabaseSettings


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 1, 1, 9, 0, tzinfo=UTC),
        datetime(1, 1, 1, 0, 0, tzinfo=UTC),
        datetime(2026, 5, 1, 9, 0, 1, 123, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_sqlite_time_binding_is_sqlalchemys(value: datetime) -> None:
    dialect = sqlite.dialect()
    column_type = AuditRecord.__table__.c.event_time.type
    assert sqlite_utc(value) == column_type.dialect_impl(dialect).bind_processor(dialect)(value)


def test_sqlite_time_binding_refuses_naive_times() -> None:
    with pytest.raises(ValueError, match="naive"):
        sqlite_utc(datetime(2026, 1, 1, 9, 0, 7))


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 1, 1, 9, 0, tzinfo=UTC),
        datetime(2026, 5, 1, 9, 0, 1, 123, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 5, 1, 9, 0, 1, 123, tzinfo=timezone(timedelta(0), "Z")),
    ],
)
def test_postgresql_time_binding_is_sqlalchemys(value: datetime) -> None:
    dialect = postgresql.psycopg.dialect()
    column_type = AuditRecord.__table__.c.event_time.type
    expected = column_type.dialect_impl(dialect).bind_processor(dialect)(value)
    assert utc_aware(value) == expected
    assert utc_aware(value).utcoffset() == timedelta(0)
    assert time_binder(dialect) is utc_aware
    assert time_binder(sqlite.dialect()) is sqlite_utc
    with pytest.raises(ValueError, match="naive"):
        utc_aware(datetime(2026, 1, 1, 9, 0, 7))


def test_a_bound_audit_row_has_every_column_in_order() -> None:
    attributes = EnvelopeAttributes(
        event_id="e-1", event_type="io.certrail.x.v1", source="/s", subject="c-1", correlation_id="r-1",
        causation_id="r-1", event_time=datetime(2026, 1, 1, 9, 0, tzinfo=UTC), certificate_id="c-1", request_id="r-1",
    )
    entry = AuditEntry(
        topic="t", partition=2, offset=7, timestamp_ms=1, timestamp_type=0, key=b"k", value=b"v",
        headers=(("h", b"1"),), private_keys_removed=0, original_sha256=None, original_size=None, decode_error=None,
        decode_reason=None, attributes=attributes, type_label="io.certrail.x.v1", content_hash=b"\x01" * 32,
        inventory=None,
    )
    entry = entry._replace(content_hash=content_hash(content_of(entry)))
    row = dict(zip(INSERT_COLUMNS, _row(entry, 6, "ab" * 32, ("t", 1, 3), "stored", sqlite_utc), strict=True))
    assert row == {
        "topic": "t", "partition": 2, "offset": 7, "timestamp_ms": 1, "timestamp_type": 0, "key": b"k", "value": b"v",
        "headers": '[["h", "MQ=="]]', "private_keys_removed": 0, "original_sha256": None, "original_size": None,
        "decode_error": None, "decode_reason": None, "event_id": "e-1", "event_type": "io.certrail.x.v1", "source": "/s",
        "subject": "c-1", "correlation_id": "r-1", "causation_id": "r-1", "event_time": "2026-01-01 09:00:00.000000",
        "certificate_id": "c-1", "request_id": "r-1", "first_topic": "t", "first_partition": 1, "first_offset": 3,
        "prev_offset": 6, "prev_hash": "ab" * 32, "row_hash": row_hash("ab" * 32, 6, entry.content_hash),
        "stored_at": "stored",
    }
    first_row = dict(zip(INSERT_COLUMNS, _row(entry, None, "0" * 64, None, "stored", sqlite_utc), strict=True))
    assert (first_row["first_topic"], first_row["first_partition"], first_row["first_offset"]) == (None, None, None)


def test_the_auditors_sqlite_connections_get_the_ingest_settings(tmp_path: Path) -> None:
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'audit.db'}"))
    tune_for_ingest(engine)
    try:
        with write_session(engine) as session:
            settings = {
                name: session.execute(text(f"PRAGMA {name}")).scalar()
                for name in ("synchronous", "wal_autocheckpoint", "cache_size", "journal_mode")
            }
    finally:
        engine.dispose()
    assert settings == {
        "synchronous": 1,  # NORMAL, as services/common/db.py sets it
        "wal_autocheckpoint": INGEST_WAL_AUTOCHECKPOINT_PAGES,
        "cache_size": -INGEST_CACHE_KIB,
        "journal_mode": "wal",
    }


@pytest.mark.parametrize(
    ("text", "bound"),
    [
        ("0", Bound(offset=0)),
        (" 1234 ", Bound(offset=1234)),
        ("2026-01-15T10:00:00Z", Bound(time=datetime(2026, 1, 15, 10, 0, tzinfo=UTC))),
        ("2026-01-15T15:30:00+05:30", Bound(time=datetime(2026, 1, 15, 10, 0, tzinfo=UTC))),
    ],
)
def test_replay_bounds(text: str, bound: Bound) -> None:
    assert parse_bound(text) == bound


@pytest.mark.parametrize("text", ["-1", "yesterday", "2026-01-15T10:00:00", "12a"])
def test_bad_replay_bounds_are_refused(text: str) -> None:
    with pytest.raises(ReplayError):
        parse_bound(text)


@pytest.mark.parametrize(
    ("first", "last", "holes", "begin", "upto", "expected"),
    [
        (None, None, [], 0, 0, []),  # nothing in Kafka, nothing stored
        (None, None, [], 3, 10, [(3, 10)]),  # nothing stored below the committed offset
        (0, 9, [], 0, 10, []),  # complete
        (0, 9, [(4, 4)], 0, 10, [(4, 5)]),  # a hole
        (2, 9, [], 0, 10, [(0, 2)]),  # rows missing at the start
        (0, 7, [], 0, 10, [(8, 10)]),  # rows missing at the end, below the committed offset
        (0, 9, [(2, 5)], 4, 10, [(4, 6)]),  # retention removed the start of the hole
        (5, 9, [], 0, 20, [(0, 5), (10, 20)]),
    ],
)
def test_offsets_verify_looks_up_in_kafka(
    first: int | None, last: int | None, holes: list[tuple[int, int]], begin: int, upto: int,
    expected: list[tuple[int, int]],
) -> None:
    assert offsets_without_rows(first, last, holes, begin, upto) == expected


def test_an_active_certificate_past_not_after_is_expired() -> None:
    now = datetime(2026, 1, 15, tzinfo=UTC)
    assert effective_status("active", now - timedelta(seconds=1), now) == "expired"
    assert effective_status("active", now + timedelta(days=1), now) == "active"
    assert effective_status("revoked", now - timedelta(days=1), now) == "revoked"
    assert effective_status("pending", None, now) == "pending"
