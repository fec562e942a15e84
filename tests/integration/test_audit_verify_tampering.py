"""`certrail audit verify` against a hostile database, on SQLite and PostgreSQL.

Records go through Kafka and a real auditor once (a template store, a signed
checkpoint, the group's committed offsets); each case copies the template into
a fresh database, tampers with it one way, and runs the CLI in process
(`certrail audit verify --json`). For every case verify must report exactly
the expected problems (kind, row, column), record a failed run, and exit 1;
nothing it reads may make it crash. A clean copy verifies OK and records a
success; an error of verify itself exits 2 and is still recorded.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Engine, insert, select, text
from typer.testing import CliRunner

from services.auditor.checkpoints import checkpoint_outbound, sign_checkpoints
from services.auditor.metrics import AuditMetrics
from services.auditor.store import Head
from services.auditor.verify_problems import ProblemKind as K
from services.auditor.verify_runs import latest_run
from services.cli.audit_cmd import app
from services.common import migrate
from services.common.contracts.envelope import encode, make_event
from services.common.contracts.events import CertificateDeployed
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session
from services.common.db_schema import AuditChainHead, AuditRecord
from services.common.kafka_config import producer_kwargs
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.topics_admin import delete_topics, ensure_topics
from tests.integration.test_audit_kafka import AuditEnv, _make_env, audit_all, event, produce
from tests.unit.examples import CERT_ID, NOW, examples, private_key_pem

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EX = examples()
REPO = Path(__file__).resolve().parents[2]
EVENTS_ROWS = 6
POISON = b"\xffpoison"
Expected = set[tuple[str, str | None, int | None, int | None, int | None, str | None]]


@dataclass
class World:
    """What the real auditor stored (the template) and how to reach its Kafka records."""

    kafka: KafkaSettings
    topics: Topics
    group: str
    trusted: str
    env: AuditEnv
    records: list[dict[str, Any]]
    heads: list[dict[str, Any]]

    @property
    def events(self) -> list[dict[str, Any]]:
        return sorted((r for r in self.records if r["topic"] == self.topics.deployer_events), key=lambda r: r["offset"])

    @property
    def poison(self) -> dict[str, Any]:
        return next(r for r in self.records if r["value"] == POISON)


@pytest.fixture(scope="module")
async def world(kafka_settings: KafkaSettings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("verify-world")
    async for env in _make_env(kafka_settings, DatabaseSettings(url=f"sqlite:///{tmp / 'template.db'}"), tmp):
        records = [(env.topics.deployer_events, CERT_ID.encode(), event(EX[CertificateDeployed], f"d-{i}")) for i in range(EVENTS_ROWS)]
        # and on another topic, so that every column holds a value somewhere: an undecodable record, an event id
        # seen before (first_*), with a causation id, and a record holding a private key (original_sha256/size)
        again = encode(make_event(EX[CertificateDeployed], id="d-0", source="/t", time=NOW, subject=CERT_ID,
                                  correlationid="req-1", causationid="cause-1"))
        others = [(env.topics.requests, b"k", value) for value in (POISON, again, private_key_pem().encode())]
        await produce(env.kafka, [*records, *others])
        group = f"auditor-{uuid.uuid4().hex[:6]}"
        await audit_all(env, EVENTS_ROWS + len(others), group)  # stops with a signed checkpoint of every head
        with env.engine.connect() as conn:
            stored = [dict(r) for r in conn.execute(select(AuditRecord.__table__)).mappings()]
            heads = [dict(r) for r in conn.execute(select(AuditChainHead.__table__)).mappings()]
        assert len(stored) == EVENTS_ROWS + len(others)
        assert all(any(r[c] is not None for r in stored) for c in AuditRecord.__table__.c.keys())
        yield World(env.kafka, env.topics, group, next(iter(env.trusted)), env, stored, heads)


runner = CliRunner()


@dataclass
class CliResult:
    code: int
    report: dict[str, Any]
    stderr: str

    @property
    def found(self) -> Expected:
        return {(p["kind"], p["topic"], p["partition"], p["offset"], p["row_id"], p["column"]) for p in self.report["problems"]}


async def cli_verify(world: World, db: DatabaseSettings, *, prefix: str | None = None) -> CliResult:
    env = {
        "CERTRAIL_DB_URL": db.url,
        "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": world.kafka.bootstrap_servers,
        "CERTRAIL_KAFKA_TOPIC_PREFIX": prefix or world.topics.prefix,
        "CERTRAIL_AUDITOR_GROUP_ID": world.group,
    }
    # In a thread: the command runs its own event loop (asyncio.run), as it does from a shell.
    result = await asyncio.to_thread(runner.invoke, app, ["verify", "--json", "--trust", world.trusted], env=env)
    assert "Traceback" not in result.output, result.output
    try:
        report = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"not one JSON report on stdout (exit {result.exit_code}): {result.output}") from None
    return CliResult(result.exit_code, report, result.stderr)


def recorded(engine: Engine) -> tuple[bool, int, str]:
    with read_session(engine) as session:
        run = latest_run(session)
    assert run is not None, "no verify run was recorded"
    return run.ok, run.problems, run.summary


# -- expectations ------------------------------------------------------------------


def at(kind: K, row: dict[str, Any], *, offset: int | None = None, column: str | None = None) -> Expected:
    return {(kind.value, row["topic"], row["partition"], row["offset"] if offset is None else offset, row["id"], column)}


def unreadable(row: dict[str, Any], column: str) -> Expected:
    if column in ("topic", "partition"):  # the row cannot be placed: only its id names it
        return {(K.UNREADABLE_COLUMN.value, None, None, None, row["id"], column)}
    offset = None if column == "offset" else row["offset"]
    return {(K.UNREADABLE_COLUMN.value, row["topic"], row["partition"], offset, row["id"], column)}


def missing(row: dict[str, Any]) -> Expected:
    return {(K.MISSING.value, row["topic"], row["partition"], row["offset"], None, None)}


def unplaced(world: World, row: dict[str, Any], column: str) -> Expected:
    """A row without a place in its chain: the next row links to a hole, and Kafka still has the record."""
    after = world.events[row["offset"] + 1]
    return unreadable(row, column) | at(K.GAP, after) | missing(row)


# -- the cases ---------------------------------------------------------------------

Tamper = Callable[[Connection, World], None]


@dataclass(frozen=True)
class Case:
    name: str
    tamper: Tamper
    expect: Callable[[World], Expected]
    backends: tuple[str, ...] = ("sqlite", "postgresql")


def sql(statement: str, **fixed: Any) -> Tamper:
    """An UPDATE/DELETE/ALTER with :id2 (the events row at offset 2), :poison (the undecodable
    record's row) and :events (the events topic) bound."""
    def run(conn: Connection, world: World) -> None:
        names = {"id2": world.events[2]["id"], "poison": world.poison["id"], "events": world.topics.deployer_events, **fixed}
        params = {k: v for k, v in names.items() if f":{k}" in statement}
        conn.execute(text(statement), params)
    return run


def steps(*parts: Tamper) -> Tamper:
    def run(conn: Connection, world: World) -> None:
        for part in parts:
            part(conn, world)
    return run


# A value of the wrong SQL type per kind of column (SQLite keeps what it is given, row by row).
SQLITE_WRONG = {
    "int": "'7x'",  # text that is no integer (CAST(n AS TEXT) would be turned back into an integer)
    "text": "X'00FF'",  # a blob
    "bytes": 'CAST("{c}" AS TEXT)',  # the hostile tester's case
    "hash": "substr(coalesce(\"{c}\", '" + "0" * 64 + "'), 1, 63)",  # one hex digit short
    "headers": 'CAST("{c}" AS BLOB)',
    "time": "'garbage'",
}
KIND = {
    "topic": "text", "partition": "int", "offset": "int", "timestamp_ms": "int", "timestamp_type": "int", "key": "bytes",
    "value": "bytes", "headers": "headers", "private_keys_removed": "int", "original_sha256": "hash", "original_size": "int",
    "decode_error": "text", "event_id": "text", "event_type": "text", "source": "text", "subject": "text",
    "correlation_id": "text", "causation_id": "text", "event_time": "time", "certificate_id": "text", "request_id": "text",
    "prev_offset": "int", "prev_hash": "hash", "row_hash": "hash", "decode_reason": "text", "first_topic": "text",
    "first_partition": "int", "first_offset": "int", "stored_at": "time",
}


def _sqlite_type_case(column: str) -> Case:
    wrong = SQLITE_WRONG[KIND[column]].format(c=column)

    def expect(world: World) -> Expected:
        row = world.events[2]
        return unplaced(world, row, column) if column in ("topic", "partition", "offset") else unreadable(row, column)

    return Case(f"sqlite-type-{column}", sql(f'UPDATE audit_records SET "{column}" = {wrong} WHERE id = :id2'), expect, ("sqlite",))


# A whole column changed to another SQL type (PostgreSQL keeps one type per column): (new type, USING).
PG_WRONG = {
    "int": ("text", "{c}::text"),
    "text": ("bytea", "convert_to({c}, 'UTF8')"),
    "bytes": ("text", "encode({c}, 'escape')"),
    "hash": ("bytea", "convert_to({c}, 'UTF8')"),
    "headers": ("bytea", "convert_to({c}, 'UTF8')"),
    "time": ("text", "{c}::text"),
}
PLACEMENT = ("topic", "partition", "offset")


def _pg_alter(column: str) -> str:
    new_type, using = PG_WRONG[KIND[column]]
    quoted = f'"{column}"'
    return f"ALTER TABLE audit_records ALTER COLUMN {quoted} TYPE {new_type} USING {using.format(c=quoted)}"


def _pg_type_case(column: str) -> Case:
    def expect(world: World) -> Expected:
        return set().union(*(unreadable(r, column) for r in world.records if r[column] is not None))

    return Case(f"postgresql-type-{column}", sql(_pg_alter(column)), expect, ("postgresql",))


def _swap(conn: Connection, world: World) -> None:
    row2, row3 = world.events[2]["id"], world.events[3]["id"]
    for row_id, offset in ((row2, -1), (row3, 2), (row2, 3)):
        conn.execute(text('UPDATE audit_records SET "offset" = :o WHERE id = :i'), {"o": offset, "i": row_id})


def _changed_bytes(conn: Connection, world: World) -> None:
    value = world.events[2]["value"].replace(b'"d-2"', b'"d-9"')
    conn.execute(text("UPDATE audit_records SET value = :v WHERE id = :i"), {"v": value, "i": world.events[2]["id"]})


def _duplicate(conn: Connection, world: World) -> None:
    conn.execute(text("ALTER TABLE audit_records DROP CONSTRAINT uq_audit_records_topic"))
    copy = {**world.events[2], "id": max(r["id"] for r in world.records) + 1000}
    conn.execute(insert(AuditRecord.__table__), [copy])


def _duplicate_expect(world: World) -> Expected:
    return at(K.DUPLICATE_OFFSET, {**world.events[2], "id": max(r["id"] for r in world.records) + 1000})


def _tail_expect(world: World) -> Expected:
    last = world.events[-1]
    head = {(K.HEAD_MISMATCH.value, last["topic"], last["partition"], last["offset"], None, None)}
    signed = {(K.CHECKPOINT_ROW_MISSING.value, last["topic"], last["partition"], last["offset"], None, None)}
    return head | signed | missing(world.events[-2]) | missing(last)


CASES = [
    *(_sqlite_type_case(column) for column in KIND),
    Case("sqlite-value-text-not-utf8", sql("UPDATE audit_records SET value = CAST(value AS TEXT) WHERE id = :poison"),
         lambda w: unreadable(w.poison, "value"), ("sqlite",)),
    *(_pg_type_case(column) for column in KIND if column not in PLACEMENT),
    Case("postgresql-null-row_hash", steps(sql("ALTER TABLE audit_records ALTER COLUMN row_hash DROP NOT NULL"),
                                           sql("UPDATE audit_records SET row_hash = NULL WHERE id = :id2")),
         lambda w: unreadable(w.events[2], "row_hash"), ("postgresql",)),
    Case("postgresql-duplicate-offset", _duplicate, _duplicate_expect, ("postgresql",)),
    Case("headers-not-json", sql("UPDATE audit_records SET headers = 'not json' WHERE id = :id2"),
         lambda w: unreadable(w.events[2], "headers")),
    Case("row_hash-short", sql("UPDATE audit_records SET row_hash = substr(row_hash, 1, 63) WHERE id = :id2"),
         lambda w: unreadable(w.events[2], "row_hash")),
    Case("prev_hash-not-hex", sql("UPDATE audit_records SET prev_hash = :z WHERE id = :id2", z="z" * 64),
         lambda w: unreadable(w.events[2], "prev_hash")),
    Case("value-null", sql("UPDATE audit_records SET value = NULL WHERE id = :id2"),
         lambda w: at(K.MODIFIED, w.events[2]) | at(K.DERIVED_MISMATCH, w.events[2])),
    Case("value-changed", _changed_bytes, lambda w: at(K.MODIFIED, w.events[2]) | at(K.DERIVED_MISMATCH, w.events[2])),
    Case("row-deleted", sql("DELETE FROM audit_records WHERE id = :id2"),
         lambda w: at(K.GAP, w.events[3]) | missing(w.events[2])),
    Case("tail-truncated", sql('DELETE FROM audit_records WHERE "offset" >= 4 AND topic = :events'), _tail_expect),
    Case("offsets-swapped", _swap, lambda w: (
        at(K.MODIFIED, w.events[3], offset=2) | at(K.CHAIN_BROKEN, w.events[3], offset=2)
        | at(K.MODIFIED, w.events[2], offset=3) | at(K.CHAIN_BROKEN, w.events[2], offset=3) | at(K.CHAIN_BROKEN, w.events[4])
    )),
]


def _params() -> list[Any]:
    return [
        pytest.param(case, backend, id=f"{case.name}-{backend}", marks=[pytest.mark.postgres] if backend == "postgresql" else [])
        for case in CASES for backend in case.backends
    ]


@pytest.fixture
def backend_db(request: pytest.FixtureRequest, tmp_path: Path) -> DatabaseSettings:
    """The backend a case names (a case that only one database allows runs on that one)."""
    if request.node.callspec.params["backend"] == "sqlite":
        return DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    settings: DatabaseSettings = request.getfixturevalue("postgres_settings")
    return settings


def fill(world: World, db: DatabaseSettings) -> Engine:
    """A fresh database holding exactly what the auditor stored."""
    migrate.upgrade(db)
    engine = make_engine(db)
    with engine.begin() as conn:
        conn.execute(insert(AuditRecord.__table__), world.records)
        conn.execute(insert(AuditChainHead.__table__), world.heads)
    return engine


@pytest.mark.parametrize(("case", "backend"), _params())
async def test_verify_reports_exactly_the_tampering(world: World, backend_db: DatabaseSettings, case: Case, backend: str) -> None:
    engine = fill(world, backend_db)
    try:
        with engine.begin() as conn:
            case.tamper(conn, world)
        result = await cli_verify(world, backend_db)
        expected = case.expect(world)
        assert result.found == expected, json.dumps(result.report["problems"], indent=1)
        assert result.code == 1 and result.report["ok"] is False and result.report["recorded"] is True
        ok, problems, summary = recorded(engine)
        assert (ok, problems) == (False, len(expected)) and "FAILED" in summary
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("column", PLACEMENT)
async def test_a_placement_column_of_another_type_on_postgresql_is_reported_row_by_row(
    world: World, postgres_settings: DatabaseSettings, column: str
) -> None:
    """Topics, partitions or offsets of another SQL type: no row has a place in its chain any more;
    each is named, and every record is then missing (verify goes on and checks what it can)."""
    engine = fill(world, postgres_settings)
    try:
        with engine.begin() as conn:
            conn.execute(text(_pg_alter(column)))
        result = await cli_verify(world, postgres_settings)
        assert set().union(*(unreadable(r, column) for r in world.records)) <= result.found
        assert set().union(*(missing(r) for r in world.records)) <= result.found
        assert {kind for kind, *_ in result.found} == {"unreadable_column", "missing", "head_mismatch", "checkpoint_row_missing"}
        assert result.code == 1 and recorded(engine)[:2] == (False, len(result.found))
    finally:
        engine.dispose()


async def test_a_clean_store_verifies_and_records_a_success(world: World, db_settings: DatabaseSettings) -> None:
    engine = fill(world, db_settings)
    try:
        result = await cli_verify(world, db_settings)
        assert result.code == 0 and result.report["ok"] is True and result.report["problems"] == [], result.report
        assert result.report["rows_checked"] == len(world.records) and result.report["checkpoints_trusted"] == 1
        assert recorded(engine)[:2] == (True, 0)
    finally:
        engine.dispose()


async def test_a_forged_checkpoint_is_reported(world: World, db_settings: DatabaseSettings) -> None:
    """A checkpoint that claims the pinned key but whose signature does not verify (on a checkpoint
    topic of its own, so that the other cases never read it)."""
    prefix = f"t{uuid.uuid4().hex[:10]}.certrail"
    topics = Topics(prefix)
    await ensure_topics(world.kafka, [topics.audit_checkpoints], partitions=1)
    try:
        heads = [Head(h["topic"], h["partition"], h["offset"], h["row_hash"]) for h in world.heads]
        (signed,) = sign_checkpoints(world.env.key, auditor="forger", group_id=world.group, heads=heads,
                                     signed_at=datetime.now(UTC))
        forged = signed.model_copy(update={"heads": [signed.heads[0].model_copy(update={"hash": "f" * 64}), *signed.heads[1:]]})
        message = checkpoint_outbound(forged, topics)
        producer = AIOKafkaProducer(**producer_kwargs(world.kafka))
        await producer.start()
        try:
            await producer.send_and_wait(message.topic, message.value(), key=message.key.encode() if message.key else None)
        finally:
            await producer.stop()
        engine = fill(world, db_settings)
        try:
            result = await cli_verify(world, db_settings, prefix=prefix)
            assert result.found == {(K.BAD_CHECKPOINT.value, topics.audit_checkpoints, 0, 0, None, None)}
            assert result.code == 1 and recorded(engine)[:2] == (False, 1)
        finally:
            engine.dispose()
    finally:
        await delete_topics(world.kafka, [topics.audit_checkpoints])


async def test_an_error_of_verify_itself_is_recorded_and_exits_2(world: World, db_settings: DatabaseSettings) -> None:
    engine = fill(world, db_settings)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE audit_records"))
        result = await cli_verify(world, db_settings)
        assert result.code == 2 and result.report["ok"] is False and result.report["recorded"] is True
        assert [p["kind"] for p in result.report["problems"]] == ["verify_incomplete"]
        assert result.report["error"].startswith("database ") and "error: database" in result.stderr
        ok, problems, summary = recorded(engine)
        assert (ok, problems) == (False, 1) and "verify could not complete" in summary
        # ... and the alert fires: the auditor exports the latest recorded run
        registry = CollectorRegistry()
        metrics = AuditMetrics(registry, world.topics)
        with read_session(engine) as session:
            run = latest_run(session)
        assert run is not None
        metrics.verify_result(run.ok, run.finished_at, run.problems)
        assert registry.get_sample_value("certrail_audit_last_verify_success") == 0
        assert registry.get_sample_value("certrail_audit_last_verify_problems") == 1
    finally:
        engine.dispose()


async def test_an_unreachable_database_exits_2_with_a_clear_message(world: World) -> None:
    unreachable = DatabaseSettings(url="postgresql+psycopg://certrail:s3cret@127.0.0.1:1/certrail")
    result = await cli_verify(world, unreachable)
    assert result.code == 2 and result.report["ok"] is False and result.report["recorded"] is False
    assert "database postgresql+psycopg://certrail:***@127.0.0.1:1/certrail" in result.stderr
    assert "could not be recorded" in result.stderr and "s3cret" not in result.stderr + json.dumps(result.report)


def test_the_alert_reads_the_metric_verify_records() -> None:
    rules = yaml.safe_load((REPO / "deploy/prometheus/rules/certrail.rules.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert "certrail_audit_last_verify_success == 0" in alerts["CertrailAuditVerifyFailing"]["expr"]


# -- the other commands that read the live store: a tampered row is reported, never a crash --


async def cli(world: World, db: DatabaseSettings, *args: str) -> Any:
    env = {
        "CERTRAIL_DB_URL": db.url,
        "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": world.kafka.bootstrap_servers,
        "CERTRAIL_KAFKA_TOPIC_PREFIX": world.topics.prefix,
    }
    result = await asyncio.to_thread(runner.invoke, app, list(args), env=env)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


TEXT_VALUE = {  # the poison record's value (not UTF-8) becomes text: row by row on SQLite, the column on PostgreSQL
    "sqlite": "UPDATE audit_records SET value = CAST(value AS TEXT) WHERE id = :poison",
    "postgresql": "ALTER TABLE audit_records ALTER COLUMN value TYPE text USING encode(value, 'escape')",
}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_export_names_an_unreadable_value_and_exports_the_rest(world: World, backend_db: DatabaseSettings, backend: str) -> None:
    engine = fill(world, backend_db)
    try:
        with engine.begin() as conn:
            sql(TEXT_VALUE[backend])(conn, world)
        result = await cli(world, backend_db, "export", "--format", "jsonl")
    finally:
        engine.dispose()
    assert result.exit_code == 1, result.output
    exported = {row["row_id"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert set(exported) == {r["id"] for r in world.records}  # every row is exported ...
    poison = world.poison
    assert exported[poison["id"]]["value"] is None  # ... the unreadable value as null, and named
    assert f"(row {poison['id']}, column value): audit_records.value holds text" in result.stderr
    if backend == "sqlite":  # only that row was changed
        assert [r["value"] for r in exported.values()].count(None) == 1
        assert exported[world.events[2]["id"]]["event_id"] == "d-2"


async def test_replay_diff_names_an_unreadable_live_value(world: World, tmp_path: Path) -> None:
    live = DatabaseSettings(url=f"sqlite:///{tmp_path / 'live.db'}")
    engine = fill(world, live)
    try:
        with engine.begin() as conn:
            sql(TEXT_VALUE["sqlite"])(conn, world)
    finally:
        engine.dispose()
    poison = world.poison
    result = await cli(world, live, "replay", "--topic", world.topics.requests, "--into", f"sqlite:///{tmp_path / 'r.db'}", "--diff")
    assert result.exit_code == 1, result.output
    where = f"{world.topics.requests}/{poison['partition']}@{poison['offset']}"
    assert f"{where}: differs: value (unreadable in the live store)" in result.stdout
    assert "diff: 3 rows compared, 1 differences" in result.stdout
