"""The issuer's state steps alone (no Kafka, no emCA): CPU per issuance through `StateWriter`.

    .venv/bin/python -m bench.issuer_state_steps [--issuances 4000] [--in-flight 16] [--db URL]

Runs the steps `services.issuer.processor.Processor` runs for one issuance that emCA answers at once
(`begin_attempt_in`, `record_outcome_in`; ``--with-load``: `load_in` first) for ``--in-flight`` commands at a time, through one
`StateWriter`, against a fresh SQLite file (or ``--db``, migrated to head; the run deletes its rows). Prints one JSON line: the
process CPU (all threads) and wall time per issuance, the writer's groups, and the steps per issuance.
For a before/after comparison run it alternately in two trees (``PYTHONPATH=TREE``): only ratios
measured in one sitting mean anything on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete

from services.common.db import make_engine
from services.common.db_schema import IssuerOperation
from services.common.migrate import upgrade
from services.common.runtime.writer import StateWriter
from services.common.settings import DatabaseSettings
from services.issuer import state
from services.issuer.state import NewOperation, OpState, StoredRecord


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _issuances(writer: StateWriter, run: str, first: int, count: int, in_flight: int, command: str,
                     event: bytes, with_load: bool) -> None:
    semaphore = asyncio.Semaphore(in_flight)

    async def one(n: int) -> None:
        async with semaphore:
            key = f"bench-{run}-{n:08d}"
            new = NewOperation(key, "issue", f"cmd-{n}", f"cert-{n}", f"req-{n}", "bench", "certrail.commands.bench",
                               n % 3, command)
            now = datetime.now(UTC)
            record = StoredRecord("certrail.events.issuer", f"cert-{n}", event)
            if with_load:
                assert await writer.run(state.load_in, key) is None
            op, _ = await writer.run(state.begin_attempt_in, new, now)
            assert op.state is OpState.SUBMITTING
            await writer.run(state.record_outcome_in, key, OpState.ISSUED, [record], now, serial=f"{n:032x}")

    await asyncio.gather(*(one(n) for n in range(first, first + count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issuances", type=int, default=4000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--with-load", action="store_true",
                        help="run `load_in` first, as the processor did for every command before it skipped it for a "
                             "usable connector")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = DatabaseSettings(url=args.db or f"sqlite:///{Path(tmp) / 'bench.db'}")
        upgrade(settings)
        engine = make_engine(settings)
        writer = StateWriter(engine)
        run = uuid.uuid4().hex[:12]
        command = json.dumps({"specversion": "1.0", "type": "certrail.command.IssueCertificate", "data": {"csr": "x" * 900}})
        event = json.dumps({"specversion": "1.0", "type": "certrail.event.CertificateIssued",
                            "data": {"certificate": "y" * 1400, "chain": ["z" * 1300] * 2}}).encode()
        asyncio.run(_issuances(writer, run, 0, 200, args.in_flight, command, event, args.with_load))  # warm-up: caches, statements
        start_cpu, start = _cpu(), time.perf_counter()
        groups, steps = writer.groups, writer.steps
        asyncio.run(_issuances(writer, run, 200, args.issuances, args.in_flight, command, event, args.with_load))
        cpu, wall = _cpu() - start_cpu, time.perf_counter() - start
        with engine.begin() as conn:  # leave a shared --db as it was
            conn.execute(delete(IssuerOperation).where(IssuerOperation.op_key.like(f"bench-{run}-%")))
        engine.dispose()
    print(json.dumps({
        "issuances": args.issuances, "in_flight": args.in_flight, "pythonpath": os.environ.get("PYTHONPATH", ""),
        "cpu_us_per_issuance": round(cpu / args.issuances * 1e6, 1),
        "wall_us_per_issuance": round(wall / args.issuances * 1e6, 1),
        "groups": writer.groups - groups, "steps_per_issuance": round((writer.steps - steps) / args.issuances, 2),
    }))


if __name__ == "__main__":
    main()
