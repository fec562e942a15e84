"""Scale-out under faults (issue 21): `certrail up --instances 2 --brokers 3 --db postgresql` (a three-node KRaft
cluster, two instances of the gateway, issuer, deployer and auditor, a fresh PostgreSQL database), a steady load of
HMAC-signed requests published to certrail.requests as an upstream system does, on a V4.0.17 connector; meanwhile, in
this order: SIGKILL of the broker leading a commands partition and its restart; SIGKILL of the active KRaft controller
(found with DescribeQuorum) and its restart; SIGKILL of one instance of each service (one at a time; the gateway killed
is the scheduler's leader; while deployer-1 and auditor-1 are dead, every gateway still answers the operator's reads that
need them: the internal API clients fail over, decision 0031) and its restart; SIGSTOP of one issuer instance for longer
than the session timeout, then SIGCONT. Afterwards: every request issued exactly once by the simulator (counted per
CSR public key), deployed exactly once, every offset of every partition of every certrail topic in the audit store,
`certrail audit verify` passing, and no consumer group with lag. Every process is stopped and the database dropped
(`certrail down --drop-database`), also on failure. docs/scaling.md has what it measured."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from services.auditor.kafka_reader import kafka_reader, topic_partitions
from services.common.contracts.envelope import encode, make_event
from services.common.contracts.events import RequestAccepted, RequestRejected
from services.common.contracts.requests import IssueRequested
from services.common.contracts.signing import signed
from services.common.contracts.topics import Topics
from services.common.emca.types import EmcaVersion
from services.common.kafka_config import admin_kwargs, producer_kwargs
from services.common.kafka_local import LocalKafkaError
from tests.conftest import wait_until
from tests.e2e.support import POSTGRES_URL, ScaleStack, cli
from tests.integration.test_gateway_api import connector_json
from tests.issuer_harness import make_csr, metric

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONNECTOR = "emca-scale"  # V4.0.17: a repeated applicationId returns the existing certificate
PROFILE = "scale-web"
TARGET = "scale-files"
REQUESTER = "scale-requester"
KEY_ID = "scale-1"
DOMAIN = "scale.certrail.test"
SERVICES = ("gateway", "issuer", "deployer", "auditor")
SESSION_TIMEOUT_S = 10
RATE_PER_S = 2.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleStack]:
    value = ScaleStack.in_block(tmp_path_factory.mktemp("scale") / "var", extra_env={
        "CERTRAIL_UP_INSTANCES": "2", "CERTRAIL_UP_KAFKA_BROKERS": "3", "CERTRAIL_UP_DB": "postgresql",
        "CERTRAIL_UP_POSTGRES_URL": POSTGRES_URL,
        "CERTRAIL_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_S * 1000),
        "CERTRAIL_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "CERTRAIL_GATEWAY_SCHEDULER": '{"interval_s": 2, "lease_ttl_s": 10}'})
    try:
        started = time.monotonic()
        value.up()
        print(f"\ncertrail up --instances 2 --brokers 3 --db postgresql: {time.monotonic() - started:.0f} s")
        yield value
    finally:
        for pid_file in (value.var_dir / "run").glob("*.pid") if (value.var_dir / "run").exists() else []:
            try:  # a process left stopped by a failed test must be able to handle SIGTERM
                os.kill(int(pid_file.read_text()), signal.SIGCONT)
            except (ProcessLookupError, ValueError):
                pass
        result = value.down_and_drop()
        assert result.returncode == 0, result.stdout + result.stderr


# --- set-up and load -------------------------------------------------------------------------------------------


def set_up(stack: ScaleStack) -> bytes:
    """A V4.0.17 connector, a requester-key profile on it, an HMAC key for the requester, a file target bound to it."""
    sim = SimpleNamespace(data_dir=stack.var_dir / "emca-sim", endpoints=SimpleNamespace(api_url=f"https://127.0.0.1:{stack.ports['SIM']}"))
    with stack.api("admin") as admin:
        answer = admin.post("/v1/connectors", json=connector_json(sim, EmcaVersion.V4_0_17, CONNECTOR))  # type: ignore[arg-type]
        assert answer.status_code == 201, answer.text
        profile = {"name": PROFILE, "connector": CONNECTOR, "ca_profile": "TLS Server", "key_generation": "requester",
                   "allowed_requesters": [REQUESTER], "domain_rules": {"dns_suffixes": [DOMAIN]},
                   "key_policy": {"ec_curves": ["P-256"]}, "validity_days": 90}
        answer = admin.post("/v1/profiles", json=profile)
        assert answer.status_code == 201, answer.text
        answer = admin.post(f"/v1/requesters/{REQUESTER}/keys", json={"key_id": KEY_ID})
        assert answer.status_code == 201, answer.text
        key = base64.b64decode(answer.json()["secret_base64"])
    target = {"dir": str(stack.var_dir / "deploy" / "scale"), "per_certificate": True}
    for argv in (["targets", "add", TARGET, "--kind", "file", "--config", json.dumps(target)], ["targets", "bind", PROFILE, TARGET]):
        result = cli(stack.tool_env(), *argv, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    return key


def spki_sha256(csr_pem: str) -> str:
    public = x509.load_pem_x509_csr(csr_pem.encode()).public_key()
    return hashlib.sha256(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


class Load:
    """Signed requests published to certrail.requests as the upstream `requester` principal, ``RATE_PER_S``, in a
    thread of its own (an acks=all idempotent producer bootstrapping from every broker)."""

    def __init__(self, stack: ScaleStack, hmac_key: bytes) -> None:
        self.settings = stack.settings("requester")
        self.hmac_key = hmac_key
        self.keys: dict[str, str] = {}  # certificate id -> SHA-256 of its CSR's public key
        self.requests: dict[str, IssueRequested] = {}  # certificate id -> the signed request
        self.acked: set[str] = set()
        self.errors: list[str] = []
        self.slowest_send_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self, index: int) -> tuple[str, bytes]:
        certificate_id = f"s{index}.{DOMAIN}"
        csr = make_csr(certificate_id)
        data = IssueRequested(request_id=f"scale-{index}", requester=REQUESTER, profile=PROFILE, certificate_id=certificate_id,
                              csr=csr, sans=[f"dns:{certificate_id}"])
        data = signed(data, KEY_ID, self.hmac_key)
        event = make_event(data, id=f"scale-up-{index}", source="/tests/scale-out",
                           time=datetime.now(UTC), subject=certificate_id, correlationid=data.request_id)
        self.keys[certificate_id] = spki_sha256(csr)
        self.requests[certificate_id] = data
        return certificate_id, encode(event)

    async def _again(self, certificate_ids: list[str]) -> None:
        """The same signed requests once more, as a retrying upstream would send them: another event id, and
        keyed by the copy (another partition, so mostly the other gateway instance reads it)."""
        producer = AIOKafkaProducer(**producer_kwargs(self.settings))
        await producer.start()
        try:
            for n, certificate_id in enumerate(certificate_ids):
                data = self.requests[certificate_id]
                event = make_event(data, id=f"scale-again-{n}", source="/tests/scale-out", time=datetime.now(UTC),
                                   subject=certificate_id, correlationid=data.request_id)
                await producer.send_and_wait(Topics().requests, encode(event), key=f"again-{n}".encode())
        finally:
            await producer.stop()

    def again(self, certificate_ids: list[str]) -> None:
        asyncio.run(self._again(certificate_ids))

    async def _run(self, count: int | None) -> None:
        producer = AIOKafkaProducer(**producer_kwargs(self.settings))
        await producer.start()
        pending: set[asyncio.Task[None]] = set()
        try:
            index, start = len(self.keys), time.monotonic()
            first = index
            while not self._stop.is_set() and (count is None or index < first + count):
                delay = start + (index - first) / RATE_PER_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                certificate_id, value = self._record(index)
                task = asyncio.create_task(self._send(producer, certificate_id, value))
                pending.add(task)
                task.add_done_callback(pending.discard)
                index += 1
            if pending:
                await asyncio.gather(*pending)
        finally:
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, certificate_id: str, value: bytes) -> None:
        sent = time.monotonic()
        try:
            await producer.send_and_wait(Topics().requests, value, key=certificate_id.encode())
        except Exception as exc:  # noqa: BLE001 - every failed send is kept and fails the test
            self.errors.append(f"{certificate_id}: {type(exc).__name__}: {exc}")
            return
        self.slowest_send_s = max(self.slowest_send_s, time.monotonic() - sent)
        self.acked.add(certificate_id)

    def burst(self, count: int) -> None:
        asyncio.run(self._run(count))

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(None)), name="scale-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)
            assert not self._thread.is_alive(), "the load's producer did not finish its sends within 120 s"

    def published(self) -> int:
        return len(self.keys)


# --- reading the outcome ------------------------------------------------------------------------------------------


def db(stack: ScaleStack, table: str) -> Engine:
    """An engine on ``table``'s owner's schema (each service its own in the stack's database)."""
    return create_engine(stack.db_url(table), poolclass=NullPool)


def deployed_ids(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT certificate_id, COUNT(*) FROM deployer_deployments WHERE status = 'deployed' "
                                       "AND certificate_id LIKE :pattern GROUP BY certificate_id"), {"pattern": f"%.{DOMAIN}"})
        return {str(row[0]): int(row[1]) for row in rows}


def audit_gaps(stack: ScaleStack, engine: Engine) -> list[str]:
    """Partitions of certrail's topics whose offsets [beginning, end) are not all in audit_records."""

    async def ranges() -> dict[tuple[str, int], tuple[int, int]]:
        settings = stack.settings("admin")
        partitions = await topic_partitions(settings, pattern=Topics().all_pattern)
        async with kafka_reader(settings) as consumer:
            begin = await consumer.beginning_offsets(partitions)
            end = await consumer.end_offsets(partitions)
        return {(tp.topic, tp.partition): (begin[tp], end[tp]) for tp in partitions}

    kafka = asyncio.run(ranges())
    assert (Topics().requests, 0) in kafka, sorted(kafka)
    with engine.connect() as connection:
        rows = connection.execute(text('SELECT topic, "partition", COUNT(DISTINCT "offset"), MIN("offset"), MAX("offset") '
                                       'FROM audit_records GROUP BY topic, "partition"'))
        stored = {(str(row[0]), int(row[1])): (int(row[2]), int(row[3]), int(row[4])) for row in rows}
    gaps = []
    for key, (begin, end) in sorted(kafka.items()):
        if end == begin:
            continue
        n, lo, hi = stored.get(key, (0, -1, -1))
        if n != end - begin or lo != begin or hi != end - 1:
            gaps.append(f"{key[0]}/{key[1]}: Kafka [{begin}, {end}), stored {n} distinct offsets in [{lo}, {hi}]")
    return gaps


def group_lag(stack: ScaleStack) -> dict[str, int]:
    """Records not yet committed, per consumer group (every group on the cluster)."""

    async def lags() -> dict[str, int]:
        settings = stack.settings("admin")
        admin = AIOKafkaAdminClient(**admin_kwargs(settings))
        await admin.start()
        try:
            groups = sorted(str(g[0]) for g in await admin.list_consumer_groups())
            committed = {g: await admin.list_consumer_group_offsets(g) for g in groups}
        finally:
            await admin.close()
        partitions = sorted({tp for offsets in committed.values() for tp in offsets})
        async with kafka_reader(settings) as consumer:
            end = await consumer.end_offsets(partitions) if partitions else {}
        return {g: sum(max(0, end[tp] - meta.offset) for tp, meta in offsets.items() if meta.offset >= 0)
                for g, offsets in committed.items()}

    return asyncio.run(lags())


# --- faults -------------------------------------------------------------------------------------------------------


def pid_of(stack: ScaleStack, label: str) -> int:
    return int((stack.var_dir / "run" / f"{label}.pid").read_text())


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def restart_missing(stack: ScaleStack) -> float:
    started = time.monotonic()
    result = cli(stack.env, "up", "--detach")
    assert result.returncode == 0, result.stdout + result.stderr + stack.logs()
    return time.monotonic() - started


def commands_leader(stack: ScaleStack) -> tuple[int, list[int]]:
    async def describe() -> dict[str, Any]:
        admin = AIOKafkaAdminClient(**admin_kwargs(stack.settings("admin")))
        await admin.start()
        try:
            (topic,) = await admin.describe_topics([Topics().commands(CONNECTOR)])
        finally:
            await admin.close()
        return dict(min(topic["partitions"], key=lambda p: p["partition"]))

    try:
        partition = asyncio.run(describe())
    except KafkaError:  # the admin client picked the dead broker: ask again
        return -1, []
    return int(partition["leader"]), sorted(int(n) for n in partition["isr"])


class FullIsr:
    """When partition 0 of the connector's commands topic has all 3 replicas in sync again, polled once a second in a
    thread of its own, so that the next faults need not wait for a restarted node to catch up."""

    def __init__(self, stack: ScaleStack, since: float) -> None:
        self.after_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(stack, since), name="scale-isr", daemon=True)
        self._thread.start()

    def _watch(self, stack: ScaleStack, since: float) -> None:
        while not self._stop.wait(1.0):
            if len(commands_leader(stack)[1]) == 3:
                self.after_s = time.monotonic() - since
                return

    def wait(self, timeout_s: float) -> float:
        wait_until(lambda: self.after_s is not None, "the restarted node back in the ISR", timeout_s, interval_s=0.5)
        assert self.after_s is not None
        return self.after_s

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def active_controller(stack: ScaleStack) -> int:
    """The active KRaft controller's node id (DescribeQuorum), -1 while none is elected or no node answers."""
    try:
        return stack.cluster().describe_quorum(timeout=10).leader_id
    except (KafkaError, LocalKafkaError, TimeoutError):
        return -1


def operator_reads_answered(stack: ScaleStack, service: str) -> None:
    """Every gateway answers an operator's read that needs ``service`` (the deployer: targets; the auditor: the
    inventory), while one instance of it is dead."""
    path, count = {"deployer": ("/v1/targets", lambda body: [t["name"] for t in body["targets"]].count(TARGET)),
                   "auditor": (f"/v1/certificates?profile={PROFILE}&limit=5", lambda body: min(len(body["certificates"]), 1))}[service]
    for instance in (1, 2):
        with stack.api("admin") as admin:
            answer = admin.get(f"http://127.0.0.1:{stack.port('gateway', instance)}{path}")
        assert answer.status_code == 200, f"gateway-{instance} {path} with {service}-1 dead: {answer.status_code} {answer.text[:300]}"
        assert count(answer.json()) == 1, answer.text[:300]


def scheduler_leaders(stack: ScaleStack) -> list[int]:
    leaders = []
    for instance in (1, 2):
        try:
            text_ = stack.instance_metrics("gateway", instance)
        except httpx.HTTPError:
            continue
        if metric(text_, "certrail_gateway_scheduler_leader") == 1:
            leaders.append(instance)
    return leaders


class Timings(dict[str, float]):
    """What took how long, printed as it happens (`pytest -s`) for docs/scaling.md."""

    def __setitem__(self, key: str, value: float) -> None:
        super().__setitem__(key, value)
        print(f"  {key}: {value:.1f} s", flush=True)


@pytest.mark.timeout(900)  # `certrail up` of 3 JVMs and 9 processes alone takes 80-100 s on this machine
def test_two_instances_of_everything_on_three_brokers_survive_faults_under_load(stack: ScaleStack) -> None:
    began = time.monotonic()
    timings = Timings()
    hmac_key = set_up(stack)
    deployer, issuer, auditor = (db(stack, t) for t in ("deployer_deployments", "issuer_operations", "audit_records"))
    load = Load(stack, hmac_key)
    rejoined: FullIsr | None = None
    try:
        # the instances share the work: each group has two members, exactly one gateway schedules renewals
        load.burst(10)
        wait_until(lambda: len(deployed_ids(deployer)) >= 10, "the warm-up requests to be deployed", 120, interval_s=0.5)
        repeated = sorted(load.keys)  # the gateway's dedupe across instances: each again, on another partition
        load.again(repeated)
        wait_until(lambda: len(scheduler_leaders(stack)) == 1, lambda: f"one scheduler leader, not {scheduler_leaders(stack)}",
                   60, interval_s=1)
        load.start()

        # 1. SIGKILL of the broker leading the connector's commands partition 0, then its restart
        leader, isr = commands_leader(stack)
        assert leader > 0 and len(isr) == 3, (leader, isr)
        cluster = stack.cluster()
        pid = cluster.node(leader).status().pid
        assert pid is not None
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: commands_leader(stack)[0] not in (leader, -1), f"a new leader than node {leader}", 60, interval_s=0.5)
        timings["broker: new leader"] = time.monotonic() - killed
        time.sleep(5)  # the load goes on with one broker down
        cluster.node(leader).start(wait_timeout=180)
        wait_until(lambda: len(commands_leader(stack)[1]) == 3, "node back in the ISR", 180, interval_s=1)
        timings["broker: ISR 3 again after the kill"] = time.monotonic() - killed

        # 2. SIGKILL of the active controller (each node is broker and controller), then its restart
        controller = active_controller(stack)
        assert controller > 0, controller
        pid = cluster.node(controller).status().pid
        assert pid is not None
        sent_before = load.published()
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: active_controller(stack) not in (controller, -1), f"another active controller than node {controller}",
                   60, interval_s=0.2)
        timings["controller: another active controller"] = time.monotonic() - killed
        wait_until(lambda: commands_leader(stack)[0] not in (controller, -1) and controller not in commands_leader(stack)[1],
                   f"node {controller} out of the ISR", 60, interval_s=0.5)
        timings["controller: its partitions moved"] = time.monotonic() - killed
        wait_until(lambda n=sent_before: len(load.acked) >= n + 6, "acknowledged sends with the controller dead", 60,  # type: ignore[misc]
                   interval_s=0.2)
        cluster.node(controller).launch()  # not waited for: the JVM starts and catches up while the next faults go on
        rejoined = FullIsr(stack, killed)

        # 3. SIGKILL of one instance of each service, one at a time (the gateway: the scheduler's leader)
        for service, instance in (("gateway", scheduler_leaders(stack)[0]), ("issuer", 1), ("deployer", 1), ("auditor", 1)):
            label = f"{service}-{instance}"
            pid = pid_of(stack, label)
            published = load.published()
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda p=pid: gone(p), f"{label} to die", 30, interval_s=0.1)  # type: ignore[misc]
            if service == "gateway":  # the other gateway takes the lease over (lease_ttl_s 10)
                other = 3 - instance
                wait_until(lambda o=other: scheduler_leaders(stack) == [o], "the other gateway to take the lease", 60,  # type: ignore[misc]
                           interval_s=1)
            if service in ("deployer", "auditor"):  # the gateways' internal API clients ask instance 2
                operator_reads_answered(stack, service)
            wait_until(lambda n=published: load.published() >= n + 6, "load while an instance is dead", 30, interval_s=0.2)  # type: ignore[misc]
            timings[f"restart {label}"] = restart_missing(stack)

        timings["controller: ISR 3 again after the kill"] = rejoined.wait(240)

        # 4. SIGSTOP of one issuer instance for longer than the session timeout, then SIGCONT
        pid = pid_of(stack, "issuer-2")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(SESSION_TIMEOUT_S + 5)  # the stall itself is the fault
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda n=load.published(): load.published() >= n + 10, "load after the stall", 30, interval_s=0.2)  # type: ignore[misc]
    finally:
        if rejoined is not None:
            rejoined.stop()
        load.stop()
    timings["faults"] = time.monotonic() - began

    # afterwards: everything deployed, exactly once; issued exactly once; audit complete; no lag
    assert not load.errors, load.errors[:5]
    assert load.acked == set(load.keys), f"{len(load.keys) - len(load.acked)} sends not acknowledged"
    settle = time.monotonic()
    wait_until(lambda: len(deployed_ids(deployer)) >= len(load.keys),
               lambda: f"all {len(load.keys)} deployed (now {len(deployed_ids(deployer))})", 240, interval_s=1)
    timings["settle"] = time.monotonic() - settle
    deployments = deployed_ids(deployer)
    assert set(deployments) == set(load.keys)
    assert {c: n for c, n in deployments.items() if n != 1} == {}, "deployed more than once"
    with stack.sim_admin() as admin:
        issued = admin.get("/admin/counters").json()["issued_by_public_key_sha256"]
    counts = {certificate_id: issued.get(key, 0) for certificate_id, key in load.keys.items()}
    assert {c: n for c, n in counts.items() if n != 1} == {}, "not issued exactly once by the simulator"
    with issuer.connect() as connection:
        flagged = int(connection.execute(text("SELECT COUNT(*) FROM issuer_operations WHERE possible_duplicate")).scalar_one())
    with auditor.connect() as connection:
        failed = int(connection.execute(text("SELECT COUNT(*) FROM certificate_inventory WHERE status = 'failed'")).scalar_one())
        answers = connection.execute(text(
            "SELECT correlation_id, COUNT(DISTINCT event_id) FROM audit_records WHERE event_type = :type "
            "AND correlation_id IN :ids GROUP BY correlation_id").bindparams(bindparam("ids", expanding=True)),
            {"type": RequestAccepted.TYPE, "ids": [load.requests[c].request_id for c in repeated]}).all()
        rejected = int(connection.execute(text("SELECT COUNT(*) FROM audit_records WHERE event_type = :type "
                                                "AND correlation_id LIKE 'scale-%'"), {"type": RequestRejected.TYPE}).scalar_one())
    assert (failed, flagged, rejected) == (0, 0, 0)
    # each repeated request accepted once: the repeat answered with the stored records (same event id)
    assert sorted((str(row[0]), int(row[1])) for row in answers) == sorted((load.requests[c].request_id, 1) for c in repeated)

    gaps: list[str] = []
    lags: dict[str, int] = {}

    def settled() -> bool:
        nonlocal gaps, lags
        lags = group_lag(stack)
        gaps = audit_gaps(stack, auditor)
        return not gaps and not any(lags.values())

    wait_until(settled, lambda: f"no audit gap and no lag: gaps {gaps[:5]}, lag {lags}", 120, interval_s=2)
    assert {f"certrail-{service}" for service in SERVICES} <= set(lags), sorted(lags)
    for service in SERVICES:  # every instance alive and answering after the faults (the stalled issuer too)
        for instance in (1, 2):
            answer = httpx.get(f"http://127.0.0.1:{stack.port(service, instance)}/health", timeout=10)
            assert answer.status_code == 200, f"{service}-{instance}: {answer.status_code} {answer.text[:300]}"
    runs: list[subprocess.CompletedProcess[str]] = []

    def verified() -> bool:
        runs.append(cli(stack.tool_env(), "audit", "verify"))
        return runs[-1].returncode == 0

    wait_until(verified, lambda: f"`audit verify` to pass:\n{runs[-1].stdout}{runs[-1].stderr}", 90, interval_s=3)
    for engine in (deployer, issuer, auditor):
        engine.dispose()
    print(f"\nscale-out: {len(load.keys)} requests, slowest send {load.slowest_send_s:.1f} s; "
          + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + f"; total {time.monotonic() - began:.0f} s")
