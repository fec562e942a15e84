"""`certrail audit ...`: the investigator's commands over the audit log.

Settings come from the environment when a command runs: the auditor's database
(``CERTRAIL_AUDITOR_DB_URL``, else ``CERTRAIL_DB_URL``, else var/auditor.db), Kafka from ``CERTRAIL_KAFKA_*``, the auditor's group and
signing key file from ``CERTRAIL_AUDITOR_*``. See docs/audit.md.

Exit status: 0 when all is well; 1 when verify finds a problem, a replay
diff finds a difference, or nothing matches a trail; 2 for bad arguments or
an unreachable database/Kafka (for verify: whenever it could not complete or
could not record its run; the failed run is recorded where the database takes it).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from services.auditor.admin_trail import admin_trail
from services.auditor.export import exported_rows, write_csv, write_jsonl
from services.auditor.keys import SigningKeyError, key_id, load_public_key_file, local_key_id
from services.auditor.replay import ReplayError, diff_stores, parse_bound, replay
from services.auditor.settings import AuditorSettings
from services.auditor.trail import trail as build_trail
from services.auditor.verify import VerifyReport
from services.auditor.verify import verify as run_verify
from services.auditor.verify_problems import Problem, ProblemKind
from services.auditor.verify_runs import VerifyRun, record_run
from services.common import migrate
from services.common.contracts.topics import Topics
from services.common.db import make_engine, normalise_url, read_session, safe_url, write_session
from services.common.settings import DatabaseSettings

# No locals in tracebacks: they would show database URLs with their passwords.
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
_KEY_ID = re.compile(r"^[0-9a-f]{64}$")


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


@app.callback()
def audit() -> None:
    """The audit log: timelines, verification, replay and export (see docs/audit.md)."""


def _settings() -> AuditorSettings:
    return AuditorSettings()


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


@contextmanager
def _errors(settings: AuditorSettings) -> Iterator[None]:
    """Database and Kafka failures as a one-line message and exit status 2."""
    try:
        yield
    except SQLAlchemyError as exc:
        cause = exc.orig if getattr(exc, "orig", None) is not None else exc
        raise _fail(f"database {safe_url(settings.db.url)}: {cause}") from exc
    except (KafkaError, OSError, TimeoutError) as exc:
        raise _fail(f"Kafka {settings.kafka.bootstrap_servers}: {type(exc).__name__}: {exc}") from exc
    except ReplayError as exc:
        raise _fail(str(exc)) from exc


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    bound = parse_bound(text)
    if bound.time is None:
        raise _fail(f"{text!r} is not a time (ISO 8601 with a zone, e.g. 2026-01-15T10:00:00Z)")
    return bound.time


def _show(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z" if value else "-"


@app.command()
def trail(
    identifier: Annotated[str | None, typer.Argument(metavar="ID", help="A certificate id, request id, serial or event id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines instead of a table.")] = False,
    connector: Annotated[str | None, typer.Option("--connector", help="Admin events about this connector.")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="Admin events about this provisioning profile.")] = None,
    token: Annotated[str | None, typer.Option("--token", help="Admin events about this API token id.")] = None,
    requester: Annotated[str | None, typer.Option("--requester", help="Admin events about this requester's keys.")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Admin events about this deployment target and its bindings.")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Admin events by this actor (token identity, console user, cli:<user>).")] = None,
) -> None:
    """The timeline of a certificate, a request or a serial, in order; or, with --connector, --profile,
    --token, --requester, --target and/or --actor, the configuration changes (admin events) that match them all."""
    admin_filters = {"connector": connector, "profile": profile, "token": token, "requester": requester, "target": target}
    if actor is not None or any(v is not None for v in admin_filters.values()):
        if identifier is not None:
            raise _fail("give an ID or admin-event filters (--connector, --profile, --token, --requester, --target, --actor), not both")
        _admin_trail(actor, admin_filters, as_json)
        return
    if identifier is None:
        raise _fail("give an ID, or admin-event filters (--connector, --profile, --token, --requester, --target, --actor)")
    settings = _settings()
    engine = make_engine(settings.db)
    try:
        with _errors(settings), read_session(engine) as session:
            result = build_trail(session, identifier)
    finally:
        engine.dispose()
    if not result.entries:
        raise _fail(f"nothing in the audit log matches {identifier!r}", code=1)
    if as_json:
        for entry in result.entries:
            row = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(entry).items()}
            typer.echo(json.dumps(row, ensure_ascii=False))
        return
    table = Table(title=f"{identifier}: certificates {', '.join(result.certificate_ids) or '-'}")
    for column in ("time (Kafka)", "where", "type", "event id", "details"):
        table.add_column(column, overflow="fold")
    for entry in result.entries:
        details = entry.summary + (f" [duplicate of {entry.duplicate_of}]" if entry.duplicate_of else "")
        table.add_row(_show(entry.timestamp), f"{entry.topic}/{entry.partition}@{entry.offset}",
                      entry.event_type or "-", entry.event_id or "-", details)
    Console(width=200).print(table)


def _admin_trail(actor: str | None, subjects: dict[str, str | None], as_json: bool) -> None:
    settings = _settings()
    engine = make_engine(settings.db)
    try:
        with _errors(settings), read_session(engine) as session:
            entries = admin_trail(session, actor=actor, **subjects)
    finally:
        engine.dispose()
    shown = ", ".join(f"{k} {v}" for k, v in {**subjects, "actor": actor}.items() if v is not None)
    if not entries:
        raise _fail(f"no admin event in the audit log matches {shown}", code=1)
    if as_json:
        for entry in entries:
            row = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(entry).items()}
            typer.echo(json.dumps(row, ensure_ascii=False))
        return
    table = Table(title=f"configuration changes: {shown}")
    for column in ("time (Kafka)", "where", "type", "event id", "details"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        details = entry.summary + (f" [duplicate of {entry.duplicate_of}]" if entry.duplicate_of else "")
        table.add_row(_show(entry.timestamp), f"{entry.topic}/{entry.partition}@{entry.offset}", entry.event_type,
                      entry.event_id or "-", details)
    Console(width=200).print(table)


def _trusted(settings: AuditorSettings, trust: list[str], public_keys: list[Path]) -> set[str]:
    trusted: set[str] = set()
    for value in trust:
        if not _KEY_ID.fullmatch(value):
            raise _fail(f"--trust {value!r} is not a key id (64 lower-case hex digits)")
        trusted.add(value)
    try:
        for path in public_keys:
            trusted.add(key_id(load_public_key_file(path)))
        if not trust and not public_keys:
            local = local_key_id(settings.signing_key_file, settings.signing_key_passphrase)
            if local is not None:
                trusted.add(local)
    except (OSError, SigningKeyError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    return trusted


@app.command()
def verify(
    trust: Annotated[list[str], typer.Option("--trust", help="Pin a checkpoint key id (repeatable).")] = [],  # noqa: B006
    public_key: Annotated[
        list[Path], typer.Option("--public-key", help="Pin the key in this public key PEM file (repeatable).")
    ] = [],  # noqa: B006
    topic: Annotated[list[str], typer.Option("--topic", help="Only these topics (repeatable; default: all).")] = [],  # noqa: B006
    group: Annotated[str | None, typer.Option(help="The auditor's consumer group (default: its settings).")] = None,
    record: Annotated[bool, typer.Option(help="Record the result in the database (exported as metrics).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="The report as one JSON object on stdout.")] = False,
) -> None:
    """Recompute the hash chains, check them against the signed checkpoints, and
    check that no offset Kafka retains is missing. Exit status 1 names every problem;
    2 when verify could not complete (recorded as a failed run where the database takes it).

    Without --trust/--public-key, the local auditor's key (CERTRAIL_AUDITOR_SIGNING_KEY_FILE) is pinned."""
    settings = _settings()
    trusted = _trusted(settings, trust, public_key)
    engine = make_engine(settings.db)
    started = datetime.now(UTC)
    failure: str | None = None
    report: VerifyReport | None = None
    try:
        try:
            report = asyncio.run(run_verify(
                kafka=settings.kafka, engine=engine, topics=Topics(settings.kafka.topic_prefix),
                group_id=group or settings.group_id, trusted_key_ids=trusted, only_topics=set(topic) or None,
            ))
        except (SQLAlchemyError, KafkaError, OSError, TimeoutError) as exc:
            failure = _why_verify_failed(settings, exc)
        except Exception as exc:  # noqa: BLE001 - a fault of verify itself: recorded as a failed run, never a traceback
            failure = f"verify failed: {type(exc).__name__}: {exc}"
        if report is None:
            report = VerifyReport(started_at=started, finished_at=datetime.now(UTC), problems=[
                Problem(ProblemKind.VERIFY_INCOMPLETE, f"verify could not complete: {failure}")
            ])
        not_recorded = _record_run(engine, report, settings) if record else None
    finally:
        engine.dispose()
    if as_json:
        typer.echo(json.dumps({**report.as_dict(), "recorded": record and not_recorded is None, "error": failure}))
    else:
        typer.echo(report.summary())
    if failure is not None:
        typer.echo(f"error: {failure}", err=True)
    if not_recorded is not None:
        typer.echo(f"error: this verify run could not be recorded ({not_recorded}): "
                   "the CertrailAuditVerify* alerts do not see it", err=True)
    if failure is not None or not_recorded is not None:
        raise typer.Exit(code=2)
    if not report.ok:
        raise typer.Exit(code=1)


def _why_verify_failed(settings: AuditorSettings, exc: BaseException) -> str:
    if isinstance(exc, SQLAlchemyError):
        cause = exc.orig if getattr(exc, "orig", None) is not None else exc
        first_line = (str(cause).strip().splitlines() or [""])[0]  # not the SQL that follows on PostgreSQL
        return f"database {safe_url(settings.db.url)}: {type(cause).__name__}: {first_line}"
    return f"Kafka {settings.kafka.bootstrap_servers}: {type(exc).__name__}: {exc}"


def _record_run(engine: Engine, report: VerifyReport, settings: AuditorSettings) -> str | None:
    """Record the run (success or failure); None when recorded, else why not."""
    finished = report.finished_at or datetime.now(UTC)
    run = VerifyRun(report.started_at, finished, report.ok, report.rows_checked, len(report.problems), report.summary())
    try:
        with write_session(engine) as session:
            record_run(session, run)
    except SQLAlchemyError as exc:
        return _why_verify_failed(settings, exc)
    return None


@app.command("replay")
def replay_cmd(
    topic: Annotated[str, typer.Option("--topic", help="The topic to replay.")],
    into: Annotated[str, typer.Option("--into", help="URL of a fresh database to rebuild the store in.")],
    start: Annotated[str | None, typer.Option("--from", help="First offset, or a time (ISO 8601 with a zone).")] = None,
    stop: Annotated[str | None, typer.Option("--to", help="Offset or time to stop before (exclusive).")] = None,
    diff: Annotated[bool, typer.Option("--diff", help="Compare the rebuilt rows with the live store.")] = False,
) -> None:
    """Rebuild a store from Kafka (by offsets, or by time) and optionally diff it with the live one."""
    settings = _settings()
    try:
        start_bound = parse_bound(start) if start is not None else None
        stop_bound = parse_bound(stop) if stop is not None else None
    except ReplayError as exc:
        raise _fail(str(exc)) from exc
    if normalise_url(into) == normalise_url(settings.db.url):
        raise _fail("--into is the live database: replay into a fresh one")
    target = DatabaseSettings(url=into, busy_timeout_ms=settings.db.busy_timeout_ms)
    into_engine = make_engine(target)
    live_engine = make_engine(settings.db)
    try:
        with _errors(settings):
            migrate.upgrade(target)
            result = asyncio.run(replay(
                kafka=settings.kafka, topics=Topics(settings.kafka.topic_prefix), topic=topic, into=into_engine,
                start=start_bound, stop=stop_bound, now=lambda: datetime.now(UTC),
            ))
            ranges = ", ".join(f"{p}:[{a},{b})" for p, (a, b) in sorted(result.ranges.items()))
            typer.echo(f"replayed {result.records} records of {topic} into {safe_url(into)} (partition:[from,to) {ranges})")
            if diff:
                difference = diff_stores(live_engine, into_engine, topic, result.ranges)
                for item in difference.differences:
                    typer.echo(f"{topic}/{item.partition}@{item.offset}: {item.what}")
                typer.echo(f"diff: {difference.compared} rows compared, {len(difference.differences)} differences")
                if not difference.equal:
                    raise typer.Exit(code=1)
    finally:
        into_engine.dispose()
        live_engine.dispose()


@app.command()
def export(
    fmt: Annotated[ExportFormat, typer.Option("--format", help="jsonl or csv.")] = ExportFormat.jsonl,
    since: Annotated[str | None, typer.Option("--since", help="Only records stamped at or after this time.")] = None,
    topic: Annotated[list[str], typer.Option("--topic", help="Only these topics (repeatable).")] = [],  # noqa: B006
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Export the audit log as JSON Lines or CSV (exit 1 when a stored value could not be read:
    it is exported as null and named on stderr)."""
    settings = _settings()
    since_time = _time(since)
    engine = make_engine(settings.db)
    out: Any = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
    unreadable: list[Problem] = []
    try:
        with _errors(settings), read_session(engine) as session:
            rows = exported_rows(session, since=since_time, topics=topic or None, unreadable=unreadable)
            count = write_jsonl(rows, out) if fmt is ExportFormat.jsonl else write_csv(rows, out)
    finally:
        engine.dispose()
        if output:
            out.close()
    for problem in unreadable:
        typer.echo(f"unreadable: {problem.describe()}", err=True)
    typer.echo(f"exported {count} records", err=True)
    if unreadable:
        raise _fail(f"{len(unreadable)} stored value(s) could not be read (exported as null; a row without "
                    "topic, partition or offset is left out): run `certrail audit verify`", code=1)
