"""Four processes write one SQLite file at once: no "database is locked", no lost rows.

This is the embedded deployment of DESIGN.md ("One database, several
processes"): four services, each its own process with its own engine from
``make_engine``. The test runs this file as four worker subprocesses, which
take commands (one JSON line each) on stdin and answer with one JSON line on
stdout. A command is sent to all four before any answer is read, so their work
starts together (a start barrier) and really overlaps -- which the load test
also checks from the timestamps they report. Workers catch and report every
exception instead of stopping at the first.

- ``fresh``: several services starting together on a database file that does
  not exist yet: each builds its engine, runs the migrations and records its
  heartbeat (repeated over many new files, since the race is a narrow one).
- ``load``: many small write transactions per worker (a new row each, plus a
  read-then-upsert of one row that all four fight over) and a read after each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from services.common import migrate
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import ServiceHeartbeat, list_heartbeats, record_heartbeat
from services.common.settings import DatabaseSettings

WORKERS = 4
ITERATIONS = 300
FRESH_ROUNDS = 40
ANSWER_TIMEOUT_SECONDS = 90
T0 = datetime(2025, 3, 1, tzinfo=UTC)


class Workers:
    """Four worker subprocesses running this file."""

    def __init__(self) -> None:
        self.procs = [
            subprocess.Popen(
                # -W error: a warning in a worker fails it, as in the test run itself.
                [sys.executable, "-W", "error", __file__, str(worker)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for worker in range(WORKERS)
        ]
        for proc in self.procs:
            self._expect(proc, "ready")

    def broadcast(self, command: dict[str, Any]) -> list[dict[str, Any]]:
        """Send ``command`` to every worker, then collect their answers."""
        line = json.dumps(command) + "\n"
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line)
            proc.stdin.flush()
        return [json.loads(self._expect(proc)) for proc in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()  # EOF: the worker exits
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def _expect(self, proc: subprocess.Popen[str], expected: str | None = None) -> str:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # '' (EOF) if the worker died
        if not line or (expected is not None and line.strip() != expected):
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"worker failed (rc={proc.returncode}), said {line!r}:\n{err}")
        return line


@pytest.fixture(scope="module")
def workers() -> Iterator[Workers]:
    pool = Workers()
    try:
        yield pool
    finally:
        pool.close()


def _heartbeats(url: str) -> list[Any]:
    engine = make_engine(DatabaseSettings(url=url))
    try:
        with read_session(engine) as session:
            return list_heartbeats(session)
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.timeout(120)  # bounds the reads from the workers' pipes too
def test_services_starting_together_on_a_fresh_file(workers: Workers, tmp_path: Path) -> None:
    errors: list[str] = []
    for round_ in range(FRESH_ROUNDS):
        url = f"sqlite:///{tmp_path / f'fresh-{round_}' / 'certrail.db'}"
        results = workers.broadcast({"cmd": "fresh", "url": url})
        errors += [f"round {round_}: {error}" for result in results for error in result["errors"]]
        if not errors:
            assert {h.service for h in _heartbeats(url)} == {f"worker-{w}" for w in range(WORKERS)}
    assert errors == [], f"{len(errors)} errors, e.g. {errors[:3]}"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_four_processes_write_one_sqlite_file(workers: Workers, tmp_path: Path) -> None:
    settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    migrate.upgrade(settings)

    results = workers.broadcast({"cmd": "load", "url": settings.url, "iterations": ITERATIONS})

    errors = [error for result in results for error in result["errors"]]
    locked = [error for error in errors if "database is locked" in error]
    assert locked == [], f"{len(locked)} 'database is locked' errors, e.g. {locked[:3]}"
    assert errors == [], f"{len(errors)} errors, e.g. {errors[:5]}"

    # The workers really ran at the same time.
    assert max(r["started"] for r in results) < min(r["finished"] for r in results)

    heartbeats = _heartbeats(settings.url)
    by_service: dict[str, set[str]] = {}
    for heartbeat in heartbeats:
        by_service.setdefault(heartbeat.service, set()).add(heartbeat.instance_id)
    for worker in range(WORKERS):
        assert by_service[f"worker-{worker}"] == {f"{i:04d}" for i in range(ITERATIONS)}
    assert by_service["shared"] == {"hot"}
    assert len(heartbeats) == WORKERS * ITERATIONS + 1
    (hot,) = [h for h in heartbeats if h.service == "shared"]
    assert hot.pid in {result["pid"] for result in results}


# --- the worker side -----------------------------------------------------------


def _fresh(worker: int, url: str) -> dict[str, Any]:
    """A service starting on a database that may not exist yet."""
    errors: list[str] = []
    settings = DatabaseSettings(url=url)
    try:
        migrate.upgrade(settings)
        engine = make_engine(settings)
        try:
            with write_session(engine) as session:
                record_heartbeat(
                    session, f"worker-{worker}", "1", pid=os.getpid(), hostname="test", version="1", started_at=T0
                )
        finally:
            engine.dispose()
    except Exception as exc:  # reported to, and asserted on by, the test
        errors.append(f"{type(exc).__name__}: {exc}")
    return {"errors": errors}


def _load(worker: int, url: str, iterations: int) -> dict[str, Any]:
    """One service process: many small write transactions and reads, every error kept."""
    errors: list[str] = []
    started = time.time()
    engine = make_engine(DatabaseSettings(url=url))
    service = f"worker-{worker}"
    pid = os.getpid()
    for i in range(iterations):
        now = datetime.now(UTC)
        try:
            with write_session(engine) as session:
                record_heartbeat(
                    session, service, f"{i:04d}", pid=pid, hostname="test", version="1", started_at=T0, now=now
                )
        except Exception as exc:
            errors.append(f"insert {i}: {type(exc).__name__}: {exc}")
        try:
            # Read, then write, in one transaction: the pattern that fails at
            # once with "database is locked" if write transactions begin deferred.
            with write_session(engine) as session:
                session.get(ServiceHeartbeat, ("shared", "hot"))
                record_heartbeat(
                    session, "shared", "hot", pid=pid, hostname="test", version="1", started_at=T0, now=now
                )
        except Exception as exc:
            errors.append(f"upsert {i}: {type(exc).__name__}: {exc}")
        try:
            with read_session(engine) as session:
                mine = session.scalar(
                    select(func.count()).select_from(ServiceHeartbeat).where(ServiceHeartbeat.service == service)
                )
            if mine != i + 1:
                errors.append(f"read {i}: saw {mine} of my rows, expected {i + 1}")
        except Exception as exc:
            errors.append(f"read {i}: {type(exc).__name__}: {exc}")
    finished = time.time()
    engine.dispose()
    return {"pid": pid, "errors": errors, "started": started, "finished": finished}


def _serve(worker: int) -> None:
    print("ready", flush=True)
    for line in sys.stdin:  # until EOF
        command = json.loads(line)
        if command["cmd"] == "fresh":
            result = _fresh(worker, command["url"])
        elif command["cmd"] == "load":
            result = _load(worker, command["url"], command["iterations"])
        else:
            raise SystemExit(f"unknown command {command!r}")
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
