"""The issuer (a real process) against a real Kafka and the emCA simulator, on every dialect:
issue, renew and revoke round trips (the revoked serial in the CRL), manual approval, a CSR emCA
rejects, a malformed command, redelivery, outages, rotated credentials, crash points and SIGKILL."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import signal
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from emca_sim.server import SimServer, start_in_thread
from services.common.connectors.models import ConnectorEdit
from services.common.contracts.deadletter import DeadLetter
from services.common.contracts.envelope import encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import (
    CertificateIssued,
    CertificateRevoked,
    ConnectorStatus,
    ConnectorStatusChanged,
    IssuanceFailed,
    IssuancePending,
)
from services.common.emca.client import connect
from services.common.emca.support import probe_csr_pem
from services.common.emca.types import EmcaVersion, HttpOptions
from services.common.settings import KafkaSettings
from services.issuer.processor import CRASH_EXIT_CODE
from tests.conftest import poll_until
from tests.emca_sim_helpers import ISSUING_CA, USERS, SimDriver, sim_endpoint, sim_spec
from tests.issuer_harness import IssuerBench, metric
from tests.unit.examples import examples

pytestmark = [pytest.mark.integration]

NAMES = {EmcaVersion.V4_0_17: "sim-v4017", EmcaVersion.V4_2_3: "sim-v423", EmcaVersion.V4_2_4: "sim-v424"}


def _admin(sim: SimServer) -> httpx.Client:
    trust = ssl.create_default_context(cafile=str(sim.data_dir / "tls-ca.pem"))
    return httpx.Client(base_url=sim.endpoints.admin_url, verify=trust, timeout=10,
                        headers={"Authorization": f"Bearer {sim.admin_token}"})


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    with start_in_thread(tmp_path_factory.mktemp("emca-sim-issuer"), port=0, crl_port=0, admin_port=0) as server:
        yield server


@pytest.fixture(scope="module")
def sim_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    with start_in_thread(tmp_path_factory.mktemp("emca-sim-issuer-b"), port=0, crl_port=0, admin_port=0) as server:
        yield server


@pytest.fixture
def driver() -> Iterator[Callable[[SimServer, EmcaVersion], SimDriver]]:
    """``driver(sim, version)``: the simulator's admin API for that version's application."""
    clients: list[httpx.Client] = []

    def make(sim: SimServer, version: EmcaVersion) -> SimDriver:
        clients.append(_admin(sim))
        return SimDriver(clients[-1], USERS[version])

    yield make
    for client in clients:
        client.close()


def issued_by_key(sim: SimServer) -> dict[str, int]:
    """Certificates emCA signed per public key (sha256 of the DER SubjectPublicKeyInfo): what a command's CSR got,
    whatever applicationId the calls carried."""
    with _admin(sim) as admin:
        return admin.get("/admin/counters").json()["issued_by_public_key_sha256"]


def create_calls(sim: SimServer) -> int:
    with _admin(sim) as admin:
        return int(admin.get("/admin/counters").json()["requests_by_method"].get("createCertificates", 0))


def key_of(csr_pem: str) -> str:
    key = x509.load_pem_x509_csr(csr_pem.encode()).public_key()
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


@pytest.fixture
async def bench(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[IssuerBench]:
    async with IssuerBench(kafka_settings, tmp_path) as value:
        yield value


async def _crl_has(sim: SimServer, version: EmcaVersion, certificate_pem: str) -> bool:
    """Whether the CRL (fetched through the connector's client, at the certificate's distribution point) lists it."""
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    url = points[0].full_name[0].value  # type: ignore[index]
    connection = connect(sim_endpoint(sim, version), HttpOptions.for_concurrency(1))
    try:
        crl = x509.load_der_x509_crl(await connection.get_crl(ISSUING_CA, distribution_point=url))
    finally:
        await connection.aclose()
    return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


async def test_round_trips_on_every_dialect(bench: IssuerBench, sim: SimServer) -> None:
    for version, name in NAMES.items():
        await bench.connector(sim, version, name)
    issuer = bench.issuer()
    issuer.start()
    await issuer.wait_healthy()

    # issue on each dialect, and a malformed command and a rejected CSR in between
    first = {name: bench.issue_command(name) for name in NAMES.values()}
    for name, command in first.items():
        await bench.send(name, command)
    await bench.send_raw(NAMES[EmcaVersion.V4_2_4], b'{"specversion": "1.0", "type": "nope"', key=b"broken")
    # an event on a command topic (its producer, the issuer, owns certrail.events.issuer): PRODUCER_NOT_ALLOWED
    misrouted = make_event(examples()[CertificateIssued], id="misrouted-1", source="/forger", time=datetime.now(UTC))
    await bench.send_raw(NAMES[EmcaVersion.V4_2_4], encode(misrouted), key=b"misrouted")
    rejected = bench.issue_command(NAMES[EmcaVersion.V4_0_17], csr=probe_csr_pem())
    await bench.send(NAMES[EmcaVersion.V4_0_17], rejected)
    issued = {}
    for name, command in first.items():
        (event,) = await bench.wait_for(CertificateIssued, issuance_id=command.issuance_id)
        assert event.causationid == bench.of_type(CertificateIssued, issuance_id=command.issuance_id)[0].causationid
        data: CertificateIssued = event.data
        assert data.sans == command.sans and data.connector == name and not data.possible_duplicate
        cert = x509.load_pem_x509_certificate(data.certificate.encode())
        assert format(cert.serial_number, "x") == data.serial
        issued[name] = data
    (failed,) = await bench.wait_for(IssuanceFailed, issuance_id=rejected.issuance_id)
    assert failed.data.error.code is ErrorCode.CA_REJECTED
    letters = {letter.data.source.key: letter.data for letter in await bench.wait_for(DeadLetter, 2)}
    assert set(letters) == {"broken", "misrouted"} and {d.consumer for d in letters.values()} == {"issuer"}
    assert letters["misrouted"].code is ErrorCode.PRODUCER_NOT_ALLOWED
    assert letters["misrouted"].reason == (f"{CertificateIssued.TYPE} may only come from {bench.topics.issuer_events}, "
                                           f"it arrived on {bench.topics.commands(NAMES[EmcaVersion.V4_2_4])}")

    # renew, then revoke the old serial: it appears in the CRL
    for version, name in NAMES.items():
        old = issued[name]
        renewal = bench.issue_command(name, n=int(old.certificate_id.rsplit("-", 1)[1]), revision=2, renew_of=old.serial)
        await bench.send(name, renewal)
        (renewed,) = await bench.wait_for(CertificateIssued, issuance_id=renewal.issuance_id)
        assert renewed.data.replaces_serial == old.serial and renewed.data.serial != old.serial
        revoke = bench.revoke_command(name, old.certificate_id, old.serial, f"revoke-{name}")
        await bench.send(name, revoke)
        (revoked,) = await bench.wait_for(CertificateRevoked, serial=old.serial)
        assert revoked.data.reason == revoke.reason
        assert await _crl_has(sim, version, old.certificate)

    # a redelivered command re-emits the same event, byte for byte the same id and time
    again = first[NAMES[EmcaVersion.V4_2_3]]
    await bench.send(NAMES[EmcaVersion.V4_2_3], again)
    events = await bench.wait_for(CertificateIssued, 2, issuance_id=again.issuance_id)
    assert events[0] == events[1]
    # every record the issuer published names its type in a ce_type header (decision 0010), replays too
    assert [bench.type_headers[e.id] for e in bench.events] == [e.type for e in bench.events]
    text = issuer.metrics()
    assert metric(text, "certrail_issuer_commands_total", {"outcome": "replayed"}) == 1
    assert metric(text, "certrail_issuer_commands_total", {"outcome": "issued"}) == 6
    assert metric(text, "certrail_issuer_commands_total", {"outcome": "dead_lettered"}) == 2
    assert metric(text, "certrail_issuer_emca_request_duration_seconds_count", {"operation": "submit_csr"}) == 7
    # its own producer counts what it published, by type
    published = {"service": "issuer", "type": CertificateIssued.TYPE}
    assert metric(text, "certrail_messages_published_total", published) == len(bench.of_type(CertificateIssued)) == 7
    assert metric(text, "certrail_messages_published_total", {"service": "issuer", "type": DeadLetter.TYPE}) == 2


async def test_manual_approval_is_polled_and_survives_a_restart(bench: IssuerBench, sim: SimServer, driver: Callable[[SimServer, EmcaVersion], SimDriver]) -> None:
    name = await bench.connector(sim, EmcaVersion.V4_2_4, "sim-manual")
    issuer = bench.issuer()
    issuer.start()
    await issuer.wait_healthy()
    approved = bench.issue_command(name, profile="TLS Server Manual")
    refused = bench.issue_command(name, profile="TLS Server Manual")
    await bench.send(name, approved)
    await bench.send(name, refused)
    (pending_a,) = await bench.wait_for(IssuancePending, issuance_id=approved.issuance_id)
    (pending_r,) = await bench.wait_for(IssuancePending, issuance_id=refused.issuance_id)
    issuer.kill(signal.SIGTERM)  # the pending approvals are in the database, not in memory
    sim_driver = driver(sim, EmcaVersion.V4_2_4)
    sim_driver.approve(pending_a.data.ca_request_id)
    sim_driver.reject(pending_r.data.ca_request_id, "not this one")
    issuer.start()
    (issued,) = await bench.wait_for(CertificateIssued, issuance_id=approved.issuance_id)
    (failed,) = await bench.wait_for(IssuanceFailed, issuance_id=refused.issuance_id)
    assert failed.data.error.code is ErrorCode.APPROVAL_REJECTED
    assert issued.causationid == pending_a.causationid


async def test_outage_of_one_connector_queues_its_commands_while_the_other_flows(
    bench: IssuerBench, sim: SimServer, sim_b: SimServer, driver: Callable[[SimServer, EmcaVersion], SimDriver]
) -> None:
    down = await bench.connector(sim, EmcaVersion.V4_0_17, "sim-down")
    up = await bench.connector(sim_b, EmcaVersion.V4_2_4, "sim-up")
    issuer = bench.issuer()
    issuer.start()
    await issuer.wait_healthy()
    sim_driver = driver(sim, EmcaVersion.V4_0_17)
    sent: dict[str, list[str]] = {down: [], up: []}
    ages: list[float] = []
    stop = asyncio.Event()

    async def stream() -> None:
        while not stop.is_set():
            for name in (down, up):
                command = bench.issue_command(name)
                await bench.send(name, command)
                sent[name].append(command.issuance_id)
            await asyncio.sleep(0.1)

    producer = asyncio.create_task(stream())
    try:
        await poll_until(lambda: len(bench.of_type(CertificateIssued, connector=down)) >= 5, "issuance before the outage",
                         interval_s=0.2)
        sim_driver.set_down(True)
        await bench.wait_for(ConnectorStatusChanged, connector=down, status=ConnectorStatus.DOWN)
        # a request with its own deadline fails with CA_UNAVAILABLE once the deadline passes while queued
        hurried = bench.issue_command(down, deadline=datetime.now(UTC) + timedelta(seconds=3))
        await bench.send(down, hurried)
        issued_up_before = len(bench.of_type(CertificateIssued, connector=up))
        loop = asyncio.get_running_loop()
        outage_end = loop.time() + 30
        while loop.time() < outage_end:
            text = issuer.metrics()
            ages.append(metric(text, "certrail_issuer_oldest_queued_command_age_seconds", {"connector": down}))
            assert metric(text, "certrail_issuer_connector_up", {"connector": down}) == 0
            await asyncio.sleep(1.0)
        # the other connector's commands flowed throughout
        assert len(bench.of_type(CertificateIssued, connector=up)) > issued_up_before + 100
        sim_driver.set_down(False)
        await bench.wait_for(ConnectorStatusChanged, connector=down, status=ConnectorStatus.UP, timeout_s=30)
    finally:
        stop.set()
        await producer
    for name in (down, up):
        await poll_until(lambda name=name: {e.data.issuance_id for e in bench.of_type(CertificateIssued, connector=name)}
                         >= set(sent[name]), f"every {name} command issued", 120, interval_s=0.2)
    (expired,) = bench.of_type(IssuanceFailed)
    assert expired.data.issuance_id == hurried.issuance_id and expired.data.error.code is ErrorCode.CA_UNAVAILABLE
    # the queue age rose during the outage, then fell back
    assert max(ages) >= 20 and ages[-1] > ages[0]
    await poll_until(lambda: metric(issuer.metrics(), "certrail_issuer_oldest_queued_command_age_seconds",
                                    {"connector": down}) < 5, "the queue age to fall", 30, interval_s=0.2)
    assert metric(issuer.metrics(), "certrail_issuer_connector_up", {"connector": down}) == 1
    sim_driver.clear_faults()


async def test_rotated_credentials_misconfigure_then_drain_after_the_fix(bench: IssuerBench, sim_b: SimServer, driver: Callable[[SimServer, EmcaVersion], SimDriver]) -> None:
    version = EmcaVersion.V4_2_3
    name = await bench.connector(sim_b, version, "sim-rotated")
    issuer = bench.issuer()
    issuer.start()
    await issuer.wait_healthy()
    first = bench.issue_command(name)
    await bench.send(name, first)
    await bench.wait_for(CertificateIssued, issuance_id=first.issuance_id)
    sim_driver = driver(sim_b, version)
    sim_driver.rotate_credentials()
    queued = [bench.issue_command(name) for _ in range(10)]
    for command in queued:
        await bench.send(name, command)
    (changed,) = await bench.wait_for(ConnectorStatusChanged, connector=name, status=ConnectorStatus.MISCONFIGURED)
    assert changed.data.error is not None and changed.data.error.code is ErrorCode.CA_AUTH_FAILED
    assert bench.registry.get(name).status.value == "misconfigured"
    await poll_until(lambda: metric(issuer.metrics(), "certrail_issuer_connector_misconfigured", {"connector": name}) == 1,
                     "the misconfigured metric", interval_s=0.2)
    assert not bench.of_type(IssuanceFailed) and len(bench.of_type(CertificateIssued, connector=name)) == 1

    # the operator updates the connector with the new credentials: the queue drains, nothing failed
    fresh = sim_spec(sim_b, version, name)
    await bench.registry.update(name, ConnectorEdit(password=fresh.secrets.password, client_id=fresh.secrets.client_id))
    for command in queued:
        await bench.wait_for(CertificateIssued, issuance_id=command.issuance_id, timeout_s=60)
    assert not bench.of_type(IssuanceFailed)
    await bench.wait_for(ConnectorStatusChanged, connector=name, status=ConnectorStatus.UP)


@pytest.mark.parametrize("point", ["after_emca_response", "after_db_commit", "after_publish"])
@pytest.mark.parametrize("version", [EmcaVersion.V4_0_17, EmcaVersion.V4_2_4], ids=str)
async def test_crash_points(bench: IssuerBench, sim: SimServer, point: str, version: EmcaVersion) -> None:
    name = await bench.connector(sim, version, f"crash-{point.replace('_', '-')}-{'a' if version is EmcaVersion.V4_0_17 else 'b'}")
    command = bench.issue_command(name)
    issuer = bench.issuer()
    issuer.start({"CERTRAIL_ISSUER_TEST_CRASH_POINT": point})
    await issuer.wait_healthy()
    await bench.send(name, command)
    assert await issuer.wait_exit() == CRASH_EXIT_CODE
    issuer.start()
    await issuer.wait_healthy()
    events = await bench.wait_for(CertificateIssued, issuance_id=command.issuance_id)
    issued_here = issued_by_key(sim).get(key_of(command.csr), 0)
    if version is EmcaVersion.V4_0_17 or point != "after_emca_response":
        # V4.0.17 dedupes on applicationId; after the DB commit nothing is resubmitted on any dialect
        assert issued_here == 1
        assert all(not e.data.possible_duplicate for e in events)
    else:
        # 4.2.x: emCA issued before the crash and again on the retry: reported, never silent
        assert issued_here == 2
        assert events[-1].data.possible_duplicate
        assert metric(issuer.metrics(), "certrail_issuer_possible_duplicates_total", {"connector": name}) == 1
    # after_publish: published twice at most, identical
    assert all(e == events[0] for e in events)


async def test_a_recorded_outcome_is_published_again_while_emca_is_down(
    bench: IssuerBench, sim_b: SimServer, driver: Callable[[SimServer, EmcaVersion], SimDriver]
) -> None:
    """The outcome committed before a crash is published on restart without emCA (which is down by then)."""
    name = await bench.connector(sim_b, EmcaVersion.V4_2_4, "replay-while-down")
    command = bench.issue_command(name)
    issuer = bench.issuer()
    issuer.start({"CERTRAIL_ISSUER_TEST_CRASH_POINT": "after_db_commit"})
    await issuer.wait_healthy()
    await bench.send(name, command)
    assert await issuer.wait_exit() == CRASH_EXIT_CODE
    assert not bench.of_type(CertificateIssued, issuance_id=command.issuance_id)  # recorded, never published
    sim_driver = driver(sim_b, EmcaVersion.V4_2_4)
    sim_driver.set_down(True)
    try:
        issuer.start()
        await issuer.wait_healthy()
        (event,) = await bench.wait_for(CertificateIssued, issuance_id=command.issuance_id)
        assert issued_by_key(sim_b).get(key_of(command.csr), 0) == 1  # issued once, before the crash
        assert not event.data.possible_duplicate
    finally:
        sim_driver.set_down(False)


BATCHED = {"CERTRAIL_ISSUER_BATCH_MAX_CSRS": "10"}  # the default, spelled out: 4.2.x commands in flight share calls


async def test_sigkill_at_random_moments_under_load(bench: IssuerBench, sim: SimServer) -> None:
    names = {EmcaVersion.V4_0_17: "kill-v4017", EmcaVersion.V4_2_4: "kill-v424"}
    for version, name in names.items():
        await bench.connector(sim, version, name)
    commands = {name: [bench.issue_command(name) for _ in range(150)] for name in names.values()}
    calls_before = create_calls(sim)
    issuer = bench.issuer()
    issuer.start(BATCHED)
    await issuer.wait_healthy()
    for batch in zip(*commands.values(), strict=True):
        for command in batch:
            await bench.send(command.connector, command)
    rng = random.Random(20261127)
    for _ in range(3):
        await asyncio.sleep(rng.uniform(0.3, 2.0))
        issuer.kill(signal.SIGKILL)
        issuer.start(BATCHED)
        await issuer.wait_healthy()
    everything = [c for cs in commands.values() for c in cs]
    await poll_until(lambda: {e.data.issuance_id for e in bench.of_type(CertificateIssued)} >= {c.issuance_id for c in everything},
                     "every command issued after the kills", 180, interval_s=0.2)
    assert not bench.of_type(IssuanceFailed)
    issued = issued_by_key(sim)  # every command has its own key; 4.2.x batches carry no per-command applicationId
    dedupe = [key_of(c.csr) for c in commands[names[EmcaVersion.V4_0_17]]]
    assert all(issued.get(k) == 1 for k in dedupe), {k: issued.get(k) for k in dedupe if issued.get(k) != 1}
    # 4.2.x: every issuance emCA signed more than once is reported as a possible duplicate
    for command in commands[names[EmcaVersion.V4_2_4]]:
        times = issued.get(key_of(command.csr), 0)
        assert times >= 1
        if times > 1:
            flagged = [e for e in bench.of_type(CertificateIssued, issuance_id=command.issuance_id) if e.data.possible_duplicate]
            assert flagged, f"{command.issuance_id} was issued {times} times but never reported"
    signed_4_2 = sum(issued.get(key_of(c.csr), 0) for c in commands[names[EmcaVersion.V4_2_4]])
    assert create_calls(sim) - calls_before < signed_4_2  # the 4.2.x commands did share calls
    print(json.dumps({"duplicates_4_2": sum(1 for c in commands[names[EmcaVersion.V4_2_4]] if issued.get(key_of(c.csr), 0) > 1)}))
