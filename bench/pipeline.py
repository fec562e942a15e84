"""The whole pipeline, end to end: certificates per second, latency, CPU per certificate of every process, peak RSS.

    .venv/bin/python bench/pipeline.py --requests N [--concurrency C] [--quick] [--db postgresql [--postgres-url URL]]
                                       [--layouts 1x1,3x1,3x2]

One run measures one or more **layouts** (``BROKERSxINSTANCES``) one after the other, each on a stack of its own:
``certrail up --detach --brokers B --instances I --db D`` on a free block of ports in a temporary var dir, through
``tests/e2e/support.ScaleStack`` (the stack of the scale-out fault test). ``1x1`` (the default) is the single broker
and one instance of each service; ``3x2`` a three-node KRaft cluster (replication factor 3, min.insync.replicas 2)
and two instances of the gateway, issuer, deployer and auditor (several instances need ``--db postgresql``). The
stack's defaults: certificate verification on, acks=all, the demo connector ``emca-demo`` on the simulator's V4.2.4+
dialect (each issuer instance with the connector's concurrency), P-256 CA. With several layouts a last table puts them
side by side: the cost per certificate of replication (``1x1`` -> ``3x1``) and of the second instance (``3x1`` -> ``3x2``).

For each layout:

1. **Set-up through the API** (admin token of the demo): a requester-key profile ``bench-web`` on ``emca-demo``
   (domain ``bench.certrail.test``, P-256 keys), an HMAC key for the requester ``bench-requester``
   (``POST /v1/requesters/bench-requester/keys``), and a file target ``bench-files`` (``var/deploy/bench``, one
   directory per certificate) bound to the profile with ``certrail targets add/bind``. For a requester-held key the
   deployer installs the certificate and the chain (no key: ``services/deployer/handlers/deploy.py``).
   With ``--concurrency`` other than the connector's (8 by default) the connector is changed through the API.
   A warm-up of ``--warm`` requests goes through the whole pipeline first (groups joined, connections open).
2. **Burst** (the peak rate): N P-256 CSRs, made and signed (``IssueRequested`` with ``auth`` HMAC-SHA256) before any
   clock starts, published to ``certrail.requests`` as fast as the producer takes them (acks=all, idempotent). The
   clock runs from the first publish to the N-th certificate *deployed and audited*: the auditor's row of its
   ``CertificateDeployed`` in ``audit_records`` (the last ``stored_at``); a ``COUNT`` on ``certificate_deployments``
   every 0.5 s says when all are there. Latency per certificate: its publish time (wall clock just before the send)
   to the ``CertificateDeployed`` event time (the deployer's) and to the auditor's ``stored_at``. Stages: for each
   service, when its event of the N-th certificate was there (``RequestAccepted`` by the gateway, ``CertificateIssued``
   by the issuer, ``CertificateDeployed`` by the deployer, the audit row by the auditor) and how long a certificate
   spent in it (median, p99), from the event times in ``audit_records``: the stage that finishes last by the largest
   margin is the one that holds the pipeline back.
3. **Paced** (the latency goal): requests published at ``--paced-fraction`` (0.5) of the burst's rate for
   ``--paced-seconds``, each on its own schedule; the same latencies.
4. **CPU** of each process tree (every instance of the four services, the simulator: ``var/run/*.pid``; every Kafka
   node: ``var/kafka/kafka.pid`` or ``var/kafka/node-*/kafka.pid``; this process; "other": the rest of the machine)
   from ``/proc/<pid>/stat`` (utime+stime, plus cutime+cstime of reaped children, over every live process of the
   trees), summed over the instances of a role, sampled every 0.1 s and interpolated
   at the ends of each span. **Peak RSS**: ``VmHWM`` of each process at the end (the auditor's prepare worker is a
   child of its own and listed beside it). Before the burst, ``--idle-seconds`` of the idle stack give each
   process's background CPU.
5. **Direct**: the simulator's rate over HTTPS through the real client at the same concurrency, N calls
   (``bench/issuer_throughput.measure_direct``: the issuer's client with ``HttpOptions.for_concurrency(C)``).
6. **Naive**: one synchronous loop over ``--naive-requests`` (default N): submit one CSR with the real client, write
   the certificate to a file (fsync, as the deployer does), insert one audit row into a SQLite table (WAL,
   ``synchronous=NORMAL``) and commit. No verification, no Kafka.

``--db postgresql``: the stack runs on a PostgreSQL database of its own (`certrail up --db postgresql`: ``certrail_<random>``
on the server of ``--postgres-url``, default ``$CERTRAIL_TEST_POSTGRES_URL``, else ``scripts/postgres.sh``'s; the role
must be allowed to CREATE DATABASE), dropped by ``certrail down --drop-database`` unless ``--keep``. The bench reads it
through SQLAlchemy (``Db``, the same statements on SQLite and PostgreSQL); when the server is local, its processes (the
postmaster and every backend, whoever they serve) are one more row, ``postgresql``, of the CPU table (no RSS: shared
memory). The naive loop stays on SQLite (the baseline: what a minimal script does) and runs on the first layout only.

``--profile-dir DIR --py-spy BINARY`` records each service (and the simulator) with py-spy during the burst
(raw collapsed stacks, 50 Hz, ``--idle``: wall time, and ``--gil``: CPU); py-spy is no dependency, and a run with it
is for finding where the time goes, not for its numbers.

Each stack is always stopped (``certrail down``) at its end, on failure and on SIGTERM too. ``--quick`` shortens the warm-up and the
paced phase for a smoke run. One JSON line with every number of every layout goes to stdout after the markdown tables
(``--json FILE`` writes it to a file too).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `bench` and `tests` are not installed packages
    sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaProducer
from sqlalchemy import TextClause, bindparam, create_engine, text
from sqlalchemy.engine import URL

from bench.emca_sim_issuance import CLOCK_TICKS, machine_busy_seconds
from bench.issuer_throughput import measure_direct
from services.cli.demo import CONNECTOR, stack_env
from services.common.contracts.envelope import encode, make_event
from services.common.contracts.events import (
    CertificateDeployed,
    CertificateIssued,
    DeploymentFailed,
    IssuanceFailed,
    RequestAccepted,
    RequestRejected,
)
from services.common.contracts.requests import IssueRequested
from services.common.contracts.signing import signed
from services.common.contracts.topics import Topics
from services.common.db import normalise_url, safe_url
from services.common.emca.client import connect
from services.common.emca.types import EmcaError, EmcaVersion, HttpOptions, IssuedCertificate
from services.common.kafka_config import producer_kwargs
from tests.e2e.support import POSTGRES_URL, ScaleStack, cli
from tests.emca_sim_helpers import sim_endpoint
from tests.issuer_harness import make_csr

PROFILE = "bench-web"
TARGET = "bench-files"
REQUESTER = "bench-requester"
KEY_ID = "bench-1"
DOMAIN = "bench.certrail.test"
SOURCE = "/bench/pipeline"
SAMPLE_S = 0.1
POLL_S = 0.5
SERVICES = ("gateway", "issuer", "deployer", "auditor", "emca-sim")
ROLES = (*SERVICES, "kafka", "bench")
FAILURE_TYPES = (RequestRejected.TYPE, IssuanceFailed.TYPE, DeploymentFailed.TYPE)
#: the event that ends each stage, by the service that publishes it
STAGES = {"gateway": RequestAccepted.TYPE, "issuer": CertificateIssued.TYPE, "deployer": CertificateDeployed.TYPE}


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --- processes: CPU of a tree, peak RSS -------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """The fields of a process's /proc stat line from field 3 (state) on: ppid is [1], utime [11] ... cstime [14];
    None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return _parse_stat(text)[1]


def _parse_stat(text: str) -> tuple[str, list[str]]:
    """A /proc stat line's name (in parentheses, which may hold spaces and parentheses itself) and its fields from
    field 3 on."""
    return text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def tree_of(pid: int, children: dict[int, list[int]]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def trees_of(pids: Iterable[int], children: dict[int, list[int]]) -> list[int]:
    """Every process of the trees of ``pids`` (the instances of one role), once."""
    return list(dict.fromkeys(p for pid in pids for p in tree_of(pid, children)))


def tree_cpu_seconds(pids: Iterable[int]) -> float:
    """utime+stime of each live process, plus cutime+cstime (children it reaped): each CPU second counted once."""
    return sum(tree_cpu_split(pids)) / CLOCK_TICKS


def tree_cpu_split(pids: Iterable[int]) -> tuple[int, int]:
    """(user, system) clock ticks of each live process, reaped children's included: utime+cutime, stime+cstime."""
    user = system = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
    return user, system


def vm_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def process_name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return "?"
    text = " ".join(part.decode(errors="replace") for part in argv if part)
    return "multiprocessing worker" if "multiprocessing" in text else Path(argv[0].decode(errors="replace")).name


#: suffix of a role's system (kernel) CPU, sampled beside its total ("deployer" and "deployer-kernel"; a part of
#: the role's, reported beside it and never added to a sum)
KERNEL = "-kernel"


def is_part(key: str) -> bool:
    """A figure that is a part of another one (the broker's JIT, a role's kernel time), not a process of its own."""
    return key == KAFKA_JIT or key.endswith(KERNEL)


#: the JVM's just-in-time compiler threads, as /proc shows their names (15 characters)
JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")
#: the part of the broker's CPU its JIT compiler spent (reported beside "kafka", not added to any sum)
KAFKA_JIT = "kafka-jit"


def jit_cpu_seconds(pids: Iterable[int]) -> float:
    """utime+stime of the JIT compiler threads of the JVMs ``pids``: a fresh broker compiles its hot paths in the
    first minutes of load (half of its CPU in a 30 s burst), a broker that has run for a while no longer does."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for task in tasks:
            try:
                raw = Path(f"/proc/{pid}/task/{task}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            name, ticks = thread_ticks(raw)
            if name.startswith(JIT_THREADS):
                total += ticks
    return total / CLOCK_TICKS


def thread_ticks(stat: str) -> tuple[str, int]:
    """A thread's name and its utime+stime in clock ticks, from its /proc/<pid>/task/<tid>/stat line."""
    name, fields = _parse_stat(stat)
    return name, int(fields[11]) + int(fields[12])


class Sampler:
    """CPU seconds of each role's process tree every ``SAMPLE_S`` (a thread); read back at any wall time; and of
    the broker's JIT compiler threads (`KAFKA_JIT`, a part of "kafka")."""

    def __init__(self, roots: dict[str, list[int]]) -> None:
        self.roots = roots
        self.times: list[float] = []
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def sample(self) -> None:
        children = _children()
        values: dict[str, float] = {}
        for role, pids in self.roots.items():
            user, system = tree_cpu_split(trees_of(pids, children))
            values[role] = (user + system) / CLOCK_TICKS
            values[role + KERNEL] = system / CLOCK_TICKS
        if "kafka" in self.roots:
            values[KAFKA_JIT] = jit_cpu_seconds(trees_of(self.roots["kafka"], children))
        values["bench"] = time.process_time()
        values["machine"] = machine_busy_seconds()
        self.times.append(time.time())
        self.samples.append(values)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def at(self, when: float) -> dict[str, float]:
        index = bisect.bisect_left(self.times, when)
        if index == 0:
            return self.samples[0]
        if index >= len(self.times):
            return self.samples[-1]
        t0, t1 = self.times[index - 1], self.times[index]
        s0, s1 = self.samples[index - 1], self.samples[index]
        share = (when - t0) / (t1 - t0) if t1 > t0 else 1.0
        return {name: s0[name] + share * (s1[name] - s0[name]) for name in s0}

    def between(self, start: float, end: float) -> dict[str, float]:
        first, last = self.at(start), self.at(end)
        spent = {name: last[name] - first[name] for name in first}
        spent["other"] = max(0.0, spent["machine"] - sum(v for k, v in spent.items() if k != "machine" and not is_part(k)))
        del spent["machine"]
        return spent


def peak_rss(roots: dict[str, list[int]]) -> dict[str, list[tuple[str, int, float]]]:
    """Per role: (process name, pid, VmHWM MiB) of each live process of its trees (every instance)."""
    children = _children()
    out: dict[str, list[tuple[str, int, float]]] = {}
    for role, pids in roots.items():
        rows = []
        for pid in trees_of(pids, children):
            hwm = vm_kib(pid, "VmHWM")
            if hwm is not None:
                rows.append((process_name(pid), pid, hwm / 1024))
        out[role] = rows
    return out


# --- results -------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = q / 100 * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Phase:
    name: str
    requests: int
    wall_s: float  # first publish -> last CertificateDeployed stored by the auditor
    publish_s: float  # first publish -> last publish acknowledged
    offered_rate: float | None  # paced: the schedule's rate
    latency_deployed_s: list[float] = field(repr=False)  # publish -> CertificateDeployed event time
    latency_audited_s: list[float] = field(repr=False)  # publish -> its audit row stored
    cpu_s: dict[str, float] = field(default_factory=dict)
    #: per stage (gateway, issuer, deployer, auditor): s from the first publish to the stage's N-th event, and the
    #: median time a certificate spent in the stage (from the previous stage's event)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0

    def ms_per_cert(self, role: str) -> float:
        return 1000 * self.cpu_s.get(role, 0.0) / self.requests

    def summary(self) -> dict[str, Any]:
        def pcts(values: list[float]) -> dict[str, float]:
            return {f"p{q}": round(percentile(values, q), 4) for q in (50, 95, 99)} | {"max": round(max(values), 4)}
        return {"name": self.name, "requests": self.requests, "wall_s": round(self.wall_s, 3),
                "publish_s": round(self.publish_s, 3), "offered_rate": self.offered_rate, "rate": round(self.rate, 2),
                "latency_deployed_s": pcts(self.latency_deployed_s), "latency_audited_s": pcts(self.latency_audited_s),
                "cpu_ms_per_cert": {role: round(self.ms_per_cert(role), 3) for role in self.cpu_s},
                "cores": {role: round(v / self.wall_s, 3) for role, v in self.cpu_s.items()},
                "stages": {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in self.stages.items()}}


@dataclass
class Simple:
    name: str
    requests: int
    errors: int
    wall_s: float
    cpu_s: dict[str, float]

    @property
    def rate(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "requests": self.requests, "errors": self.errors, "wall_s": round(self.wall_s, 3),
                "rate": round(self.rate, 2),
                "cpu_ms_per_cert": {r: round(1000 * v / self.requests, 3) for r, v in self.cpu_s.items() if self.requests}}


# --- the stack and its set-up -----------------------------------------------------------------------------------


def _ok(response: Any, *codes: int) -> dict[str, Any]:
    if response.status_code not in codes:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text[:500]}")
    return response.json() if response.content else {}


def set_up(stack: ScaleStack, concurrency: int) -> tuple[bytes, dict[str, Any]]:
    """Profile, requester key, file target and binding; the connector's concurrency. Returns the HMAC key and the connector."""
    with stack.api("admin") as admin:
        profile = {"name": PROFILE, "connector": CONNECTOR, "ca_profile": "TLS Server", "key_generation": "requester",
                   "allowed_requesters": [REQUESTER], "domain_rules": {"dns_suffixes": [DOMAIN]},
                   "key_policy": {"ec_curves": ["P-256"]}, "validity_days": 90}
        _ok(admin.post("/v1/profiles", json=profile), 201)
        key = _ok(admin.post(f"/v1/requesters/{REQUESTER}/keys", json={"key_id": KEY_ID}), 201)
        connector = _ok(admin.get(f"/v1/connectors/{CONNECTOR}"), 200)
        if connector.get("concurrency") != concurrency:
            connector = _ok(admin.patch(f"/v1/connectors/{CONNECTOR}", json={"concurrency": concurrency}), 200)
            log(f"connector {CONNECTOR}: concurrency set to {concurrency} through the API")
    env = {**stack.tool_env(), **stack_env(stack.var_dir)}
    target = {"dir": str(stack.var_dir / "deploy" / "bench"), "per_certificate": True}
    for argv in (["targets", "add", TARGET, "--kind", "file", "--config", json.dumps(target)],
                 ["targets", "bind", PROFILE, TARGET]):
        result = cli(env, *argv, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"certrail {' '.join(argv)}: {result.stdout}{result.stderr}")
    return base64.b64decode(key["secret_base64"]), connector


def roots_of(stack: ScaleStack) -> dict[str, list[int]]:
    """The processes of each role: every instance of each service, the simulator, every Kafka node."""
    roots = {name: stack.pids(name) for name in (*SERVICES, "kafka")}
    missing = [name for name, pids in roots.items() if not pids]
    if missing:
        raise RuntimeError(f"no pid file for {', '.join(missing)} under {stack.var_dir}")
    return roots


# --- the stack's layout: brokers x instances, on SQLite or a PostgreSQL database of its own ------------------------


@dataclass(frozen=True)
class Layout:
    brokers: int
    instances: int

    @classmethod
    def parse(cls, text: str) -> Layout:
        try:
            brokers, instances = (int(part) for part in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"a layout is BROKERSxINSTANCES (1x1, 3x2), got {text!r}") from None
        if brokers < 1 or instances < 1:
            raise argparse.ArgumentTypeError(f"a layout needs at least one broker and one instance, got {text!r}")
        return cls(brokers, instances)

    @property
    def name(self) -> str:
        return f"{self.brokers}x{self.instances}"

    @property
    def label(self) -> str:
        return (f"{self.brokers} broker{'s' if self.brokers > 1 else ''}, {self.instances} instance"
                f"{'s' if self.instances > 1 else ''} of each service")


def make_stack(var_dir: Path, layout: Layout, args: argparse.Namespace) -> ScaleStack:
    """`certrail up --detach --instances I --brokers B [--db postgresql --postgres-url URL]` on a free block of ports."""
    env = {"CERTRAIL_UP_INSTANCES": str(layout.instances), "CERTRAIL_UP_KAFKA_BROKERS": str(layout.brokers),
           "CERTRAIL_UP_DB": args.db}
    if args.db == "postgresql":
        env["CERTRAIL_UP_POSTGRES_URL"] = args.postgres_url
    return ScaleStack.in_block(var_dir, env)


def stop_stack(stack: ScaleStack, args: argparse.Namespace) -> None:
    """`certrail down`, and with PostgreSQL `--drop-database` unless ``--keep``."""
    if args.db == "postgresql" and not args.keep:
        result = stack.down_and_drop()
        if result.returncode != 0:
            raise RuntimeError(f"certrail down --drop-database: {result.stdout}{result.stderr}")
        return
    stack.down()


def postmaster_pid(db: Db) -> int | None:
    """The local server's postmaster (the parent of our backend), for its CPU; None when the server is not local."""
    if db.engine.dialect.name != "postgresql" or db.engine.url.host not in ("127.0.0.1", "localhost", "::1"):
        return None
    (backend,) = db._rows(text("SELECT pg_backend_pid()"))[0]
    fields = _stat(int(backend))
    if fields is None or not process_name(int(fields[1])).startswith("postgres"):
        return None
    return int(fields[1])


# --- requests -----------------------------------------------------------------------------------------------------


@dataclass
class Request:
    request_id: str
    certificate_id: str
    data: IssueRequested  # signed


def make_requests(tag: str, count: int, hmac_key: bytes) -> list[Request]:
    out = []
    for index in range(count):
        certificate_id = f"{tag}-{index}.{DOMAIN}"
        request_id = f"bench-{tag}-{index}"
        data = IssueRequested(request_id=request_id, requester=REQUESTER, profile=PROFILE, certificate_id=certificate_id,
                              csr=make_csr(certificate_id), sans=[f"dns:{certificate_id}"])
        out.append(Request(request_id, certificate_id, signed(data, KEY_ID, hmac_key)))
    return out


def record(request: Request) -> bytes:
    event = make_event(request.data, id=f"up-{request.request_id}", source=SOURCE, time=datetime.now(UTC),
                       subject=request.certificate_id, correlationid=request.request_id)
    return encode(event)


class Db:
    """Cheap reads of the auditor's database of the stack (its own engine; SELECTs only), SQLite or PostgreSQL alike."""

    def __init__(self, url: str | URL) -> None:
        url = normalise_url(url)
        if url.get_backend_name() == "sqlite":  # as the sqlite3 reader before: wait up to 30 s for a lock
            self.engine = create_engine(url, connect_args={"timeout": 30})
        else:
            self.engine = create_engine(url, pool_size=1, pool_pre_ping=True)

    def close(self) -> None:
        self.engine.dispose()

    def _rows(self, statement: TextClause, **params: Any) -> list[tuple[Any, ...]]:
        with self.engine.connect() as connection:  # one statement, no transaction left open between polls
            return [tuple(row) for row in connection.execute(statement, params)]

    def version(self) -> str:
        if self.engine.dialect.name == "sqlite":
            return sqlite3.sqlite_version  # the services' own sqlite3 (same interpreter)
        return str(self._rows(text("SHOW server_version"))[0][0])

    def deployed(self, tag: str) -> int:
        (count,) = self._rows(_DEPLOYED, target=TARGET, pattern=f"{tag}-%")[0]
        return int(count)

    def failures(self, tag: str) -> list[tuple[str, str]]:
        rows = self._rows(_FAILURES, pattern=f"bench-{tag}-%", types=list(FAILURE_TYPES))
        return [(str(event_type), bytes(value or b"")[:600].decode(errors="replace")) for event_type, value in rows]

    def stage_times(self, tag: str) -> dict[str, dict[str, float]]:
        """certificate id -> {event type: first event time (epoch s)} for the stages of the pipeline."""
        out: dict[str, dict[str, float]] = {}
        for certificate_id, event_type, event_time in self._rows(_STAGE_TIMES, pattern=f"{tag}-%",
                                                                 types=list(STAGES.values())):
            out.setdefault(certificate_id, {}).setdefault(event_type, _epoch(event_time))
        return out

    def deployed_times(self, tag: str) -> dict[str, tuple[float, float]]:
        """certificate id -> (CertificateDeployed event time, its audit row's stored_at), epoch seconds; first of each."""
        out: dict[str, tuple[float, float]] = {}
        for certificate_id, event_time, stored_at in self._rows(_DEPLOYED_TIMES, type=CertificateDeployed.TYPE,
                                                                pattern=f"{tag}-%"):
            out.setdefault(certificate_id, (_epoch(event_time), _epoch(stored_at)))
        return out


_DEPLOYED = text("SELECT COUNT(*) FROM certificate_deployments WHERE target_name = :target AND status = 'deployed' "
                 "AND certificate_id LIKE :pattern")
_FAILURES = text("SELECT event_type, value FROM audit_records WHERE correlation_id LIKE :pattern "
                 "AND event_type IN :types").bindparams(bindparam("types", expanding=True))
_STAGE_TIMES = text("SELECT certificate_id, event_type, event_time FROM audit_records WHERE certificate_id LIKE :pattern "
                    "AND event_type IN :types ORDER BY id").bindparams(bindparam("types", expanding=True))
_DEPLOYED_TIMES = text("SELECT certificate_id, event_time, stored_at FROM audit_records WHERE event_type = :type "
                       "AND certificate_id LIKE :pattern ORDER BY id")


def _epoch(value: str | datetime) -> float:
    """SQLite's driver gives the stored text (naive UTC), psycopg an aware datetime (timestamptz)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


async def wait_deployed(db: Db, tag: str, count: int, timeout_s: float, started: float) -> None:
    deadline, last_log, last_failures = time.monotonic() + timeout_s, time.monotonic(), 0.0
    while True:
        done = db.deployed(tag)
        if done >= count:
            return
        now = time.monotonic()
        if now - last_failures > 10:
            last_failures = now
            failures = db.failures(tag)
            if failures:
                raise RuntimeError(f"{len(failures)} requests failed or were rejected; first: {failures[0]}")
        if now - last_log > 15:
            last_log = now
            elapsed = time.time() - started
            log(f"  {tag}: {done:,} of {count:,} deployed and audited after {elapsed:,.0f} s ({done / elapsed:,.1f}/s)")
        if now > deadline:
            raise RuntimeError(f"{tag}: only {done} of {count} deployed and audited within {timeout_s:.0f} s")
        await asyncio.sleep(POLL_S)


async def producer_for(stack: ScaleStack) -> AIOKafkaProducer:
    # an upstream system: the stack's broker authenticates it as the requester principal (certrail.requests only)
    producer = AIOKafkaProducer(**{**producer_kwargs(stack.settings("requester")), "linger_ms": 5,
                                   "max_batch_size": 256 * 1024})
    await producer.start()
    return producer


async def publish_burst(producer: AIOKafkaProducer, topic: str, requests: Sequence[Request]) -> tuple[dict[str, float], float]:
    """Every request as fast as the producer takes it; publish wall time of each, and when the last was acknowledged."""
    sent: dict[str, float] = {}
    futures = []
    for request in requests:
        value = record(request)
        sent[request.certificate_id] = time.time()
        futures.append(await producer.send(topic, value, key=request.certificate_id.encode()))
    await asyncio.gather(*futures)
    return sent, time.time()


async def publish_paced(producer: AIOKafkaProducer, topic: str, requests: Sequence[Request],
                        rate: float) -> tuple[dict[str, float], float]:
    sent: dict[str, float] = {}
    futures = []
    start = time.monotonic()
    for index, request in enumerate(requests):
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        value = record(request)
        sent[request.certificate_id] = time.time()
        futures.append(await producer.send(topic, value, key=request.certificate_id.encode()))
    await asyncio.gather(*futures)
    return sent, time.time()


async def run_phase(stack: ScaleStack, db: Db, producer: AIOKafkaProducer, sampler: Sampler | None, name: str,
                    requests: Sequence[Request], tag: str, rate: float | None, timeout_s: float,
                    timeline: list[list[float]] | None = None) -> Phase:
    topic = Topics().requests
    started = time.time()
    if rate is None:
        sent, acked = await publish_burst(producer, topic, requests)
    else:
        sent, acked = await publish_paced(producer, topic, requests, rate)
    first = min(sent.values())
    log(f"{name}: {len(requests):,} published in {acked - first:,.2f} s")
    await wait_deployed(db, tag, len(requests), timeout_s, started)
    times = db.deployed_times(tag)
    missing = set(sent) - set(times)
    if missing:  # the inventory is written in the same transaction as the audit row: should not happen
        await asyncio.sleep(2)
        times = db.deployed_times(tag)
        missing = set(sent) - set(times)
        if missing:
            raise RuntimeError(f"{len(missing)} deployments in the inventory have no CertificateDeployed audit row")
    last = max(stored for _, stored in times.values())
    deployed = [times[c][0] - t for c, t in sent.items()]
    audited = [times[c][1] - t for c, t in sent.items()]
    stage_times = db.stage_times(tag)
    stages = stage_summary(sent, stage_times, times)
    if timeline is not None:  # per certificate: s after the first publish, then the time to each stage's event
        for certificate_id, t in sorted(sent.items(), key=lambda item: item[1]):
            ends = stage_times.get(certificate_id, {})
            timeline.append([round(t - first, 3), *(round(ends.get(e, math.nan) - t, 3) for e in STAGES.values()),
                             round(times[certificate_id][1] - t, 3)])
    cpu: dict[str, float] = {}
    if sampler is not None:
        await asyncio.sleep(2 * SAMPLE_S)  # a sample after the end
        cpu = sampler.between(first, last)
    return Phase(name, len(requests), last - first, acked - first, rate, deployed, audited, cpu, stages)


def stage_summary(sent: dict[str, float], stage_times: dict[str, dict[str, float]],
                  deployed: dict[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    first = min(sent.values())
    out: dict[str, dict[str, float]] = {}
    previous = dict(sent)
    for service, event_type in (*STAGES.items(), ("auditor", "stored")):
        if event_type == "stored":
            ends = {c: stored for c, (_, stored) in deployed.items()}
        else:
            ends = {c: types[event_type] for c, types in stage_times.items() if event_type in types}
        if len(ends) < len(sent):
            continue
        spans = [ends[c] - previous[c] for c in sent]
        done = max(ends[c] for c in sent) - first
        out[service] = {"all_done_s": done, "rate": len(sent) / done if done else 0.0, "median_in_stage_s": percentile(spans, 50),
                        "p99_in_stage_s": percentile(spans, 99)}
        previous = ends
    return out


# --- profiles (optional: py-spy is not a dependency) --------------------------------------------------------------


def start_profiles(args: argparse.Namespace, roots: dict[str, list[int]]) -> list[subprocess.Popen[bytes]]:
    """``py-spy record`` (raw collapsed stacks, 50 Hz, idle threads included: wall time) on each service's (first
    instance's) process."""
    if args.profile_dir is None:
        return []
    args.profile_dir.mkdir(parents=True, exist_ok=True)
    spies = []
    for role in (*SERVICES[:4], "emca-sim"):
        for mode, flags in (("wall", ["--idle"]), ("cpu", ["--gil"])):
            out = args.profile_dir / f"{role}.{mode}.txt"
            command = [args.py_spy, "record", "-p", str(roots[role][0]), "-r", "50", "--nonblocking", "-f", "raw", "-o", str(out),
                       *flags, *(["--subprocesses"] if role == "auditor" else [])]
            spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1)
    return spies


def stop_profiles(spies: Sequence[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    for spy in spies:
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


# --- the comparisons ------------------------------------------------------------------------------------------------


def sim_view(stack: ScaleStack, connector: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(data_dir=stack.var_dir / "emca-sim", endpoints=SimpleNamespace(api_url=connector["base_url"]))


async def measure_naive(view: SimpleNamespace, csrs: Sequence[str], workdir: Path, pids: dict[str, list[int]]) -> Simple:
    """One synchronous loop: submit, write the certificate to a file (fsync), insert one audit row and commit."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(workdir / "naive.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY, certificate_id TEXT, serial TEXT, issued_at TEXT, pem TEXT)")
    connection = connect(sim_endpoint(view, EmcaVersion("V4.2.4+")), HttpOptions.for_concurrency(1))
    errors = 0
    try:
        await connection.submit_csr(csr_pem=csrs[0], profile_name="TLS Server", subscriber_id="SUB-0001",
                                    application_id="naive-warm")  # token and connection: not timed
        roles = {name: pid for name, pid in pids.items() if name == "emca-sim"}
        before, wall0 = _cpu(roles), time.perf_counter()
        for index, csr in enumerate(csrs[1:], start=1):
            try:
                outcome = await connection.submit_csr(csr_pem=csr, profile_name="TLS Server", subscriber_id="SUB-0001",
                                                      application_id=f"naive-{index}")
            except EmcaError:
                errors += 1
                continue
            if not isinstance(outcome, IssuedCertificate):
                errors += 1
                continue
            path = workdir / f"{index}.pem"
            with path.open("w") as handle:
                handle.write(outcome.certificate_pem + "".join(outcome.chain_pem))
                handle.flush()
                os.fsync(handle.fileno())
            db.execute("BEGIN")
            db.execute("INSERT INTO audit (certificate_id, serial, issued_at, pem) VALUES (?, ?, ?, ?)",
                       (f"naive-{index}", outcome.serial, datetime.now(UTC).isoformat(), outcome.certificate_pem))
            db.execute("COMMIT")
        wall, after = time.perf_counter() - wall0, _cpu(roles)
    finally:
        await connection.aclose()
        db.close()
    count = len(csrs) - 1
    spent = {name: after[name] - before[name] for name in before}
    spent["other"] = max(0.0, spent.pop("machine") - sum(spent.values()))
    return Simple("naive loop", count - errors, errors, wall, spent)


def _cpu(roles: dict[str, list[int]]) -> dict[str, float]:
    children = _children()
    values = {role: tree_cpu_seconds(trees_of(pids, children)) for role, pids in roles.items()}
    values["bench"] = time.process_time()
    values["machine"] = machine_busy_seconds()
    return values


# --- report ------------------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "nproc": os.cpu_count(), "cpu": model,
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,  # the naive loop's (and the stack's)
            "command": shlex.join([".venv/bin/python", "bench/pipeline.py", *_shown(sys.argv[1:])])}


def _shown(argv: Sequence[str]) -> list[str]:
    """The arguments with the password of ``--postgres-url`` hidden."""
    return [safe_url(value) if previous == "--postgres-url" else
            "--postgres-url=" + safe_url(value.split("=", 1)[1]) if value.startswith("--postgres-url=") else value
            for previous, value in zip(["", *argv], argv, strict=False)]


def report(info: dict[str, Any], args: argparse.Namespace, layout: Layout, phases: Sequence[Phase], direct: Simple,
           naive: Simple | None, rss: dict[str, list[tuple[str, int, float]]], idle: dict[str, float]) -> str:
    burst = phases[0]
    roles = (*ROLES, *(["postgresql"] if "postgresql" in burst.cpu_s else []))
    others = [direct, *([naive] if naive is not None else [])]
    database = (f"SQLite {info['sqlite']}" if info["database"] == "sqlite" else
                f"PostgreSQL {info['database_version']} (naive loop: SQLite {info['sqlite']})")
    lines = [f"Pipeline (end to end) on {layout.label}, {info['date']}, {info['nproc']} x {info['cpu']}, "
             f"Python {info['python']}, database {database}",
             f"`{info['command']}`: layout {layout.name}, N={args.requests}, concurrency {args.concurrency} per issuer", ""]
    lines += ["| measurement | requests | certs/s | latency p50 / p95 / p99 s (deployed) | p99 s (audited) |",
              "|---|---|---|---|---|"]
    for phase in phases:
        dep = phase.latency_deployed_s
        label = phase.name + (f" (offered {phase.offered_rate:,.1f}/s)" if phase.offered_rate else "")
        lines.append(f"| {label} | {phase.requests:,} | {phase.rate:,.1f} | {percentile(dep, 50):.3f} / "
                     f"{percentile(dep, 95):.3f} / {percentile(dep, 99):.3f} | {percentile(phase.latency_audited_s, 99):.3f} |")
    for other in others:
        lines.append(f"| {other.name} | {other.requests:,} ({other.errors} errors) | {other.rate:,.1f} | – | – |")
    lines += ["", "Stages (from the first publish until the stage's N-th event; time a certificate spent in the stage):", "",
              "| measurement | stage | all done after s | rate /s | median in stage s | p99 in stage s |", "|---|---|---|---|---|---|"]
    for phase in phases:
        for stage, v in phase.stages.items():
            lines.append(f"| {phase.name} | {stage} | {v['all_done_s']:.2f} | {v['rate']:,.1f} | {v['median_in_stage_s']:.3f} | "
                         f"{v['p99_in_stage_s']:.3f} |")
    lines += ["", "CPU ms per certificate (and cores used) over each span, every instance of a role together:", "",
              "| process | " + " | ".join(p.name for p in phases) + "".join(f" | {o.name}" for o in others) +
              " | idle (cores) | peak RSS MiB |",
              "|---|" + "---|" * (len(phases) + len(others) + 2)]
    shown = [r for role in roles for r in ((role, KAFKA_JIT) if role == "kafka" and KAFKA_JIT in burst.cpu_s else (role,))]
    for role in (*shown, "other"):
        cells = [f"{p.ms_per_cert(role):.2f} ({p.cpu_s.get(role, 0.0) / p.wall_s:.2f})" for p in phases]
        for other in others:
            value = other.cpu_s.get(role)
            cells.append("–" if value is None or not other.requests else
                         f"{1000 * value / other.requests:.2f} ({value / other.wall_s:.2f})")
        memory = " + ".join(f"{mib:,.0f}" + ("" if name.startswith("python") or name.startswith("java") else f" ({name})")
                            for name, _pid, mib in rss.get(role, [])) or "–"
        label = "of it, Kafka's JIT compiler" if role == KAFKA_JIT else role
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {idle.get(role, 0.0):.2f} | {memory} |")
    kernel = [role for role in roles if role + KERNEL in burst.cpu_s]
    if kernel:
        lines += ["", f"of it, the kernel's (system time) in the {burst.name}, ms per certificate: " +
                  ", ".join(f"{role} {burst.ms_per_cert(role + KERNEL):.2f}" for role in kernel)]
    total = sum(burst.ms_per_cert(role) for role in roles)
    lines += ["", f"{burst.name}: all our processes {total:.2f} CPU ms per certificate; "
              f"largest: {max((*SERVICES, 'kafka', *roles[len(ROLES):]), key=burst.ms_per_cert)}",
              f"issue 18's targets: the four services {sum(burst.ms_per_cert(s) for s in SERVICES[:4]):.2f} ms per certificate "
              f"(<= 3), Kafka {burst.ms_per_cert('kafka'):.2f} ms (<= 0.5; {burst.ms_per_cert(KAFKA_JIT):.2f} of it "
              "its JIT compiler), "
              f"{burst.rate / direct.rate if direct.rate else 0.0:.2f} of the direct rate (>= 0.5); "
              "paced p99 < 1 s at half the peak rate; each service < 200 MB RSS"]
    return "\n".join(lines)


def comparison(results: Sequence[dict[str, Any]]) -> str:
    """One row per layout of the run: rates, the share of the direct rate, and CPU ms per certificate in the burst."""
    roles = [r for r in (*ROLES, "postgresql") if any(r in res["phases"][0]["cpu_ms_per_cert"] for res in results)]
    lines = ["Layouts of this run (burst; CPU ms per certificate, every instance of a role together):", "",
             "| layout | certs/s | direct certs/s | share of direct | paced p99 s | " + " | ".join(roles) + " | all |",
             "|---|" + "---|" * (len(roles) + 5)]
    for res in results:
        burst, paced, direct = res["phases"][0], res["phases"][1], res["direct"]
        cpu = burst["cpu_ms_per_cert"]
        lines.append(f"| {res['layout']} | {burst['rate']:,.1f} | {direct['rate']:,.1f} | {burst['rate'] / direct['rate']:.2f} | "
                     f"{paced['latency_deployed_s']['p99']:.3f} | " + " | ".join(f"{cpu.get(r, 0.0):.2f}" for r in roles) +
                     f" | {sum(cpu.get(r, 0.0) for r in roles):.2f} |")
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------------------------------------


async def measure(stack: ScaleStack, args: argparse.Namespace, layout: Layout, tmp: Path, naive_too: bool) -> dict[str, Any]:
    info = machine()
    hmac_key, connector = set_up(stack, args.concurrency)
    db = Db(stack.db_urls()["auditor"])  # what it reads is the auditor's (its own SQLite file, or the shared PostgreSQL)
    info |= {"database": db.engine.dialect.name, "database_version": db.version()}
    roots = roots_of(stack)
    postmaster = postmaster_pid(db)
    if postmaster is not None:  # the server's CPU (all its backends: the machine should be idle but for this run)
        roots["postgresql"] = [postmaster]
    log(f"processes: {roots}")
    log(f"making {args.warm + args.requests:,} signed requests and {args.requests + args.naive_requests + 1:,} "
        "more CSRs (not timed)")
    warm = make_requests("warm", args.warm, hmac_key)
    burst = make_requests("burst", args.requests, hmac_key)
    direct_csrs = [make_csr(f"direct-{i}.bench.example.test") for i in range(args.requests)]
    direct_warm = [make_csr(f"direct-warm-{i}.bench.example.test") for i in range(2 * args.concurrency)]
    naive_csrs = [make_csr(f"naive-{i}.bench.example.test") for i in range(args.naive_requests + 1)] if naive_too else []
    producer = await producer_for(stack)
    sampler = Sampler(roots)
    sampler.start()
    try:
        phases, timeline = [], []
        warm_phase = await run_phase(stack, db, producer, None, "warm-up", warm, "warm", None, args.timeout)
        log(f"warm-up: {warm_phase.requests} deployed, p50 {percentile(warm_phase.latency_deployed_s, 50):.2f} s")
        await asyncio.sleep(2)
        idle_start = time.time()
        await asyncio.sleep(args.idle_seconds)  # what every process uses with nothing to do
        idle = {role: v / (time.time() - idle_start) for role, v in sampler.between(idle_start, time.time()).items()}
        spies = start_profiles(args, roots)
        try:
            phases.append(await run_phase(stack, db, producer, sampler, "burst", burst, "burst", None, args.timeout))
        finally:
            stop_profiles(spies)
        log(f"burst: {phases[0].rate:,.1f} certs/s end to end")
        rate = args.paced_rate or args.paced_fraction * phases[0].rate
        count = max(10, round(rate * args.paced_seconds))
        paced = make_requests("paced", count, hmac_key)  # made here: the rate is known only now (not timed)
        await asyncio.sleep(2)
        phases.append(await run_phase(stack, db, producer, sampler, "paced", paced, "paced", rate, args.timeout, timeline))
        log(f"paced at {rate:,.1f}/s: p99 {percentile(phases[1].latency_deployed_s, 99):.3f} s")
    finally:
        sampler.stop()
        await producer.stop()
        db.close()
    rss = peak_rss({role: pids for role, pids in roots.items() if role != "postgresql"})  # shared memory: no RSS of its own
    log("direct: the simulator over HTTPS through the real client")
    view = sim_view(stack, connector)
    measured = await measure_direct(None, view, EmcaVersion("V4.2.4+"), direct_csrs, direct_warm, args.concurrency,
                                    {"emca-sim": roots["emca-sim"][0]}, "pipeline")
    direct = Simple(f"direct HTTPS (C={args.concurrency})", measured.certs, measured.errors, measured.wall_s, measured.cpu_s)
    log(f"direct: {direct.rate:,.1f} certs/s")
    naive = None
    if naive_too:
        log(f"naive: one synchronous loop over {args.naive_requests:,} CSRs")
        naive = await measure_naive(view, naive_csrs, tmp / "naive", roots)
        log(f"naive: {naive.rate:,.1f} certs/s")
    print(report(info, args, layout, phases, direct, naive, rss, idle), flush=True)
    return {"layout": layout.name, "brokers": layout.brokers, "instances": layout.instances, "machine": info,
            "idle_cores": idle, "phases": [p.summary() for p in phases], "direct": direct.summary(),
            "naive": None if naive is None else naive.summary(),
            "paced_timeline": {"columns": ["published_s", *(f"{k}_s" for k in STAGES), "audited_s"], "rows": timeline},
            "peak_rss_mib": {role: [[n, p, round(m, 1)] for n, p, m in rows] for role, rows in rss.items()}}


def run(args: argparse.Namespace, layout: Layout, naive_too: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"certrail-pipeline-{layout.name}-", dir=args.work_dir))
    stack = make_stack(tmp / "var", layout, args)
    log(f"certrail up --detach --instances {layout.instances} --brokers {layout.brokers} --db {args.db} in {stack.var_dir}")
    results: dict[str, Any] | None = None
    try:
        started = time.monotonic()
        stack.up()
        log(f"up after {time.monotonic() - started:,.0f} s")
        results = asyncio.run(measure(stack, args, layout, tmp, naive_too))
    finally:
        log("certrail down")
        try:
            stop_stack(stack, args)
        finally:
            if args.keep or results is None:
                log(f"kept {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    return results


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """A SIGTERM (``kill``, a CI timeout) raises SystemExit in the main thread, so `run`'s ``finally`` stops the
    stack: a killed run must not leave its services polling a stopped broker beside the next run."""
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, required=True, help="requests in the burst and in the direct measurement (N)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="the connector's concurrency (the demo connector's default: 8; each issuer instance's) "
                             "and the direct client's")
    parser.add_argument("--layouts", type=lambda text: [Layout.parse(t) for t in text.split(",")], default=[Layout(1, 1)],
                        help="the stacks to measure one after the other, as BROKERSxINSTANCES, comma-separated "
                             "(default 1x1: the single broker, one instance of each service)")
    parser.add_argument("--naive-requests", type=int, help="requests of the naive loop (default N; on the first layout only)")
    parser.add_argument("--warm", type=int, default=50, help="requests through the pipeline before the clock starts")
    parser.add_argument("--paced-seconds", type=float, default=60.0, help="how long the paced phase publishes")
    parser.add_argument("--paced-fraction", type=float, default=0.5, help="the paced rate, as a fraction of the burst's")
    parser.add_argument("--paced-rate", type=float, help="the paced rate in requests/s (instead of --paced-fraction)")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="CPU of the idle stack, measured before the burst")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a phase may take")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10 warm-up requests, 10 s paced")
    parser.add_argument("--profile-dir", type=Path, help="py-spy the services during the burst, collapsed stacks here")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy binary (with --profile-dir)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the stack's database (`certrail up --db`): its SQLite file (default), or a PostgreSQL database "
                             "of its own, dropped at the end (`certrail down --drop-database`) unless --keep")
    parser.add_argument("--postgres-url", default=POSTGRES_URL,
                        help="with --db postgresql: the server, as a URL whose role may CREATE DATABASE "
                             "(default: $CERTRAIL_TEST_POSTGRES_URL, else scripts/postgres.sh's)")
    parser.add_argument("--work-dir", type=Path,
                        help="where the stack's temporary var dir goes (its databases, Kafka's log, the file target's "
                             "directory); default: the system's temporary directory. /dev/shm (tmpfs) takes the disk's "
                             "file-system cost out of the services' kernel time (docs/benchmarks.md)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary var dirs (logs, database) and the PostgreSQL databases")
    parser.add_argument("--json", type=Path, help="write every number here too")
    args = parser.parse_args(argv)
    if args.naive_requests is None:
        args.naive_requests = args.requests
    if args.quick:
        args.warm, args.paced_seconds, args.idle_seconds = min(args.warm, 10), min(args.paced_seconds, 10.0), 3.0
    if args.db == "sqlite" and any(layout.instances > 1 for layout in args.layouts):
        parser.error("several instances of each service share one database: give --db postgresql")
    with sigterm_as_exit():
        results = [run(args, layout, naive_too=index == 0) for index, layout in enumerate(args.layouts)]
    if len(results) > 1:
        print(comparison(results))
    shown = {k: safe_url(v) if k == "postgres_url" else [x.name for x in v] if k == "layouts" else str(v)
             for k, v in vars(args).items()}
    line = json.dumps({"args": shown, "layouts": results})
    print(line)
    if args.json:
        args.json.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
