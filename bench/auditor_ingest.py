"""Auditor ingest rate: records stored per second by the real consumer loop,
from a real Kafka broker into SQLite or PostgreSQL.

    .venv/bin/python -m bench.auditor_ingest --records 100000 --db sqlite
    .venv/bin/python -m bench.auditor_ingest --records 100000 --db postgresql+psycopg://certrail:certrail@127.0.0.1/certrail

The broker is ``KAFKA_BOOTSTRAP_SERVERS`` when set, else a LocalKafka started
on free ports for the run (its jars from ``.cache``). The records are a
realistic certificate lifecycle, five records per certificate, all valid and
signed the way the services publish them: IssueRequested (certrail.requests,
with a CSR), RequestAccepted, IssueCertificate (the connector's command
topic), CertificateIssued (a leaf and its chain), CertificateDeployed; about
1.0 KiB on average. They are produced first (not timed), then one
auditor consumer (AuditConsumer, the service's loop: one transaction per
batch, what was fetched while the last one was stored, offsets committed after
it, chains, duplicate links, inventory) reads them all. Reported: wall time from the first stored batch to
the last (steady state) and from the consumer's start (including the group
join), records/s, and the process's CPU time per record.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text

from services.auditor.app import prepare_pool_factory
from services.auditor.checkpoints import Checkpointer
from services.auditor.consumer_loop import AuditConsumer, LoopSettings
from services.auditor.keys import load_or_create_signing_key
from services.auditor.metrics import AuditMetrics
from services.auditor.settings import AuditorSettings
from services.auditor.sql import tune_for_ingest
from services.common.contracts import commands, events, requests
from services.common.contracts.envelope import CONTENT_TYPE, CONTENT_TYPE_HEADER, encode, make_event
from services.common.contracts.fields import RequestAuth, RequestKind
from services.common.contracts.identity import issuance_id, message_id
from services.common.contracts.topics import Topics
from services.common.db import make_engine, normalise_url
from services.common.kafka_config import producer_kwargs
from services.common.kafka_local import DEFAULT_KAFKA_VERSION, LocalKafka
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.topics_admin import delete_topics, ensure_topics

REPO = Path(__file__).resolve().parents[1]
CONNECTOR = "emca-bench"
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (its threads included), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _children() -> list[int]:
    """The pids of this process's children (the prepare workers and the pool's helpers)."""
    pids: list[int] = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        pids.extend(int(p) for p in (task / "children").read_text().split())
    return pids


def _cpu_snapshot() -> dict[int, float]:
    snapshot = {os.getpid(): _cpu_s(os.getpid())}
    for pid in _children():
        try:
            snapshot[pid] = _cpu_s(pid)
        except OSError:  # exited meanwhile
            pass
    return snapshot


def _free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def lifecycle_records(topics: Topics, certificates: int) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) for ``certificates`` certificate lifecycles, five records each."""
    from tests.unit.examples import SERIAL, certificate_pem, key_and_csr

    _, csr = key_and_csr()
    cert = certificate_pem()
    now = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
    auth = RequestAuth(scheme="hmac-sha256", key_id="ci-pipeline-1", signature="c2lnbmF0dXJlLWJ5dGVzLWhlcmU=")
    out: list[tuple[str, bytes, bytes]] = []
    for i in range(certificates):
        cert_id = f"svc-{i}.bench.example.com"
        request_id = f"req-{i}"
        iid = issuance_id(cert_id, 1)
        serial = format(int(SERIAL, 16) + i, "x")
        sans = [f"dns:{cert_id}"]
        # every certificate's events at their own instants (microseconds included), as the services publish them:
        # no two records share an event time, validity or deployment time
        start = now + timedelta(microseconds=1_234_567 * i)
        steps = [
            (
                topics.requests,
                requests.IssueRequested(
                    request_id=request_id,
                    requester="ci-pipeline",
                    profile="web",
                    certificate_id=cert_id,
                    csr=csr,
                    sans=sans,
                    auth=auth,
                ),
            ),
            (
                topics.gateway_events,
                events.RequestAccepted(
                    request_id=request_id,
                    requester="ci-pipeline",
                    kind=RequestKind.ISSUE,
                    certificate_id=cert_id,
                    profile="web",
                    connector=CONNECTOR,
                    issuance_id=iid,
                ),
            ),
            (
                topics.commands(CONNECTOR),
                commands.IssueCertificate(
                    issuance_id=iid,
                    certificate_id=cert_id,
                    revision=1,
                    request_id=request_id,
                    connector=CONNECTOR,
                    profile="web",
                    ca_profile="TLS Server",
                    csr=csr,
                    sans=sans,
                ),
            ),
            (
                topics.issuer_events,
                events.CertificateIssued(
                    issuance_id=iid,
                    certificate_id=cert_id,
                    request_id=request_id,
                    connector=CONNECTOR,
                    profile="web",
                    serial=serial,
                    certificate=cert,
                    chain=[cert],
                    subject=f"CN={cert_id}",
                    issuer="CN=Issuing CA 1",
                    sans=sans,
                    not_before=start,
                    not_after=start + timedelta(days=90),
                    public_key_sha256="ab" * 32,
                ),
            ),
            (
                topics.deployer_events,
                events.CertificateDeployed(
                    certificate_id=cert_id,
                    serial=serial,
                    target=events.TargetRef(name="web-nginx", kind="nginx"),
                    verified_serial=serial,
                    deployed_at=start + timedelta(milliseconds=3_301),
                ),
            ),
        ]
        cause = request_id
        for step, (topic, data) in enumerate(steps):
            event_id = message_id(cause, data.TYPE)
            value = encode(
                make_event(
                    data,
                    id=event_id,
                    source="/certrail/bench",
                    time=start + timedelta(microseconds=734_113 * step),
                    subject=cert_id,
                    correlationid=request_id,
                    causationid=cause,
                )
            )
            out.append((topic, cert_id.encode(), value))
            cause = event_id
    return out


@contextmanager
def kafka_broker(tmp: Path, broker_pid: int | None = None) -> Iterator[tuple[str, int | None]]:
    """The bootstrap servers and the broker's pid: ``KAFKA_BOOTSTRAP_SERVERS`` (with ``broker_pid``, whose CPU the
    caller may read) when set, else a LocalKafka on free ports under ``tmp`` (without SASL: the benches' clients
    bring no credentials), stopped at the end."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield external, broker_pid
        return
    port, controller = _free_ports(2)
    broker = LocalKafka(
        version=DEFAULT_KAFKA_VERSION,
        cache_dir=REPO / ".cache",
        data_dir=tmp / "kafka",
        port=port,
        controller_port=controller,
        heap_max="1g",
        authentication=False,
    )
    if not broker.is_fetched():
        broker.fetch()
    status = broker.start(wait_timeout=120)
    try:
        yield broker.bootstrap_servers, status.pid
    finally:
        broker.stop()


async def produce(settings: KafkaSettings, records: list[tuple[str, bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(**{**producer_kwargs(settings), "linger_ms": 5, "max_batch_size": 512 * 1024})
    await producer.start()
    started = time.perf_counter()
    try:
        headers = [(CONTENT_TYPE_HEADER, CONTENT_TYPE.encode())]
        pending = []
        for topic, key, value in records:
            pending.append(await producer.send(topic, value, key=key, headers=headers))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def consume(
    kafka: KafkaSettings, db: DatabaseSettings, topics: Topics, total: int, batch: int, key_dir: Path, processes: int
) -> dict[str, float]:
    engine = make_engine(db)
    tune_for_ingest(engine)  # as create_app does
    registry = CollectorRegistry()
    metrics = AuditMetrics(registry, topics)
    published: list[int] = []

    async def publish(messages):  # type: ignore[no-untyped-def]
        published.append(len(messages))

    key = load_or_create_signing_key(key_dir / "bench-key.pem")
    checkpointer = Checkpointer(
        key, auditor="bench", group_id="bench", topics=topics, publish=publish, clock=lambda: datetime.now(UTC)
    )
    loop = AuditConsumer(
        kafka=kafka,
        settings=LoopSettings(group_id=f"bench-{uuid.uuid4().hex[:8]}", max_batch_records=batch),
        topics=topics,
        engine=engine,
        metrics=metrics,
        checkpointer=checkpointer,
        clock=lambda: datetime.now(UTC),
        prepare_pool=prepare_pool_factory(processes) if processes else None,
    )
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    task = asyncio.create_task(loop.run())
    first_batch_at = None
    first_batch_records = 0
    cpu_first: dict[int, float] = {}
    try:
        while loop.records_stored < total:
            if task.done():
                task.result()
                raise RuntimeError("the consumer loop ended early")
            if first_batch_at is None and loop.records_stored:
                first_batch_at, first_batch_records = time.perf_counter(), loop.records_stored
                cpu_first = _cpu_snapshot()
            await asyncio.sleep(0.005)
        finished = time.perf_counter()
        cpu_last = _cpu_snapshot()  # before the pool shuts down
    finally:
        loop.stop()
        await task
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    await checkpointer.publish(final=True)
    engine.dispose()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    assert first_batch_at is not None
    steady = finished - first_batch_at
    steady_records = total - first_batch_records
    main_pid = os.getpid()
    workers_s = sum(cpu_last[pid] - cpu_first.get(pid, 0.0) for pid in cpu_last if pid != main_pid)
    return {
        "records": total,
        "wall_s_total": finished - started,
        "wall_s_steady": steady,
        "records_per_s_total": total / (finished - started),
        "records_per_s_steady": steady_records / steady if steady > 0 else float("nan"),
        "cpu_us_per_record": cpu / total * 1e6,
        # the steady window only (first stored batch to the last), from /proc: this process, its worker processes
        "steady_main_cpu_us_per_record": (cpu_last[main_pid] - cpu_first[main_pid]) / steady_records * 1e6,
        "steady_workers_cpu_us_per_record": workers_s / steady_records * 1e6,
        "batches": loop.batches_stored,
        "store_s": registry.get_sample_value("certrail_audit_commit_duration_seconds_sum") or 0.0,
        "offset_commit_s": registry.get_sample_value("certrail_audit_offset_commit_duration_seconds_sum") or 0.0,
    }


def _db_settings(choice: str, tmp: Path, sqlite_dir: Path | None, stack: ExitStack) -> tuple[DatabaseSettings, str]:
    if choice == "sqlite":
        where = Path(tempfile.mkdtemp(prefix="certrail-bench-db-", dir=sqlite_dir)) if sqlite_dir else tmp
        return DatabaseSettings(
            url=f"sqlite:///{where / 'bench.db'}"
        ), f"sqlite (file in {where.parent}, WAL, synchronous=NORMAL)"
    url = normalise_url(choice)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        version = conn.execute(text("SHOW server_version")).scalar()

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    stack.callback(drop)
    url = url.update_query_dict({"options": f"-csearch_path={schema}"})
    return DatabaseSettings(
        url=url.render_as_string(hide_password=False)
    ), f"PostgreSQL {version} (a schema of its own, dropped after)"


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="certrail-bench-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        bootstrap, _pid = stack.enter_context(kafka_broker(tmp))
        kafka = KafkaSettings(
            bootstrap_servers=bootstrap,
            topic_prefix=f"bench{uuid.uuid4().hex[:6]}.certrail",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
        )
        topics = Topics(kafka.topic_prefix)
        names = [*topics.fixed(), topics.commands(CONNECTOR)]
        await ensure_topics(kafka, names, partitions=args.partitions)
        try:
            records = lifecycle_records(topics, args.records // 5)
            produce_s = await produce(kafka, records)
            for db_choice in args.db:
                db, db_label = _db_settings(db_choice, tmp, args.sqlite_dir, stack)
                upgrade(db)
                gc.collect()
                gc.freeze()  # the generated records are the benchmark's, not the auditor's: keep them out of GC passes
                result = await consume(kafka, db, topics, len(records), args.batch, tmp, args.prepare_processes)
                size = sum(len(v) for _, _, v in records) / len(records)
                print(
                    json.dumps(
                        {
                            "date": datetime.now(UTC).isoformat(timespec="seconds"),
                            "db": db_label,
                            "partitions": args.partitions,
                            "max_batch_records": args.batch,
                            "prepare_processes": args.prepare_processes,
                            "avg_record_bytes": round(size),
                            "produce_s": round(produce_s, 2),
                            "python": platform.python_version(),
                            "loadavg_1m": os.getloadavg()[0],
                            **{k: round(v, 2) for k, v in result.items()},
                        }
                    )
                )
        finally:
            await delete_topics(kafka, names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="records to ingest (a multiple of 5)")
    parser.add_argument(
        "--db", action="append", default=None, help="'sqlite' (a temporary file) or a PostgreSQL URL; repeat to run on several"
    )
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--sqlite-dir", type=Path, default=None, help="where the SQLite file goes (default: a temporary dir)")
    parser.add_argument("--batch", type=int, default=2000, help="max records per fetched batch")
    parser.add_argument(
        "--prepare-processes",
        type=int,
        default=AuditorSettings().effective_prepare_processes(),
        help="worker processes preparing batches (0: in the writer thread; default: as the service)",
    )
    args = parser.parse_args()
    if args.records <= 2 * args.batch:  # the steady window runs from the first stored batch to the last
        parser.error(f"--records must be more than twice --batch ({args.batch}): a run of one or two batches has no "
                     "steady state to measure")
    args.db = args.db or ["sqlite"]
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
