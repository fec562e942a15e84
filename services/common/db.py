"""The SQL database shared by the four services: engine and transactions.

One database holds the state the services keep: a SQLite file by default (the
embedded run), PostgreSQL in production. Build the engine once per process with
:func:`make_engine` and open every transaction through one of two context
managers, which say whether the transaction writes:

``write_session(engine)``
    A transaction that may write. On SQLite it begins with ``BEGIN IMMEDIATE``:
    the write lock is taken by the first statement (or waited for, up to the
    busy timeout) instead of at the first INSERT/UPDATE, so two processes can
    never both hold a read snapshot and then both try to upgrade it to a write
    lock -- the case in which SQLite answers "database is locked" at once,
    without waiting. Commits when the block ends normally, rolls back when it
    raises.

``read_session(engine)``
    A read-only transaction. On SQLite a plain (deferred) ``BEGIN``, so it never
    waits for writers (WAL readers see the last committed snapshot), and the
    connection is put in ``PRAGMA query_only`` mode so that an accidental write
    fails loudly instead of racing for the lock. On PostgreSQL the transaction
    is ``READ ONLY``. Always rolled back at the end (there is nothing to commit).

Both take the lock lazily: the BEGIN is emitted by the first statement of the
block, so keep non-database work (network calls, Kafka) outside a write block.
Write many rows as several short transactions rather than one long one, e.g.
with :func:`write_in_batches`.

Under the hood the choice is the execution option :data:`READ_ONLY_OPTION`,
which :func:`read_session` sets; Core users can do the same::

    with engine.connect().execution_options(**{READ_ONLY_OPTION: True}) as conn: ...

Anything that does not set it (``engine.begin()``, Alembic) writes, i.e. gets
``BEGIN IMMEDIATE``.

SQLite is written by four processes at once (see DESIGN.md "One database,
several processes"). Every new SQLite connection gets ``busy_timeout`` (from
settings), ``journal_mode=WAL``, ``synchronous=NORMAL`` and
``foreign_keys=ON``, and SQLAlchemy, not the ``sqlite3`` driver, decides when a
transaction begins (the "BEGIN in lieu of SQLite's transaction control" recipe
of SQLAlchemy's SQLite dialect documentation): the driver's ``isolation_level``
is set to ``None`` and the ``begin`` event emits the BEGIN.

There is deliberately no automatic retry of transactions on "database is
locked": with WAL, ``BEGIN IMMEDIATE`` and a busy timeout, a writer waits for the
lock rather than failing, so the error only appears when writers held the lock
longer than the busy timeout -- a bug or an overloaded disk that a retry would
hide. How ``BEGIN IMMEDIATE`` waits is ours, not SQLite's busy handler's: that
handler sleeps 1, 2, 5, 10, ... 50, then 100 ms between its tries, so a writer
that found the lock taken a few times slept through the free moments between
other writers' short transactions (0.6 s and more behind 24 certificates per
second). A process's writers take turns (one engine-wide lock, held from BEGIN
to the end of the transaction), and the one whose turn it is tries for SQLite's
lock every 0.5-5 ms, jittered, for at most the busy timeout
(``_begin_immediate``; decision 0003, amendment). The switch of a new file to WAL,
which SQLite does not cover with its busy handler, is retried with its own
growing sleeps (5 to 100 ms) for at most the busy timeout (see ``_enable_wal``).

Passwords never reach logs or reprs: use :func:`safe_url` to show a URL.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential, wait_random

from services.common.runtime.prepared import PreparedConnection
from services.common.settings import DatabaseSettings

__all__ = [
    "READ_ONLY_OPTION",
    "is_sqlite",
    "make_engine",
    "normalise_url",
    "read_only",
    "read_session",
    "safe_url",
    "write_in_batches",
    "write_session",
]

logger = logging.getLogger(__name__)

READ_ONLY_OPTION = "certrail_read_only"
"""Execution option: ``True`` marks a connection's transactions as read-only."""

_PSYCOPG_DRIVER = "postgresql+psycopg"
_BARE_POSTGRES_DRIVERS = frozenset({"postgres", "postgresql"})
_QUERY_ONLY_KEY = "certrail_sqlite_query_only"
_WRITER_KEY = "certrail_sqlite_writer"  # set while the connection's transaction holds its engine's writer turn

T = TypeVar("T")


def normalise_url(url: str | URL) -> URL:
    """Parse a database URL; ``postgres://`` and ``postgresql://`` get the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in _BARE_POSTGRES_DRIVERS:
        parsed = parsed.set(drivername=_PSYCOPG_DRIVER)
    return parsed


def safe_url(url: str | URL) -> str:
    """The URL as a string fit for logs and error messages (password hidden)."""
    return make_url(url).render_as_string(hide_password=True)


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(settings: DatabaseSettings) -> Engine:
    """The engine for ``settings.url``: one per process, shared by its threads."""
    url = normalise_url(settings.url)
    if url.get_backend_name() == "sqlite":
        engine = _make_sqlite_engine(url, settings)
    elif url.get_backend_name() == "postgresql":
        engine = create_engine(
            url,
            echo=settings.echo,
            pool_pre_ping=True,
            pool_size=settings.pool_size,
        )
    else:
        engine = create_engine(url, echo=settings.echo, pool_pre_ping=True)
    logger.info("database engine created for %s", safe_url(url))
    return engine


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session whose transaction may write; commits on success, rolls back on error.

    On SQLite the transaction is ``BEGIN IMMEDIATE`` (see the module docstring).
    """
    with Session(engine) as session, session.begin():
        yield session


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A session for a read-only transaction; never commits.

    SQLite: deferred ``BEGIN`` plus ``PRAGMA query_only``; PostgreSQL: ``READ ONLY``.
    Writing through it raises an error on both.
    """
    with Session(read_only(engine)) as session:
        try:
            yield session
        finally:
            session.rollback()


def read_only(engine: Engine) -> Engine:
    """``engine`` whose transactions are read-only (`read_session`'s): on SQLite a deferred ``BEGIN`` that takes no
    write turn, on PostgreSQL ``READ ONLY``. Make it once: it shares the engine's pool."""
    options: dict[str, Any] = {READ_ONLY_OPTION: True}
    if engine.dialect.name == "postgresql":
        options["postgresql_readonly"] = True
    return engine.execution_options(**options)


def write_in_batches(
    engine: Engine,
    items: Iterable[T],
    write: Callable[[Session, Sequence[T]], None],
    *,
    batch_size: int = 500,
) -> int:
    """Write ``items`` in transactions of at most ``batch_size`` items each.

    ``write(session, batch)`` is called once per batch inside its own
    :func:`write_session`, so the write lock is released between batches and
    other processes get their turn. A batch that fails is rolled back and the
    error propagates; the batches before it stay committed. Returns the number
    of items written.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    written = 0
    iterator = iter(items)
    while batch := list(islice(iterator, batch_size)):
        with write_session(engine) as session:
            write(session, batch)
        written += len(batch)
    return written


def _make_sqlite_engine(url: URL, settings: DatabaseSettings) -> Engine:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # The busy timeout is also set by PRAGMA below; `timeout` makes the driver
    # agree with it (its default of 5 s would otherwise apply until then).
    engine = create_engine(
        url,
        echo=settings.echo,
        connect_args={"timeout": settings.busy_timeout_ms / 1000},
    )
    busy_timeout_ms = settings.busy_timeout_ms
    in_memory = not database or database == ":memory:" or url.query.get("mode") == "memory"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the sqlite3 driver: it neither
        # emits BEGIN nor commits implicitly; the "begin" listener below does.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if not in_memory:
                _enable_wal(cursor, busy_timeout_ms)
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = bool(conn.get_execution_options().get(READ_ONLY_OPTION, False))
        info = conn.connection.info  # lives as long as the DBAPI connection
        if info.get(_QUERY_ONLY_KEY, False) != read_only:
            conn.exec_driver_sql(f"PRAGMA query_only = {int(read_only)}")
            info[_QUERY_ONLY_KEY] = read_only
        if read_only:
            conn.exec_driver_sql("BEGIN")
            return
        # This process's writers take turns here, so one of them at a time tries for SQLite's lock against the
        # other processes' (decision 0003, amendment); the turn ends when the transaction does.
        if not writers.acquire(timeout=busy_timeout_ms / 1000):
            raise DBAPIError.instance("BEGIN IMMEDIATE", (), sqlite3.OperationalError(
                f"database is locked: this process's other writers held it for {busy_timeout_ms} ms"), sqlite3.Error)
        info[_WRITER_KEY] = True
        try:
            _begin_immediate(conn, busy_timeout_ms)
        except BaseException:
            _end_turn(info)
            raise

    writers = threading.Lock()

    def _end_turn(info: dict[Any, Any]) -> None:
        if info.pop(_WRITER_KEY, False):
            writers.release()

    # The turn ends at SQLAlchemy's commit or rollback event, which comes just before the COMMIT or ROLLBACK itself:
    # the next writer's first try may find the lock still held and tries again 0.5 ms later. (Ending it after the
    # COMMIT, which may run a WAL checkpoint, made the writers of a busy process wait on each other: -15% in
    # bench/pipeline.py's burst.)
    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _on_end(conn: Connection) -> None:
        _end_turn(conn.connection.info)

    @event.listens_for(engine, "reset")
    def _on_reset(_dbapi_connection: sqlite3.Connection, record: ConnectionPoolEntry, _state: object) -> None:
        _end_turn(record.info)  # a connection back in the pool never keeps the turn

    return engine


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY


def _begin_immediate(conn: Connection, busy_timeout_ms: int) -> None:
    """``BEGIN IMMEDIATE``: take SQLite's write lock, or wait for it by trying again every 0.5-5 ms (jittered) for at
    most the busy timeout, with SQLite's own busy handler off for these tries (see the module docstring). Errors are
    raised as SQLAlchemy's, as for any statement; "database is locked" once the busy timeout has passed."""
    raw = conn.connection.dbapi_connection
    assert isinstance(raw, sqlite3.Connection)
    raw.execute("PRAGMA busy_timeout = 0")
    try:
        try:
            raw.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        for attempt in Retrying(
            stop=stop_after_delay(busy_timeout_ms / 1000),
            wait=wait_exponential(multiplier=0.0005, max=0.005) + wait_random(0, 0.0005),
            retry=retry_if_exception(_is_busy),
            reraise=True,
        ):
            with attempt:
                raw.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise DBAPIError.instance("BEGIN IMMEDIATE", (), exc, sqlite3.Error) from exc
    finally:
        raw.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")


def _enable_wal(cursor: sqlite3.Cursor, busy_timeout_ms: int) -> None:
    """Put the database file in WAL mode (persistent: once done, every later call only reads it).

    Switching a new file from the rollback journal to WAL needs an exclusive
    lock, and SQLite reports "database is locked" at once, without calling the
    busy handler, when another process holds any lock on the file then -- as
    happens when several services start together on a fresh database. So the
    switch is retried here, with short growing sleeps, for at most the busy
    timeout: the wait the busy handler would otherwise have done.
    """
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.005
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
            mode = None
        if mode == "wal":
            return
        if time.monotonic() + delay > deadline:
            raise sqlite3.OperationalError(
                f"database is locked: could not switch to WAL journal mode within {busy_timeout_ms} ms"
                + (f" (journal_mode is {mode!r})" if mode else "")
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def transaction_memo(session: Session, key: str) -> dict[Any, Any]:
    """A dict that lives as long as the session's current transaction: what was read once in it
    (the same answer for every step of a grouped transaction) and is forgotten at its end."""
    session.connection()  # begins the transaction if nothing has yet
    transaction = session.get_transaction()
    held = session.info.get(key)
    if held is None or held[0] is not transaction:
        held = (transaction, {})
        session.info[key] = held
    return held[1]


def core(session: Session) -> PreparedConnection:
    """The session's connection, for prebuilt Core statements on a hot path: they run on its DBAPI cursor
    with the plan SQLAlchemy compiled once (services/common/runtime/prepared.py; a tenth of ``Session.execute``'s
    cost, a fifth of ``Connection.execute``'s), anything else through the connection. Pending ORM changes are
    flushed first (a no-op on a clean session), so the statement sees them as ``Session.execute``'s autoflush
    would."""
    session.flush()
    transaction = session.get_transaction()
    held = session.info.get(_CORE_CONNECTION)
    if held is not None and held[0] is transaction and transaction is not None:
        return held[1]  # type: ignore[no-any-return]
    connection = PreparedConnection(session.connection())
    session.info[_CORE_CONNECTION] = (session.get_transaction(), connection)
    return connection


_CORE_CONNECTION = "certrail.db.core_connection"
