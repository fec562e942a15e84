"""`db.core`'s prepared statements (services/common/runtime/prepared.py) return what SQLAlchemy's
``Connection.execute`` returns for the same statement, on SQLite and on PostgreSQL: typed values read back
(aware UTC datetimes, booleans, bytes, NULLs), rowcounts, RETURNING and upserts; and what they cannot run
themselves (executemany, an IN list, a default computed in Python) goes through SQLAlchemy unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.common.db import core, make_engine, write_session
from services.common.db_schema import UTCDateTime
from services.common.runtime import prepared
from services.common.settings import DatabaseSettings

NOW = datetime(2026, 12, 7, 12, 30, 15, 123456, tzinfo=UTC)
_META = MetaData()
_THINGS = Table(
    "prepared_things", _META,
    Column("id", String(40), primary_key=True),
    Column("n", Integer, nullable=False),
    Column("flag", Boolean, nullable=True),
    Column("at", UTCDateTime, nullable=True),
    Column("blob", LargeBinary, nullable=True),
    Column("note", Text, nullable=True),
    Column("stamp", String(20), nullable=False, default=lambda: "python-default"),
)
_BY_ID = select(_THINGS.c.id, _THINGS.c.n, _THINGS.c.flag, _THINGS.c.at, _THINGS.c.blob, _THINGS.c.note).where(
    _THINGS.c.id == bindparam("id"))
_LITERAL = select(_THINGS.c.id).where(_THINGS.c.note == "kept", _THINGS.c.n > bindparam("floor")).order_by(_THINGS.c.id)
_BUMP = update(_THINGS).where(_THINGS.c.n >= bindparam("floor")).values(n=_THINGS.c.n + 1, at=bindparam("when"))
_DROP = delete(_THINGS).where(_THINGS.c.id == bindparam("id"))
_IN = select(_THINGS.c.id).where(_THINGS.c.id.in_(bindparam("ids", expanding=True))).order_by(_THINGS.c.id)
_ROW = {"n": 1, "flag": None, "at": None, "blob": None, "note": None, "stamp": "given"}


@pytest.fixture
def db(db_settings: DatabaseSettings) -> Iterator[Engine]:
    engine = make_engine(db_settings)
    _META.create_all(engine)
    yield engine
    _META.drop_all(engine)
    engine.dispose()


def _both(engine: Engine, statement: Any, parameters: Any = None) -> tuple[Any, Any]:
    """The statement through the prepared path and through SQLAlchemy, each in a transaction rolled back."""
    answers = []
    for prepared_path in (True, False):
        with Session(engine) as session, session.begin():
            if prepared_path:
                result = core(session).execute(statement, parameters)
                answers.append((result.all(), result.rowcount))
            else:
                result = session.connection().execute(statement, parameters)
                answers.append(([tuple(r) for r in result] if result.returns_rows else [], result.rowcount))
            session.rollback()
    return answers[0], answers[1]


def _fill(engine: Engine) -> None:
    with write_session(engine) as session:
        c = core(session)
        c.execute(insert(_THINGS), {**_ROW, "id": "a", "n": 1, "flag": True, "at": NOW, "blob": b"\x00\xff", "note": "kept"})
        c.execute(insert(_THINGS), {**_ROW, "id": "b", "n": 5, "flag": False, "note": "kept",
                                     "at": NOW.astimezone(timezone(timedelta(hours=5, minutes=30)))})
        c.execute(insert(_THINGS), {**_ROW, "id": "c", "n": 9})


def _planned(engine: Engine, statement: Any, keys: tuple[str, ...]) -> bool:
    return prepared._plan(statement, keys, engine.dialect) is not None


def test_reads_return_the_values_sqlalchemy_returns(db: Engine) -> None:
    _fill(db)
    for id_ in ("a", "b", "c", "missing"):
        mine, theirs = _both(db, _BY_ID, {"id": id_})
        assert [tuple(r) for r in mine[0]] == theirs[0]
    with write_session(db) as session:
        row = core(session).execute(_BY_ID, {"id": "b"}).one()
        assert (row.id, row.n, row.flag, row.note) == ("b", 5, False, "kept")
        assert row.at == NOW and row.at.tzinfo is not None and row.at.utcoffset() == timedelta(0)
        assert row._mapping["blob"] is None and bytes(core(session).execute(_BY_ID, {"id": "a"}).one().blob) == b"\x00\xff"
        assert core(session).execute(_LITERAL, {"floor": 0}).scalars() == ["a", "b"]
        assert core(session).execute(_BY_ID, {"id": "none"}).scalar() is None
    assert _planned(db, _BY_ID, ("id",)) and _planned(db, _LITERAL, ("floor",))


def test_writes_count_their_rows_as_sqlalchemy_does(db: Engine) -> None:
    _fill(db)
    mine, theirs = _both(db, _BUMP, {"floor": 5, "when": NOW})
    assert mine[1] == theirs[1] == 2
    mine, theirs = _both(db, _DROP, {"id": "nobody"})
    assert mine[1] == theirs[1] == 0
    with write_session(db) as session:
        assert core(session).execute(_BUMP, {"floor": 5, "when": NOW + timedelta(1)}).rowcount == 2
        assert core(session).execute(_DROP, {"id": "a"}).rowcount == 1
    with write_session(db) as session:
        rows = {r.id: (r.n, r.at) for r in core(session).execute(select(_THINGS.c.id, _THINGS.c.n, _THINGS.c.at))}
    assert rows == {"b": (6, NOW + timedelta(1)), "c": (10, NOW + timedelta(1))}
    assert _planned(db, _BUMP, ("floor", "when")) and _planned(db, _DROP, ("id",))


def test_upsert_returning_is_prepared_and_returns_the_row(db: Engine) -> None:
    dialect = postgresql if db.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(_THINGS)
    statement = statement.on_conflict_do_update(index_elements=["id"], set_={"n": _THINGS.c.n + statement.excluded.n}
                                                ).returning(_THINGS.c.n, _THINGS.c.at)
    values = {**_ROW, "id": "u", "n": 2, "at": NOW}
    with write_session(db) as session:
        first = core(session).execute(statement, values).one()
        again = core(session).execute(statement, values).one()
    assert (first.n, first.at, again.n) == (2, NOW, 4)
    assert _planned(db, statement, tuple(sorted(values)))


_TEXT_TYPED = text("SELECT id, n, at FROM prepared_things WHERE n >= :floor ORDER BY id").columns(
    _THINGS.c.id, _THINGS.c.n, _THINGS.c.at)
_TEXT_RAW = text("SELECT id AS name, n FROM prepared_things WHERE note = :note ORDER BY id")
_TEXT_WRITE = text("UPDATE prepared_things SET n = n * 10 WHERE note = :note")


def test_textual_statements_are_prepared_and_answer_as_sqlalchemy_does(db: Engine) -> None:
    _fill(db)
    mine, theirs = _both(db, _TEXT_TYPED, {"floor": 5})  # columns by position, their result processors applied
    assert [tuple(r) for r in mine[0]] == theirs[0] == [("b", 5, NOW), ("c", 9, None)]
    mine, theirs = _both(db, _TEXT_RAW, {"note": "kept"})  # no columns: the driver's values, named by the cursor
    assert [tuple(r) for r in mine[0]] == theirs[0] == [("a", 1), ("b", 5)]
    mine, theirs = _both(db, _TEXT_WRITE, {"note": "kept"})
    assert mine[1] == theirs[1] == 2
    with write_session(db) as session:
        row = core(session).execute(_TEXT_RAW, {"note": "kept"}).first()
        assert row is not None and (row.name, row._mapping["n"]) == ("a", 1)
        assert core(session).execute(_TEXT_TYPED, {"floor": 9}).one().at is None
    assert all(_planned(db, s, k) for s, k in ((_TEXT_TYPED, ("floor",)), (_TEXT_RAW, ("note",)), (_TEXT_WRITE, ("note",))))


def test_what_it_cannot_prepare_goes_through_sqlalchemy(db: Engine) -> None:
    _fill(db)
    with write_session(db) as session:
        c = core(session)
        c.execute(insert(_THINGS), [{**_ROW, "id": "m1"}, {**_ROW, "id": "m2"}])  # executemany
        assert c.execute(_IN, {"ids": ["a", "m2", "zz"]}).scalars() == ["a", "m2"]  # an expanding IN
        c.execute(insert(_THINGS), {k: v for k, v in {**_ROW, "id": "d"}.items() if k != "stamp"})  # a Python default
        assert c.execute(select(_THINGS.c.stamp).where(_THINGS.c.id == "d")).scalar_one() == "python-default"
        assert c.execute(select(_THINGS.c.stamp).where(_THINGS.c.id == "m1")).scalar_one() == "given"
    assert not _planned(db, _IN, ("ids",))
    assert not _planned(db, insert(_THINGS), tuple(sorted(k for k in {**_ROW, "id": "d"} if k != "stamp")))


def test_a_watched_engine_sees_every_statement(db: Engine) -> None:
    seen: list[str] = []

    def watch(conn: Any, cursor: Any, statement: str, *args: Any) -> None:  # noqa: ARG001
        seen.append(statement)

    event.listen(db, "before_cursor_execute", watch)
    try:
        with write_session(db) as session:
            core(session).execute(_BY_ID, {"id": "a"})
    finally:
        event.remove(db, "before_cursor_execute", watch)
    assert any("prepared_things" in statement for statement in seen)
    seen.clear()
    with write_session(db) as session:
        core(session).execute(_BY_ID, {"id": "a"})
    assert seen == []
