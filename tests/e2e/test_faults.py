"""The fault suite on the whole pipeline: the embedded stack (real Kafka, the emCA simulator,
the four services as processes), bot-held-key requests through the HTTP API under load, and:
emCA down for 60 s; 429 and 5xx storms; each service SIGKILLed in turn and restarted; the
broker restarted; poison on every topic; credentials rotated at emCA and fixed through the API.
After each: every request ends deployed, nothing failed, each certificate issued once by the
simulator (or a duplicate reported as POSSIBLE_DUPLICATE on this 4.2.4+ connector), one
deployment per certificate, and `certrail audit verify` passes at the end."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import subprocess
import time
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaProducer

from services.common.contracts.identity import issuance_id
from services.common.kafka_config import producer_kwargs
from services.common.kafka_local import LocalKafka
from tests.conftest import wait_until
from tests.e2e.support import FAST_FAILOVER, ROOT, EmbeddedStack, cli, wait_deployed
from tests.issuer_harness import metric

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOMAIN = "demo.certrail.test"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    value = EmbeddedStack(tmp_path_factory.mktemp("faults") / "var", extra_env=FAST_FAILOVER)
    value.up()
    try:
        yield value
    finally:
        value.down()


class Load:
    """Requests bot-held certificates through the API, one every ``interval_s``."""

    def __init__(self, stack: EmbeddedStack, tag: str) -> None:
        self.stack, self.tag = stack, tag
        self.ids: list[str] = []

    def request(self, count: int = 1) -> None:
        with self.stack.api("requester") as client:
            for _ in range(count):
                certificate_id = f"{self.tag}-{len(self.ids)}.{DOMAIN}"
                answer = client.post("/v1/certificates", json={
                    "request_id": f"req-{certificate_id}", "profile": "demo-web", "certificate_id": certificate_id,
                    "sans": [f"dns:{certificate_id}"]})
                assert answer.status_code == 202, answer.text
                self.ids.append(certificate_id)

    async def steady(self, seconds: float, interval_s: float = 1.0) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.to_thread(self.request)
            await asyncio.sleep(interval_s)

    def settle(self, timeout_s: float = 180) -> None:
        """Every request deployed, issued once (or reported), deployed once; nothing failed."""
        with self.stack.api("admin") as client:
            for certificate_id in self.ids:
                wait_deployed(client, certificate_id, timeout_s=timeout_s)
        with self.stack.sim_admin() as admin:
            issued = admin.get("/admin/counters").json()["issued_by_application_id"]
        issuer, deployer, auditor = (sqlite3.connect(self.stack.db_file(table))
                                     for table in ("issuer_operations", "deployer_deployments", "certificate_inventory"))
        try:
            for certificate_id in self.ids:
                iid = issuance_id(certificate_id, 1)
                times = issued.get(iid, 0)
                assert times >= 1, f"{certificate_id}: the simulator never issued {iid}"
                if times > 1:
                    (flag,) = issuer.execute("SELECT possible_duplicate FROM issuer_operations WHERE op_key = ?", (iid,)).fetchone()
                    assert flag, f"{certificate_id} was issued {times} times and not reported as a possible duplicate"
                (deployments,) = deployer.execute(
                    "SELECT COUNT(*) FROM deployer_deployments WHERE certificate_id = ? AND status = 'deployed'",
                    (certificate_id,)).fetchone()
                assert deployments == 1, f"{certificate_id}: {deployments} deployments"
            failed = auditor.execute("SELECT COUNT(*) FROM certificate_inventory WHERE status = 'failed'").fetchone()[0]
            assert failed == 0
        finally:
            for db in (issuer, deployer, auditor):
                db.close()
        assert metric(self.stack.metrics("issuer"), "certrail_issuer_commands_total", {"outcome": "failed"}) == 0


def test_emca_down_for_60s_under_steady_load(stack: EmbeddedStack) -> None:
    load = Load(stack, "down")
    load.request(3)
    with stack.sim_admin() as admin:
        admin.post("/admin/faults", json={"down": True}).raise_for_status()
        try:
            asyncio.run(load.steady(60, 2.0))
            text = stack.metrics("issuer")
            assert metric(text, "certrail_issuer_connector_up", {"connector": "emca-demo"}) == 0
            assert metric(text, "certrail_issuer_oldest_queued_command_age_seconds", {"connector": "emca-demo"}) > 20
        finally:
            admin.delete("/admin/faults").raise_for_status()
    load.settle()


def test_429_and_5xx_storms(stack: EmbeddedStack) -> None:
    load = Load(stack, "storm")
    with stack.sim_admin() as admin:
        admin.post("/admin/faults", json={"rate_limit": {"rate": 1.0, "retry_after_s": 3}}).raise_for_status()
        load.request(5)
        time.sleep(8)
        admin.delete("/admin/faults").raise_for_status()
        admin.post("/admin/faults", json={"error_rate": 0.7, "error_status": 503}).raise_for_status()
        load.request(5)
        time.sleep(8)
        admin.delete("/admin/faults").raise_for_status()
    load.settle()
    errors = stack.metrics("issuer")
    assert metric(errors, "certrail_issuer_emca_errors_total", {"kind": "transient"}) > 0


@pytest.mark.parametrize("service", ["gateway", "issuer", "deployer", "auditor"])
def test_sigkill_each_service_under_load(stack: EmbeddedStack, service: str) -> None:
    load = Load(stack, f"kill-{service}")
    rng = random.Random(f"{service}-20261127")
    load.request(6)
    time.sleep(rng.uniform(0.2, 2.0))
    stack.kill(service)
    if service != "gateway":
        load.request(4)  # queued on Kafka while it is dead
    stack.up()  # restarts what died
    load.request(4)
    load.settle()


def test_broker_restart_mid_load(stack: EmbeddedStack) -> None:
    load = Load(stack, "broker")
    load.request(5)
    kafka = LocalKafka(cache_dir=ROOT / ".cache", data_dir=stack.var_dir / "kafka", port=stack.ports["KAFKA"],
                       controller_port=stack.ports["KAFKA_CONTROLLER"])
    kafka.stop()
    kafka.start(wait_timeout=120)
    load.request(5)
    load.settle(timeout_s=240)


#: what the poison test publishes on every topic: not a CloudEvent, 200 kB of nested JSON, a 50,000-digit number
POISON = (b"\x00not a cloudevent", b"[" * 100_000 + b"]" * 100_000, b'{"n":' + b"7" * 50_000 + b"}")


def test_poison_on_every_topic_is_dead_lettered_and_the_pipeline_goes_on(stack: EmbeddedStack) -> None:
    topics = ["certrail.requests", "certrail.provisioning", "certrail.events.gateway", "certrail.commands.emca-demo"]

    async def poison() -> None:
        # each topic poisoned by a principal allowed to write it (the ACLs refuse anyone else):
        # an upstream requester on certrail.requests, the gateway's credentials on the rest
        for principal, targets in (("requester", topics[:1]), ("gateway", topics[1:])):
            producer = AIOKafkaProducer(**producer_kwargs(stack.kafka_settings(principal)))
            await producer.start()
            try:
                for topic in targets:
                    for value in POISON:
                        await producer.send_and_wait(topic, value, key=b"poison")
            finally:
                await producer.stop()

    asyncio.run(poison())
    load = Load(stack, "after-poison")
    load.request(3)
    load.settle()
    dead = {service: metric(stack.metrics(service), "certrail_dead_letters_total") for service in ("gateway", "deployer")}
    assert dead["gateway"] >= 3 and dead["deployer"] >= 6, dead
    too_big = {service: metric(stack.metrics(service), "certrail_dead_letters_total", {"code": "JSON_LIMIT_EXCEEDED"})
               for service in ("gateway", "deployer")}
    assert too_big["gateway"] >= 2 and too_big["deployer"] >= 4, too_big  # nested JSON and 50,000 digits (issue 17)
    assert metric(stack.metrics("issuer"), "certrail_issuer_commands_total", {"outcome": "dead_lettered"}) >= 3
    for service in ("gateway", "issuer", "deployer", "auditor"):  # nobody stuck, nobody restarting
        assert metric(stack.metrics(service), "certrail_consumer_stalled") == 0, service


def test_credentials_rotated_mid_load_then_fixed_through_the_api(stack: EmbeddedStack) -> None:
    load = Load(stack, "rotated")
    with stack.sim_admin() as admin:
        admin.post("/admin/applications/certrail-v424/rotate-credentials").raise_for_status()
    load.request(5)
    wait_until(lambda: metric(stack.metrics("issuer"), "certrail_issuer_connector_misconfigured", {"connector": "emca-demo"}) == 1,
               "the connector to be marked misconfigured", 60, interval_s=0.5)
    fresh = stack.sim_credentials()
    with stack.api("admin") as client:
        answer = client.patch("/v1/connectors/emca-demo", json={"password": fresh["password"], "client_id": fresh["client_id"]})
        assert answer.status_code == 200, answer.text
    load.settle()


def test_audit_verify_passes_after_everything(stack: EmbeddedStack) -> None:
    runs: list[subprocess.CompletedProcess[str]] = []

    def verified() -> bool:
        runs.append(cli(stack.tool_env(), "audit", "verify"))
        return runs[-1].returncode == 0

    wait_until(verified, lambda: f"`audit verify` to pass:\n{runs[-1].stdout}{runs[-1].stderr}", 90, interval_s=3)
    verify = runs[-1]
    assert verify.returncode == 0, verify.stdout + verify.stderr

