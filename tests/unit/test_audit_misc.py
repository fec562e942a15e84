"""Small pure parts of the auditor: SQLite time binding, replay bounds, the
offsets verify looks up in Kafka, the inventory's derived status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from services.auditor.inventory import effective_status
from services.auditor.replay import Bound, ReplayError, parse_bound
from services.auditor.sql import sqlite_utc
from services.auditor.verify import offsets_without_rows
from services.common.db_schema import AuditRecord


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
