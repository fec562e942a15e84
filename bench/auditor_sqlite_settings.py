"""The audit table's INSERT and COMMIT on SQLite under the connection settings
the auditor can choose (services/auditor/sql.py `tune_for_ingest`), without
Kafka, Python row building or the inventory: what SQLite itself costs per row.

    .venv/bin/python -m bench.auditor_sqlite_settings --records 100000 --rounds 4

The rows are the ingest benchmark's records (bench/auditor_ingest.py), prepared
and bound as the auditor binds them, inserted in batches of 2,000 (one
``BEGIN IMMEDIATE`` ... ``COMMIT`` each) into a fresh, migrated database file
per run. Each round runs every variant once, in the same order; a variant is
compared with the baseline of the same round (paired ratios, then the median),
because this machine's speed drifts by tens of percent within minutes.
Prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.auditor_ingest import lifecycle_records
from services.auditor.records import RawRecord, prepare_batch
from services.auditor.sql import INGEST_CACHE_KIB, INGEST_WAL_AUTOCHECKPOINT_PAGES, sqlite_utc
from services.auditor.store import INSERT_COLUMNS, _row
from services.common.contracts.envelope import CONTENT_TYPE, CONTENT_TYPE_HEADER
from services.common.contracts.topics import Topics
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings

_CACHE_AND_CHECKPOINTS = [f"PRAGMA cache_size = -{INGEST_CACHE_KIB}", f"PRAGMA wal_autocheckpoint = {INGEST_WAL_AUTOCHECKPOINT_PAGES}"]
VARIANTS: dict[str, list[str]] = {
    "services/common/db.py (synchronous=NORMAL)": [],
    "synchronous=FULL": ["PRAGMA synchronous = FULL"],
    "cache 64 MiB + wal_autocheckpoint 8192 (the auditor's tune_for_ingest)": _CACHE_AND_CHECKPOINTS,
    "all three": ["PRAGMA synchronous = FULL", *_CACHE_AND_CHECKPOINTS],
}
BATCH = 2000


def bound_rows(records: int, partitions: int = 6) -> list[tuple[object, ...]]:
    topics = Topics("bench.certrail")
    offsets: dict[tuple[str, int], int] = {}
    raws = []
    headers = ((CONTENT_TYPE_HEADER, CONTENT_TYPE.encode()),)
    for i, (topic, key, value) in enumerate(lifecycle_records(topics, records // 5)):
        partition = (i // 5) % partitions
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        raws.append(RawRecord(topic, partition, offset, 1_768_467_600_000 + i, 0, key, value, headers))
    stored_at = sqlite_utc(datetime.now(UTC))
    return [_row(e, e.offset - 1 if e.offset else None, "0" * 64, None, stored_at, sqlite_utc) for e in prepare_batch(raws)]


def run(rows: list[tuple[object, ...]], pragmas: list[str]) -> tuple[float, float]:
    """(wall, CPU) µs per row for inserting and committing ``rows`` in batches."""
    with tempfile.TemporaryDirectory(prefix="certrail-bench-sqlite-") as tmp:
        path = Path(tmp) / "audit.db"
        upgrade(DatabaseSettings(url=f"sqlite:///{path}"))
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            for pragma in ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL", *pragmas]:
                conn.execute(pragma)
            columns = ", ".join(f'"{c}"' for c in INSERT_COLUMNS)
            sql = f"INSERT INTO audit_records ({columns}) VALUES ({', '.join('?' * len(INSERT_COLUMNS))})"
            wall = cpu = 0.0
            for start in range(0, len(rows), BATCH):
                w0, c0 = time.perf_counter(), time.process_time()
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(sql, rows[start : start + BATCH])
                conn.execute("COMMIT")
                wall += time.perf_counter() - w0
                cpu += time.process_time() - c0
        finally:
            conn.close()
    return wall / len(rows) * 1e6, cpu / len(rows) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    rows = bound_rows(args.records)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, pragmas in VARIANTS.items():
            results[name].append(run(rows, pragmas))
    baseline = results[next(iter(VARIANTS))]
    for name, values in results.items():
        print(json.dumps({
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "variant": name, "records": len(rows),
            "sqlite": sqlite3.sqlite_version,
            "wall_us_per_row": round(statistics.median(v[0] for v in values), 1),
            "cpu_us_per_row": round(statistics.median(v[1] for v in values), 1),
            "wall_vs_baseline": round(statistics.median(v[0] / b[0] for v, b in zip(values, baseline, strict=True)), 2),
            "cpu_vs_baseline": round(statistics.median(v[1] / b[1] for v, b in zip(values, baseline, strict=True)), 2),
            "wall_ratios": [round(v[0] / b[0], 2) for v, b in zip(values, baseline, strict=True)],
        }))


if __name__ == "__main__":
    main()
