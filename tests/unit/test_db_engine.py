"""make_engine: SQLite pragmas and transaction modes, URL handling, no password leaks."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from services.common.db import (
    make_engine,
    normalise_url,
    read_session,
    safe_url,
    write_in_batches,
    write_session,
)
from services.common.settings import DatabaseSettings

PASSWORD = "s3cr3t-Pa55"


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "certrail.db"


@pytest.fixture
def engine(db_file: Path) -> Iterator[Engine]:
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{db_file}", busy_timeout_ms=4321))
    with write_session(engine) as session:
        session.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"))
    yield engine
    engine.dispose()


def _other_engine(db_file: Path, busy_timeout_ms: int) -> Engine:
    """A second engine on the same file, as another process would have."""
    return make_engine(DatabaseSettings(url=f"sqlite:///{db_file}", busy_timeout_ms=busy_timeout_ms))


def test_sqlite_parent_directory_is_created(engine: Engine, db_file: Path) -> None:
    assert db_file.is_file()


@pytest.mark.parametrize(
    ("pragma", "expected"),
    [
        ("journal_mode", "wal"),
        ("busy_timeout", 4321),
        ("foreign_keys", 1),
        ("synchronous", 1),  # NORMAL
    ],
)
def test_sqlite_pragmas_are_in_effect(engine: Engine, pragma: str, expected: object) -> None:
    with read_session(engine) as session:
        assert session.execute(text(f"PRAGMA {pragma}")).scalar_one() == expected
    with write_session(engine) as session:
        assert session.execute(text(f"PRAGMA {pragma}")).scalar_one() == expected


@pytest.fixture
def fresh_file_locked_by_another_writer(db_file: Path) -> Iterator[sqlite3.Connection]:
    """A new rollback-journal file on which another connection holds the write lock.

    SQLite fails the switch to WAL at once in this state, without its busy handler.
    """
    db_file.parent.mkdir(parents=True)
    other = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN IMMEDIATE")
    yield other
    if other.in_transaction:
        other.execute("COMMIT")
    other.close()


def test_sqlite_switch_to_wal_waits_for_a_writer(
    db_file: Path, fresh_file_locked_by_another_writer: sqlite3.Connection
) -> None:
    timer = threading.Timer(0.3, fresh_file_locked_by_another_writer.execute, ["COMMIT"])
    started = time.monotonic()
    timer.start()
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{db_file}", busy_timeout_ms=5000))
    try:
        with read_session(engine) as session:
            assert session.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert time.monotonic() - started >= 0.25
    finally:
        timer.join()
        engine.dispose()


def test_sqlite_switch_to_wal_gives_up_after_the_busy_timeout(
    db_file: Path, fresh_file_locked_by_another_writer: sqlite3.Connection
) -> None:
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{db_file}", busy_timeout_ms=200))
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            with engine.connect():
                pass
        assert 0.1 <= time.monotonic() - started < 2
    finally:
        engine.dispose()


def test_sqlite_foreign_keys_are_enforced(engine: Engine) -> None:
    with write_session(engine) as session:
        session.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        session.execute(text("CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id))"))
    with pytest.raises(IntegrityError, match="FOREIGN KEY constraint failed"):
        with write_session(engine) as session:
            session.execute(text("INSERT INTO child (id, parent_id) VALUES (1, 42)"))


def test_sqlite_driver_does_not_control_transactions(engine: Engine) -> None:
    with engine.connect() as conn:
        assert conn.connection.driver_connection.isolation_level is None


def test_write_transaction_takes_the_write_lock_at_begin(engine: Engine, db_file: Path) -> None:
    other = _other_engine(db_file, busy_timeout_ms=200)
    try:
        with write_session(engine) as holder:
            # A write transaction that has only read so far already holds the lock.
            assert holder.execute(text("SELECT count(*) FROM items")).scalar_one() == 0
            started = time.monotonic()
            with pytest.raises(OperationalError, match="database is locked"):
                with write_session(other) as contender:
                    contender.execute(text("SELECT 1"))
            assert time.monotonic() - started >= 0.15  # it waited for the busy timeout
            # Readers are not blocked by the writer and see the last commit.
            holder.execute(text("INSERT INTO items (name) VALUES ('uncommitted')"))
            with read_session(other) as reader:
                assert reader.execute(text("SELECT count(*) FROM items")).scalar_one() == 0
        with write_session(other) as contender:
            contender.execute(text("INSERT INTO items (name) VALUES ('second')"))
        with read_session(other) as reader:
            names = reader.execute(text("SELECT name FROM items ORDER BY id")).scalars().all()
        assert names == ["uncommitted", "second"]
    finally:
        other.dispose()


def test_a_waiting_writer_tries_for_the_lock_every_few_milliseconds(engine: Engine, db_file: Path) -> None:
    """A writer that finds the lock taken tries again every 0.5-5 ms (SQLite's busy handler, off for these tries,
    would sleep up to 100 ms between its own), takes the lock soon after it is released, and leaves the
    connection's busy timeout as configured."""
    holder = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, holder.execute, ["COMMIT"])
    statements: list[str] = []
    try:
        with engine.connect() as conn:
            conn.connection.driver_connection.set_trace_callback(statements.append)
            release.start()
            started = time.monotonic()
            with conn.begin():
                waited = time.monotonic() - started
                conn.execute(text("INSERT INTO items (name) VALUES ('after the wait')"))
            conn.connection.driver_connection.set_trace_callback(None)
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 4321
    finally:
        release.join()
        holder.close()
    tries = statements.count("BEGIN IMMEDIATE")
    assert waited >= 0.25 and tries >= 20, (waited, tries)  # one try every few ms while the lock was held
    with read_session(engine) as reader:
        assert reader.execute(text("SELECT name FROM items")).scalars().all() == ["after the wait"]


def test_writers_of_one_process_take_turns(engine: Engine) -> None:
    """While one thread of a process holds a write transaction, another thread of it waits for its turn without
    trying for SQLite's lock, and gets the lock soon after the first commits. A transaction that fails, and a
    connection given back in the middle of one, end their turn."""
    with pytest.raises(ValueError, match="boom"), write_session(engine) as session:
        session.execute(text("INSERT INTO items (name) VALUES ('rolled back')"))
        raise ValueError("boom")
    conn = engine.connect()
    conn.begin()
    conn.execute(text("INSERT INTO items (name) VALUES ('abandoned')"))
    conn.close()  # back to the pool without commit or rollback: reset

    tries: list[float] = []  # when the second thread's connection ran BEGIN IMMEDIATE
    holding, committed = threading.Event(), threading.Event()
    released_at: list[float] = []

    def first() -> None:
        with write_session(engine) as session:
            session.execute(text("INSERT INTO items (name) VALUES ('first')"))
            holding.set()
            time.sleep(0.3)
            released_at.append(time.monotonic())
        committed.set()

    def second() -> None:
        holding.wait(5)
        with engine.connect() as conn:
            conn.connection.driver_connection.set_trace_callback(
                lambda sql: tries.append(time.monotonic()) if sql == "BEGIN IMMEDIATE" else None)
            with conn.begin():
                conn.execute(text("INSERT INTO items (name) VALUES ('second')"))
            conn.connection.driver_connection.set_trace_callback(None)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert committed.is_set() and not any(thread.is_alive() for thread in threads)
    assert tries and all(t >= released_at[0] for t in tries), "tried for SQLite's lock while the turn was taken"
    assert len(tries) <= 10 and tries[-1] - released_at[0] < 0.5  # it tries again within ms, not 100s of ms
    with read_session(engine) as reader:
        assert reader.execute(text("SELECT name FROM items ORDER BY id")).scalars().all() == ["first", "second"]


def test_read_transaction_does_not_take_the_write_lock(engine: Engine, db_file: Path) -> None:
    other = _other_engine(db_file, busy_timeout_ms=200)
    try:
        with read_session(engine) as reader:
            assert reader.execute(text("SELECT count(*) FROM items")).scalar_one() == 0
            with write_session(other) as writer:
                writer.execute(text("INSERT INTO items (name) VALUES ('x')"))
            # Still the snapshot taken when the read transaction began.
            assert reader.execute(text("SELECT count(*) FROM items")).scalar_one() == 0
    finally:
        other.dispose()


def test_read_session_refuses_writes(engine: Engine) -> None:
    with pytest.raises(OperationalError, match="readonly"):
        with read_session(engine) as reader:
            reader.execute(text("INSERT INTO items (name) VALUES ('nope')"))
    # The same pooled connection writes again in a write session.
    with write_session(engine) as writer:
        writer.execute(text("INSERT INTO items (name) VALUES ('yes')"))
    with read_session(engine) as reader:
        assert reader.execute(text("SELECT name FROM items")).scalars().all() == ["yes"]


def test_write_session_rolls_back_on_error(engine: Engine) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with write_session(engine) as session:
            session.execute(text("INSERT INTO items (name) VALUES ('lost')"))
            raise RuntimeError("boom")
    with read_session(engine) as reader:
        assert reader.execute(text("SELECT count(*) FROM items")).scalar_one() == 0


def test_write_in_batches_commits_each_batch(engine: Engine) -> None:
    batches: list[int] = []

    def write(session: Session, batch: Sequence[str]) -> None:
        batches.append(len(batch))
        for name in batch:
            session.execute(text("INSERT INTO items (name) VALUES (:name)"), {"name": name})

    written = write_in_batches(engine, (f"n{i}" for i in range(25)), write, batch_size=10)
    assert written == 25
    assert batches == [10, 10, 5]
    with read_session(engine) as reader:
        assert reader.execute(text("SELECT count(*) FROM items")).scalar_one() == 25


@pytest.mark.parametrize(
    ("url", "expected_driver", "expected_database"),
    [
        ("postgresql://u:p@db.example:5432/certrail", "postgresql+psycopg", "certrail"),
        ("postgres://u:p@db.example:5432/certrail", "postgresql+psycopg", "certrail"),
        ("postgresql+psycopg://u:p@db.example/certrail", "postgresql+psycopg", "certrail"),
        ("sqlite:///var/certrail.db", "sqlite", "var/certrail.db"),
    ],
)
def test_url_normalisation(url: str, expected_driver: str, expected_database: str) -> None:
    normalised = normalise_url(url)
    assert normalised.drivername == expected_driver
    assert normalised.database == expected_database
    assert normalised.password == (None if expected_driver == "sqlite" else "p")


def test_postgres_engine_uses_psycopg_with_pool_settings() -> None:
    engine = make_engine(DatabaseSettings(url="postgres://u:p@db.example:5432/certrail", pool_size=7))
    try:
        assert engine.dialect.driver == "psycopg"
        assert engine.pool.size() == 7  # type: ignore[attr-defined]
        assert engine.pool._pre_ping  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_password_is_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql://certrail:{PASSWORD}@db.example:5432/certrail"
    with caplog.at_level(logging.DEBUG, logger="services.common.db"):
        engine = make_engine(DatabaseSettings(url=url))
    try:
        shown = [repr(engine), str(engine.url), repr(engine.url), safe_url(url), caplog.text]
        assert caplog.text  # the engine creation was logged...
        for text_shown in shown:
            assert PASSWORD not in text_shown  # ...without the password
        assert "certrail:***@db.example" in safe_url(url)
        # The password itself still reaches the driver.
        assert engine.url.password == PASSWORD
    finally:
        engine.dispose()
