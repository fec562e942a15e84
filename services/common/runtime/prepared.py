"""Prebuilt Core statements run on the DBAPI cursor of a session's connection (`services.common.db.core`).

A certificate's path runs a few dozen prebuilt statements per service, each a primary-key read or a one-row write.
SQLAlchemy's execution layer (an execution context, parameter and result metadata objects, events) costs 35-55 µs
per statement on this machine where the DBAPI call itself costs 5-10 µs, and it was a quarter of the gateway's CPU
(docs/benchmarks.md). This module keeps what SQLAlchemy decides and drops the per-call machinery:

- a statement is compiled by SQLAlchemy once per dialect and set of parameter names (the same ``column_keys`` that
  ``Connection.execute`` compiles with, so the SQL is the SQL SQLAlchemy would send), and its *plan* is kept: the SQL
  string, the order of the positional parameters, the bind processors of their types (a ``UTCDateTime``, SQLite's
  DATETIME strings, JSON) and the result processors of the returned columns;
- a call then constructs the parameters as SQLAlchemy does (``construct_params``, the processors), runs the DBAPI
  cursor in the session's connection (the same transaction), and returns the processed rows as `PreparedRow` tuples
  that read like SQLAlchemy's rows (``row.name``, ``row[0]``, ``row._mapping``).

A statement whose execution needs more than that goes through ``Connection.execute`` unchanged: a list of
parameter sets (executemany), a column default computed in Python (``insert_prefetch`` / ``update_prefetch``),
expanding or literal-execute parameters (``IN``), a schema translate map, escaped bind names, anything that is not
a Core SELECT, INSERT, UPDATE or DELETE or a textual statement (``text()``, and ``text().columns(...)`` whose
columns are matched by position), and every statement while someone watches them (SQL echo, a listener of
SQLAlchemy's execute events: the tests that count statements, tracing). A ``text()`` without columns returns its
rows as the driver gives them, named by the cursor's description, as ``Connection.execute`` does.

The plan reads attributes of SQLAlchemy's compiled statement that are not public API (``_bind_processors``,
``_result_columns``, ``positiontup``), as SQLAlchemy 2.0 and 2.1 name them (pyproject.toml pins ``<2.2``):
tests/integration/test_prepared_statements.py compares every kind of statement with ``Connection.execute``'s answer
on SQLite and PostgreSQL, so an upgrade that changes them fails there, not in production. The plans are cached by the statement object (prebuilt statements are
module constants or built once per dialect) and the cache is bounded.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, CursorResult, Delete, Insert, Select, TextClause, Update
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.selectable import TextualSelect

__all__ = ["PLAN_CACHE_SIZE", "PreparedConnection", "PreparedResult", "PreparedRow", "prepared"]

#: plans kept per process; beyond it the cache starts again (prebuilt statements are a few dozen per service)
PLAN_CACHE_SIZE = 1024

Processor = Callable[[Any], Any]


class PreparedRow(tuple[Any, ...]):
    """A result row: a tuple whose columns are also attributes (``row.serial``) and ``row._mapping``, as
    SQLAlchemy's ``Row``. Each plan makes a subclass of its own with a property per column."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    @property
    def _mapping(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...  # a column's value (the properties of the plan's subclass)


def _row_class(fields: tuple[str, ...]) -> type[PreparedRow]:
    namespace: dict[str, Any] = {"__slots__": (), "_fields": fields}
    for index, name in enumerate(fields):
        if name.isidentifier() and not hasattr(PreparedRow, name):
            namespace.setdefault(name, property(operator.itemgetter(index)))
    return type("PreparedRow", (PreparedRow,), namespace)


class PreparedResult:
    """The rows of one statement, fetched at once (a prepared statement reads a few rows), with the part of
    SQLAlchemy's ``Result`` interface the services use."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[PreparedRow], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[PreparedRow]:
        return iter(self._rows)

    def all(self) -> list[PreparedRow]:
        return list(self._rows)

    def first(self) -> PreparedRow | None:
        return self._rows[0] if self._rows else None

    def one(self) -> PreparedRow:
        if len(self._rows) != 1:
            raise ValueError(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def one_or_none(self) -> PreparedRow | None:
        if len(self._rows) > 1:
            raise ValueError(f"expected at most one row, got {len(self._rows)}")
        return self.first()

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]

    def scalars(self) -> list[Any]:
        return [row[0] for row in self._rows]


@dataclass(slots=True)
class _Plan:
    compiled: SQLCompiler
    sql: str
    positions: tuple[str, ...] | None  # the parameters' order for a positional paramstyle, None for a named one
    binds: Mapping[str, Processor]
    row: type[PreparedRow] | None  # None: the statement returns no rows (or a text(): see `untyped`)
    types: tuple[Any, ...]  # the returned columns' SQLAlchemy types
    untyped: bool = False  # a text() without columns: rows as the driver gives them, named by the cursor
    results: tuple[Processor | None, ...] | None = None  # their result processors, from the first cursor's description
    untyped_row: type[PreparedRow] | None = None  # a text()'s row class, from the first cursor's description

    def untyped_row_class(self, description: Sequence[Sequence[Any]]) -> type[PreparedRow]:
        if self.untyped_row is None:
            self.untyped_row = _row_class(tuple(column[0] for column in description))
        return self.untyped_row

    def processors(self, description: Sequence[Sequence[Any]] | None) -> tuple[Processor | None, ...]:
        """The result processors, as SQLAlchemy picks them: by type and the driver's type code of each column."""
        if self.results is None:
            codes = [column[1] for column in description or ()]
            if len(codes) != len(self.types):
                raise RuntimeError(f"{len(codes)} columns returned, {len(self.types)} compiled: {self.sql!r}")
            self.results = tuple(type_._cached_result_processor(self.compiled.dialect, code)
                                 for type_, code in zip(self.types, codes, strict=True))
        return self.results


_STATEMENTS = (Select, Insert, Update, Delete, TextClause, TextualSelect)
_PLANS: dict[tuple[int, tuple[str, ...], tuple[Any, ...]], tuple[Any, _Plan | None]] = {}


def _dialect_key(dialect: Dialect) -> tuple[Any, ...]:
    return (dialect.name, dialect.driver, dialect.paramstyle, dialect.server_version_info)


def _plan(statement: Any, keys: tuple[str, ...], dialect: Dialect) -> _Plan | None:
    cache_key = (id(statement), keys, _dialect_key(dialect))
    held = _PLANS.get(cache_key)
    if held is not None and held[0] is statement:  # the statement is held too, so its id is not reused meanwhile
        return held[1]
    plan = _make_plan(statement, keys, dialect)
    if len(_PLANS) >= PLAN_CACHE_SIZE:
        _PLANS.clear()
    _PLANS[cache_key] = (statement, plan)
    return plan


def _make_plan(statement: Any, keys: tuple[str, ...], dialect: Dialect) -> _Plan | None:
    if not isinstance(statement, _STATEMENTS):
        return None
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    if not isinstance(compiled, SQLCompiler):
        return None
    if (compiled.insert_prefetch or compiled.update_prefetch or compiled.literal_execute_params
            or compiled.post_compile_params or compiled.schema_translate_map or compiled.escaped_bind_names
            or compiled._ad_hoc_textual):
        return None
    # text().columns(...) matches its columns by position (_textual_ordered_columns), as the plan reads them
    positions = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup is not None else None
    if compiled.positional and positions is None:
        return None
    columns = compiled._result_columns
    untyped = isinstance(statement, TextClause)
    if untyped and columns:
        return None
    returns_rows = isinstance(statement, Select | TextualSelect) or bool(compiled.effective_returning)
    if returns_rows and not columns:
        return None
    binds: dict[str, Processor] = {}
    for name, processor in compiled._bind_processors.items():
        if not callable(processor):  # a tuple type's processors, one per element
            return None
        binds[name] = processor
    row = _row_class(tuple(column.keyname for column in columns)) if returns_rows else None
    return _Plan(compiled, compiled.string, positions, binds, row,
                 tuple(column.type for column in columns), untyped)


class PreparedConnection:
    """`execute` for prebuilt statements on ``connection``'s DBAPI connection (module docstring); anything else through
    ``connection.execute``. ``connection`` is the session's connection inside a transaction."""

    __slots__ = ("connection", "_dialect", "_watched")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._dialect = connection.dialect
        self._watched = self._instrumented()  # once: `db.core` makes one per transaction

    def _instrumented(self) -> bool:
        """Whether someone watches the statements (SQL echo, a listener of the execute events: tests that count
        statements, tracing): then every statement goes through SQLAlchemy, which tells them. Asked when the
        transaction's first prepared statement runs: a listener added later sees the next transaction's."""
        connection = self.connection
        dispatch = connection.dispatch
        return bool(connection._echo or dispatch.before_execute or dispatch.after_execute
                    or dispatch.before_cursor_execute or dispatch.after_cursor_execute)

    def execute(self, statement: Any, parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None
                ) -> PreparedResult:
        if parameters is not None and not isinstance(parameters, Mapping):
            return _fetched(self.connection.execute(statement, parameters))  # executemany
        values = parameters or {}
        plan = None if self._watched else _plan(statement, tuple(sorted(values)), self._dialect)
        if plan is None:
            return _fetched(self.connection.execute(statement, values))
        constructed = plan.compiled.construct_params(values, escape_names=False)
        binds = plan.binds
        dbapi_parameters: Any
        if plan.positions is not None:
            dbapi_parameters = tuple(binds[name](constructed[name]) if name in binds else constructed[name]
                                     for name in plan.positions)
        else:
            dbapi_parameters = {name: binds[name](value) if name in binds else value
                                for name, value in constructed.items()}
        dbapi_connection = self.connection.connection.dbapi_connection
        assert dbapi_connection is not None, "the session's connection is open"
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(plan.sql, dbapi_parameters)
            rows: list[PreparedRow] = []
            if plan.row is not None:
                make, results = plan.row, plan.processors(cursor.description)
                for raw in cursor.fetchall():
                    rows.append(make(value if processor is None else processor(value)
                                     for processor, value in zip(results, raw, strict=True)))
            elif plan.untyped and cursor.description is not None:
                make = plan.untyped_row_class(cursor.description)
                rows = [make(raw) for raw in cursor.fetchall()]
            return PreparedResult(rows, cursor.rowcount)
        finally:
            cursor.close()


def _fetched(result: CursorResult[Any]) -> PreparedResult:
    """A result of ``Connection.execute`` as a `PreparedResult` (its rows fetched)."""
    if not result.returns_rows:
        return PreparedResult([], result.rowcount)
    make = _row_class(tuple(result.keys()))
    return PreparedResult([make(row) for row in result], result.rowcount)


_ON_CONNECTION = "certrail.prepared"


def prepared(connection: Connection) -> PreparedConnection:
    """A `PreparedConnection` over a Core ``connection`` inside a transaction, one per transaction (the
    ``Connection`` counterpart of ``db.core`` for services that hold a connection, not a session)."""
    transaction = connection.get_transaction()
    held = connection.info.get(_ON_CONNECTION)
    if held is not None and held[0] is transaction and transaction is not None:
        return held[1]  # type: ignore[no-any-return]
    wrapper = PreparedConnection(connection)
    connection.info[_ON_CONNECTION] = (transaction, wrapper)
    return wrapper
