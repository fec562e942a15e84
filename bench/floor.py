"""The CPU floor per certificate: what the work the design cannot avoid costs on this machine, with the libraries
the stack uses and no certrail business logic in between (issue 18's budget: the four services <= 3 ms of CPU per
certificate, the Kafka broker <= 0.5 ms).

    .venv/bin/python -m bench.floor --records 20000 [--json FILE]

The records are bench/auditor_ingest.py's certificate lifecycles (five records per certificate, signed as the
services publish them, ~1 KiB on average), built before any clock starts. One run measures, in order:

1. **produce**: an idempotent aiokafka producer (acks=all, ``producer_kwargs`` of a default ``KafkaSettings``)
   sends the N records to their five topics the way the services do: ``send()`` a batch of ``--batch`` records,
   then await their futures together. Client CPU per record and the broker's CPU per record over the phase.
2. **consume**: an aiokafka group consumer (``consumer_kwargs``) reads them back with ``getmany(max_records=
   --batch)`` and commits the offsets after every batch; timed from the group's assignment to the N-th record.
3. **decode**: ``envelope.decode(value, CATALOG)`` of each of the five types; **encode**: ``envelope.encode`` of
   the four types the services produce (the decoded envelopes, built untimed).
4. **db insert**: stdlib ``sqlite3`` on a temporary file (WAL, synchronous=NORMAL), rows of ~1 KiB (the records'
   values) into a table with an integer primary key and no other index, ``executemany`` in transactions of
   ``--rows-per-tx`` rows; and the same rows through SQLAlchemy Core (``connection.execute(insert(table), rows)``).
5. **crypto** (``cryptography``, EC P-256): load a CSR PEM and check its signature (``is_signature_valid``); load a
   certificate PEM and check its signature by the CA's public key (``ca_pub.verify``, ECDSA-SHA256). One CSR and
   one certificate per record, made untimed.

Before the clocks, ``--warmup`` records (5,000 by default, at most N) are produced and consumed the same way on
topics of their own, untimed: the broker's JIT compiles its hot paths, the consumer offsets topic is created.
Client CPU is ``time.process_time`` (user + system, every thread) of this process around each phase. The broker's
is the JVM's utime+stime from ``/proc/<pid>/stat`` (a LocalKafka started on free ports, its jars from ``.cache``;
with ``KAFKA_BOOTSTRAP_SERVERS`` an existing broker, whose CPU is measured only with ``--broker-pid``). The
broker's idle rate, measured over ``--idle-seconds`` before the phases, is subtracted from each phase's CPU.
``/proc`` counts in clock ticks (10 ms): a small ``--records`` gives coarse broker figures.

Then the floor per certificate: the service work (consume x10, produce x4, the decodes of each service, encode x4,
23 row writes at the insert figure, 1 CSR check and 2 certificate checks) beside the 3 ms budget, and the broker's
(5 records produced, 10 consumed) beside its 0.5 ms. The counts are printed so the sum can be redone by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shlex
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, create_engine, event, insert

from bench.auditor_ingest import kafka_broker, lifecycle_records
from bench.emca_sim_issuance import process_cpu_seconds
from bench.pipeline import machine
from services.common.contracts import commands, events, requests
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import Envelope, declared_type, decode, encode, record_headers
from services.common.contracts.topics import Topics
from services.common.kafka_config import consumer_kwargs, producer_kwargs
from services.common.settings import KafkaSettings
from services.common.topics_admin import DEFAULT_PARTITIONS, delete_topics, ensure_topics

# --- what one certificate costs, in units of work ------------------------------------------------------------

ISSUE_REQUESTED = requests.IssueRequested.TYPE
REQUEST_ACCEPTED = events.RequestAccepted.TYPE
ISSUE_CERTIFICATE = commands.IssueCertificate.TYPE
CERTIFICATE_ISSUED = events.CertificateIssued.TYPE
CERTIFICATE_DEPLOYED = events.CertificateDeployed.TYPE
SERVICES_BUDGET_MS = 3.0  # issue 18: the four services together, CPU per certificate
BROKER_BUDGET_MS = 0.5  # issue 18: the Kafka broker
LIFECYCLE = (ISSUE_REQUESTED, REQUEST_ACCEPTED, ISSUE_CERTIFICATE, CERTIFICATE_ISSUED, CERTIFICATE_DEPLOYED)


@dataclass(frozen=True)
class Counts:
    """Units of unavoidable work per certificate (from a real run's audit store; issue 18)."""

    #: the record types each service consumes (and so decodes)
    consumed_by: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "gateway": (ISSUE_REQUESTED, CERTIFICATE_ISSUED),
            "issuer": (ISSUE_CERTIFICATE,),
            "deployer": (REQUEST_ACCEPTED, CERTIFICATE_ISSUED),
            "auditor": LIFECYCLE,
        }
    )
    #: the record types the services produce (and so encode); the client produces IssueRequested
    produced: tuple[str, ...] = (REQUEST_ACCEPTED, ISSUE_CERTIFICATE, CERTIFICATE_ISSUED, CERTIFICATE_DEPLOYED)
    row_inserts: int = 17
    row_updates: int = 6
    csr_checks: int = 1  # the gateway
    certificate_checks: int = 2  # the issuer and the deployer
    broker_produced: int = 5  # every record of the lifecycle, the client's included
    broker_consumed: int = 10  # the services' reads

    @property
    def consumed(self) -> int:
        return sum(len(types) for types in self.consumed_by.values())

    def decodes(self) -> dict[str, int]:
        """How many times each type is decoded per certificate, over all services."""
        out: dict[str, int] = {}
        for types in self.consumed_by.values():
            for t in types:
                out[t] = out.get(t, 0) + 1
        return out

    @property
    def row_writes(self) -> int:
        return self.row_inserts + self.row_updates

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "consumed": self.consumed, "decodes": self.decodes(), "row_writes": self.row_writes}


@dataclass(frozen=True)
class Figures:
    """Measured CPU in microseconds per unit (None: not measured)."""

    produce_us: float  # client, per record produced
    consume_us: float  # client, per record consumed
    decode_us: Mapping[str, float]  # per record, by type
    encode_us: Mapping[str, float]  # per record, by type
    row_us: float  # per row inserted (raw sqlite3)
    csr_check_us: float  # load a CSR + check its signature
    certificate_check_us: float  # load a certificate + check its signature by the CA
    broker_produce_us: float | None = None  # broker, per record produced (idle subtracted)
    broker_consume_us: float | None = None  # broker, per record consumed (idle subtracted)


@dataclass(frozen=True)
class Line:
    item: str
    count: int
    us_each: float

    @property
    def ms_per_certificate(self) -> float:
        return self.count * self.us_each / 1000


@dataclass(frozen=True)
class Floor:
    services: list[Line]
    broker: list[Line]

    @property
    def services_ms(self) -> float:
        return sum(line.ms_per_certificate for line in self.services)

    @property
    def broker_ms(self) -> float | None:
        return sum(line.ms_per_certificate for line in self.broker) if self.broker else None


def floor_per_certificate(figures: Figures, counts: Counts) -> Floor:
    """The services' and the broker's CPU floor per certificate: each unit of work times its measured cost."""
    services = [
        Line("consume (client)", counts.consumed, figures.consume_us),
        Line("produce (client)", len(counts.produced), figures.produce_us),
    ]
    for message_type, n in sorted(counts.decodes().items(), key=lambda item: LIFECYCLE.index(item[0])):
        services.append(Line(f"decode {message_type}", n, figures.decode_us[message_type]))
    services += [Line(f"encode {t}", 1, figures.encode_us[t]) for t in counts.produced]
    services += [
        Line("row write (insert figure)", counts.row_writes, figures.row_us),
        Line("CSR load + signature check", counts.csr_checks, figures.csr_check_us),
        Line("certificate load + CA signature check", counts.certificate_checks, figures.certificate_check_us),
    ]
    broker: list[Line] = []
    if figures.broker_produce_us is not None and figures.broker_consume_us is not None:
        broker = [
            Line("broker: record produced", counts.broker_produced, figures.broker_produce_us),
            Line("broker: record consumed", counts.broker_consumed, figures.broker_consume_us),
        ]
    return Floor(services, broker)


def net_of_idle(spent_s: float, wall_s: float, idle_cores: float) -> float:
    """CPU seconds a phase cost beyond the process's idle rate (``idle_cores``: CPU seconds per second)."""
    return spent_s - idle_cores * wall_s


# --- clocks -----------------------------------------------------------------------------------------------


@dataclass
class Phase:
    """Client CPU (this process), wall time and the broker's CPU over one phase."""

    client_s: float = 0.0
    wall_s: float = 0.0
    broker_s: float | None = None


class Clock:
    def __init__(self, broker_pid: int | None) -> None:
        self.broker_pid = broker_pid

    def _broker(self) -> float | None:
        return process_cpu_seconds(self.broker_pid) if self.broker_pid is not None else None

    @contextmanager
    def phase(self) -> Iterator[Phase]:
        phase = Phase()
        broker0, wall0, cpu0 = self._broker(), time.perf_counter(), time.process_time()
        yield phase
        phase.client_s, phase.wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
        broker1 = self._broker()
        if broker0 is not None and broker1 is not None:
            phase.broker_s = broker1 - broker0


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def cpu_us_per(units: int, run: Callable[[], object]) -> float:
    """CPU microseconds of this process per unit while ``run()`` does ``units`` units of work."""
    cpu0 = time.process_time()
    run()
    return (time.process_time() - cpu0) / units * 1e6


# --- Kafka ------------------------------------------------------------------------------------------------


Record = tuple[str, bytes, bytes, list[tuple[str, bytes]]]  # topic, key, value, headers


async def produce(settings: KafkaSettings, records: Sequence[Record], batch: int, clock: Clock) -> Phase:
    producer = AIOKafkaProducer(**producer_kwargs(settings))
    await producer.start()
    try:
        for topic in dict.fromkeys(r[0] for r in records):
            await producer.partitions_for(topic)  # the metadata, before the clock
        with clock.phase() as phase:
            for start in range(0, len(records), batch):
                futures = [
                    await producer.send(topic, value, key=key, headers=headers)
                    for topic, key, value, headers in records[start : start + batch]
                ]
                await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return phase


async def consume(settings: KafkaSettings, topics: Sequence[str], total: int, batch: int, clock: Clock) -> Phase:
    consumer = AIOKafkaConsumer(*topics, **consumer_kwargs(settings, group_id=f"floor-{uuid.uuid4().hex[:8]}"))
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while not consumer.assignment():  # the group join, before the clock
            if time.monotonic() > deadline:
                raise RuntimeError("the consumer got no assignment within 60 s")
            await asyncio.sleep(0.01)
        seen = 0
        with clock.phase() as phase:
            stalled_at = time.monotonic() + 60
            while seen < total:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=batch)
                n = sum(len(r) for r in fetched.values())
                if n:
                    await consumer.commit()
                    seen += n
                    stalled_at = time.monotonic() + 60
                elif time.monotonic() > stalled_at:
                    raise RuntimeError(f"no record for 60 s after {seen} of {total}")
        if seen != total:
            raise RuntimeError(f"read {seen} records, {total} were produced")
    finally:
        await consumer.stop()
    return phase


def wait_for_idle_rate(clock: Clock, seconds: float) -> float:
    """The broker's idle CPU rate (cores) over ``seconds``."""
    with clock.phase() as phase:
        time.sleep(seconds)
    return (phase.broker_s or 0.0) / phase.wall_s


# --- contracts --------------------------------------------------------------------------------------------


def codec_figures(values_by_type: Mapping[str, Sequence[bytes]], produced: Sequence[str]) -> tuple[dict[str, float], dict[str, float]]:
    """(decode µs per record by type, encode µs per record by type)."""
    decode_us: dict[str, float] = {}
    encode_us: dict[str, float] = {}
    for message_type, values in values_by_type.items():
        for value in values[:20]:  # warm-up: the envelope model of the type
            decode(value, CATALOG)
        decode_us[message_type] = cpu_us_per(len(values), _decoding(values))
        if message_type in produced:
            envelopes = [decode(v, CATALOG) for v in values]
            for envelope in envelopes[:20]:
                encode(envelope)
            encode_us[message_type] = cpu_us_per(len(envelopes), _encoding(envelopes))
    return decode_us, encode_us


def _decoding(values: Sequence[bytes]) -> Callable[[], None]:
    def run() -> None:
        for value in values:
            decode(value, CATALOG)

    return run


def _encoding(envelopes: Sequence[Envelope]) -> Callable[[], None]:
    def run() -> None:
        for envelope in envelopes:
            encode(envelope)

    return run


# --- database ---------------------------------------------------------------------------------------------


def sqlite_rows_us(path: Path, rows: Sequence[tuple[int, str, bytes]], per_tx: int) -> float:
    """Raw sqlite3: CPU µs per row inserted, ``per_tx`` rows per transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, key TEXT NOT NULL, payload BLOB NOT NULL)")

        def run() -> None:
            for start in range(0, len(rows), per_tx):
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO rows (id, key, payload) VALUES (?, ?, ?)", rows[start : start + per_tx])
                conn.execute("COMMIT")

        return cpu_us_per(len(rows), run)
    finally:
        conn.close()


def sqlalchemy_rows_us(path: Path, rows: Sequence[tuple[int, str, bytes]], per_tx: int) -> float:
    """The same rows through SQLAlchemy Core (``connection.execute(insert(table), rows)``, executemany)."""
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    table = Table(
        "rows",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("key", String, nullable=False),
        Column("payload", LargeBinary, nullable=False),
    )
    table.metadata.create_all(engine)
    dicts = [{"id": i, "key": k, "payload": p} for i, k, p in rows]
    try:
        with engine.connect() as warm:  # the pool's connection, before the clock
            warm.exec_driver_sql("SELECT 1")

        def run() -> None:
            for start in range(0, len(dicts), per_tx):
                with engine.begin() as connection:
                    connection.execute(insert(table), dicts[start : start + per_tx])

        return cpu_us_per(len(dicts), run)
    finally:
        engine.dispose()


# --- crypto -----------------------------------------------------------------------------------------------


def crypto_material(count: int) -> tuple[ec.EllipticCurvePublicKey, list[bytes], list[bytes]]:
    """A P-256 CA and ``count`` CSRs and certificates (PEM), each from a key of its own."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Floor Issuing CA")])
    now = datetime.now(UTC)
    csrs: list[bytes] = []
    certs: list[bytes] = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        host = f"svc-{i}.floor.example.com"
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
        san = x509.SubjectAlternativeName([x509.DNSName(host)])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).add_extension(san, critical=False)
        csrs.append(csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=90))
            .add_extension(san, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        certs.append(cert.public_bytes(serialization.Encoding.PEM))
    return ca_key.public_key(), csrs, certs


def crypto_figures(ca_pub: ec.EllipticCurvePublicKey, csrs: Sequence[bytes], certs: Sequence[bytes]) -> tuple[float, float]:
    """(CSR load + signature check, certificate load + CA signature check), CPU µs each."""

    def check_csrs() -> None:
        for pem in csrs:
            if not x509.load_pem_x509_csr(pem).is_signature_valid:
                raise RuntimeError("a CSR's signature does not verify")

    def check_certs() -> None:
        for pem in certs:
            cert = x509.load_pem_x509_certificate(pem)
            algorithm = cert.signature_hash_algorithm
            assert algorithm is not None
            ca_pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))  # raises if invalid

    return cpu_us_per(len(csrs), check_csrs), cpu_us_per(len(certs), check_certs)


# --- report -----------------------------------------------------------------------------------------------


async def thread_hop_us(hops: int) -> float:
    """CPU per ``asyncio.to_thread`` of a call that does nothing: what handing blocking work (a SQLite transaction, a
    file write) to a worker thread costs the process, both threads together (a futex wake-up each way; not in the
    sum: how many hops a certificate takes is the code's choice, not the design's)."""
    for _ in range(min(200, hops)):  # the executor's threads started
        await asyncio.to_thread(_nothing)
    started = time.process_time()
    for _ in range(hops):
        await asyncio.to_thread(_nothing)
    return (time.process_time() - started) / hops * 1e6


def _nothing() -> None:
    return None


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def report(result: Mapping[str, Any], floor: Floor, counts: Counts, budgets: tuple[float, float]) -> str:
    info, c = result["machine"], result["components"]
    lines = [
        f"CPU floor per certificate, {info['date']}, {info['nproc']} x {info['cpu']}, Python {info['python']}",
        f"`{info['command']}`: {result['records']} records ({result['avg_record_bytes']} B on average), "
        f"{result['partitions']} partitions, batches of {result['batch']}, after a warm-up of "
        f"{result['warmup_records']} records (untimed, topics of its own); broker idle "
        f"{fmt(result['broker_idle_cores'], 4)} cores, subtracted from each phase",
        "",
        "| component | unit | units | client CPU µs/unit | broker CPU µs/unit |",
        "|---|---|---|---|---|",
        f"| produce (idempotent, acks=all) | record | {c['produce']['units']} | {fmt(c['produce']['client_us'])} | "
        f"{fmt(c['produce']['broker_us'])} |",
        f"| consume (group, getmany, commit per batch) | record | {c['consume']['units']} | "
        f"{fmt(c['consume']['client_us'])} | {fmt(c['consume']['broker_us'])} |",
    ]
    for t, us in c["decode_us"].items():
        lines.append(f"| decode {t} | record | {c['per_type']} | {fmt(us)} | |")
    for t, us in c["encode_us"].items():
        lines.append(f"| encode {t} | record | {c['per_type']} | {fmt(us)} | |")
    lines += [
        f"| sqlite3 insert (WAL, NORMAL, {c['rows_per_tx']}/tx) | row | {c['rows']} | {fmt(c['sqlite_row_us'])} | |",
        f"| SQLAlchemy Core insert (same) | row | {c['rows']} | {fmt(c['sqlalchemy_row_us'])} | |",
        f"| CSR load + is_signature_valid | CSR | {c['crypto_units']} | {fmt(c['csr_check_us'])} | |",
        f"| certificate load + CA verify (P-256) | certificate | {c['crypto_units']} | "
        f"{fmt(c['certificate_check_us'])} | |",
        f"| thread hop (asyncio.to_thread of a no-op; not in the sum) | hop | {c['hops']} | {fmt(c['thread_hop_us'])} | |",
        "",
        "| floor per certificate | count | µs each | ms per certificate |",
        "|---|---|---|---|",
    ]
    lines += [f"| {x.item} | {x.count} | {fmt(x.us_each)} | {fmt(x.ms_per_certificate, 3)} |" for x in floor.services]
    services_budget, broker_budget = budgets
    lines.append(f"| **services, total** | | | **{fmt(floor.services_ms, 3)}** (budget {services_budget} ms) |")
    lines += [f"| {x.item} | {x.count} | {fmt(x.us_each)} | {fmt(x.ms_per_certificate, 3)} |" for x in floor.broker]
    lines.append(f"| **broker, total** | | | **{fmt(floor.broker_ms, 3)}** (budget {broker_budget} ms) |")
    by_service = "; ".join(f"{s}: {', '.join(types)}" for s, types in counts.consumed_by.items())
    lines += [
        "",
        f"counts per certificate: consumed {counts.consumed} ({by_service}); produced {len(counts.produced)} by the "
        f"services ({', '.join(counts.produced)}); row writes {counts.row_writes} ({counts.row_inserts} inserts + "
        f"{counts.row_updates} updates, both at the raw sqlite3 insert figure); CSR checks {counts.csr_checks}, "
        f"certificate checks {counts.certificate_checks}; broker: {counts.broker_produced} records produced, "
        f"{counts.broker_consumed} consumed.",
    ]
    return "\n".join(lines)


# --- the run ----------------------------------------------------------------------------------------------


def _broker_us(phase: Phase, idle_cores: float, units: int) -> float | None:
    if phase.broker_s is None:
        return None
    return net_of_idle(phase.broker_s, phase.wall_s, idle_cores) / units * 1e6


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], Floor]:
    counts = Counts()
    prefix = f"floor{uuid.uuid4().hex[:6]}.certrail"
    records: list[Record] = []
    values_by_type: dict[str, list[bytes]] = {t: [] for t in LIFECYCLE}
    for topic, key, value in lifecycle_records(Topics(prefix), args.records // 5):
        message_type = declared_type(value)
        assert message_type in values_by_type, message_type
        values_by_type[message_type].append(value)
        headers = [(k, v.encode()) for k, v in record_headers(message_type).items()]
        records.append((topic, key, value, headers))
    names = list(dict.fromkeys(r[0] for r in records))
    rows = [(i, key.decode(), value) for i, (_, key, value, _) in enumerate(records)]
    log(f"built {len(records)} records; building {len(records)} CSRs and certificates (untimed)")
    ca_pub, csrs, certs = crypto_material(len(records))
    gc.collect()
    gc.freeze()  # the prebuilt inputs are the bench's: keep them out of the GC passes it measures

    with (
        tempfile.TemporaryDirectory(prefix="certrail-floor-") as tmp_name,
        kafka_broker(Path(tmp_name), args.broker_pid) as (bootstrap, broker_pid),
    ):
        settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
        # the warm-up's own topics: the same records, produced and consumed untimed (the broker's JIT, the
        # consumer offsets topic, the clients' first calls), deleted at the end with the others
        warm = [(f"{topic}.warmup", key, value, headers) for topic, key, value, headers in records[: args.warmup]]
        warm_names = list(dict.fromkeys(r[0] for r in warm))
        await ensure_topics(settings, [*names, *warm_names], partitions=args.partitions)
        clock = Clock(broker_pid)
        try:
            if warm:
                log(f"warm-up: {len(warm)} records produced and consumed (untimed)")
                await produce(settings, warm, args.batch, Clock(None))
                await consume(settings, warm_names, len(warm), args.batch, Clock(None))
            log(f"broker pid {broker_pid}: idle rate over {args.idle_seconds} s, then produce and consume")
            idle_cores = wait_for_idle_rate(clock, args.idle_seconds) if broker_pid is not None else 0.0
            produced = await produce(settings, records, args.batch, clock)
            consumed = await consume(settings, names, len(records), args.batch, clock)
        finally:
            await delete_topics(settings, [*names, *warm_names])

    log("decode, encode, db inserts, crypto")
    decode_us, encode_us = codec_figures(values_by_type, counts.produced)
    with tempfile.TemporaryDirectory(prefix="certrail-floor-db-", dir=args.sqlite_dir) as db_dir:
        sqlite_us = sqlite_rows_us(Path(db_dir) / "raw.db", rows, args.rows_per_tx)
        sqlalchemy_us = sqlalchemy_rows_us(Path(db_dir) / "core.db", rows, args.rows_per_tx)
    csr_us, cert_us = crypto_figures(ca_pub, csrs, certs)
    hops = min(len(records), 5_000)
    hop_us = await thread_hop_us(hops)

    n = len(records)
    figures = Figures(
        produce_us=produced.client_s / n * 1e6,
        consume_us=consumed.client_s / n * 1e6,
        decode_us=decode_us,
        encode_us=encode_us,
        row_us=sqlite_us,
        csr_check_us=csr_us,
        certificate_check_us=cert_us,
        broker_produce_us=_broker_us(produced, idle_cores, n),
        broker_consume_us=_broker_us(consumed, idle_cores, n),
    )
    floor = floor_per_certificate(figures, counts)
    info = machine()
    info["command"] = shlex.join([".venv/bin/python", "-m", "bench.floor", *sys.argv[1:]])
    return {
        "machine": info,
        "records": n,
        "avg_record_bytes": round(sum(len(r[2]) for r in records) / n),
        "partitions": args.partitions,
        "batch": args.batch,
        "warmup_records": len(warm),
        "broker_pid_measured": broker_pid is not None,
        "broker_idle_cores": idle_cores,
        "phases": {"produce": asdict(produced), "consume": asdict(consumed)},
        "components": {
            "produce": {"units": n, "client_us": figures.produce_us, "broker_us": figures.broker_produce_us},
            "consume": {"units": n, "client_us": figures.consume_us, "broker_us": figures.broker_consume_us},
            "per_type": n // 5,
            "decode_us": decode_us,
            "encode_us": encode_us,
            "rows": n,
            "rows_per_tx": args.rows_per_tx,
            "sqlite_row_us": sqlite_us,
            "sqlalchemy_row_us": sqlalchemy_us,
            "crypto_units": len(csrs),
            "csr_check_us": csr_us,
            "certificate_check_us": cert_us,
            "hops": hops,
            "thread_hop_us": hop_us,
        },
        "counts": counts.as_dict(),
        "floor": {
            "services_ms_per_certificate": floor.services_ms,
            "services_budget_ms": SERVICES_BUDGET_MS,
            "broker_ms_per_certificate": floor.broker_ms,
            "broker_budget_ms": BROKER_BUDGET_MS,
            "lines": [{**asdict(x), "ms_per_certificate": x.ms_per_certificate} for x in [*floor.services, *floor.broker]],
        },
    }, floor


def positive_multiple_of_5(text: str) -> int:
    value = int(text)
    if value < 5 or value % 5:
        raise argparse.ArgumentTypeError(f"{text} is not a positive multiple of 5 (five records per certificate)")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=positive_multiple_of_5, default=20_000,
                        help="records produced and consumed (a multiple of 5: five per certificate)")
    parser.add_argument("--batch", type=positive, default=500, help="records sent before awaiting them; max_records")
    parser.add_argument("--partitions", type=positive, default=DEFAULT_PARTITIONS)
    parser.add_argument("--rows-per-tx", type=positive, default=100)
    parser.add_argument("--warmup", type=non_negative, default=5_000,
                        help="records produced and consumed untimed first, on topics of their own (0: none)")
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="the broker's idle rate, measured before")
    parser.add_argument("--broker-pid", type=int, default=None,
                        help="the broker JVM's pid, with KAFKA_BOOTSTRAP_SERVERS (else no broker figures)")
    parser.add_argument("--sqlite-dir", type=Path, default=None, help="where the SQLite files go (default: /tmp)")
    parser.add_argument("--json", type=Path, default=None, help="write the JSON line to this file too")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    result, floor = asyncio.run(run(args))
    print(report(result, floor, Counts(), (SERVICES_BUDGET_MS, BROKER_BUDGET_MS)))
    line = json.dumps(result)
    print(line)
    if args.json is not None:
        args.json.write_text(line + "\n")


if __name__ == "__main__":
    main()
