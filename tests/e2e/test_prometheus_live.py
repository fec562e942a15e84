"""The SRE's view, live (issue 23): `certrail up --with-prometheus` starts the embedded stack with a
real Prometheus (Debian's binary) scraping every service each second and evaluating the project's
alert rules each second. Every rule loads and evaluates healthy; then faults, each asserting that
its alert reaches ``firing`` (read from /api/v1/alerts) within its ``for`` plus two scrape
intervals plus one rule evaluation of the fault showing in the service's own /metrics, and
resolves once the fault is removed; at the end every dashboard panel's expression returns data.

The rules Prometheus loads here are a copy of deploy/prometheus/rules with every ``for`` cut to
FOR_S seconds (stated in docs/operations.md); the expressions are the project's, unchanged but for
the few parameters in SUBSTITUTIONS (a threshold and a window no test can wait for; the first test
proves they are the only differences), so other thresholds inside them (the 60 s of
CertrailConsumerNotProgressing, the 15 minutes of CertrailDeploymentFailures) hold in full. What no
test here fires or resolves, and why, is listed in docs/operations.md."""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic

import pytest
import yaml
from aiokafka import AIOKafkaProducer

from services.common.kafka_config import producer_kwargs
from tests.conftest import free_ports
from tests.e2e.prometheus_api import (
    Prometheus,
    Substitution,
    dashboard_targets,
    samples,
    seconds,
    shorter_for_copy,
    wait_for,
)
from tests.e2e.support import PORT_NAMES, EmbeddedStack, cli, wait_deployed
from tests.issuer_harness import metric

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOMAIN = "demo.certrail.test"
FOR_S = 5
SCRAPE_S = 1.0
#: how long after a fault shows in a service's /metrics its alert may take beyond its ``for``:
#: two scrape intervals, one rule evaluation (1 s each), and this test's polling
SLACK_S = 2 * SCRAPE_S + 1.0 + 0.5
CONNECTOR = "emca-demo"
#: CertrailCommandQueueStalled's threshold in the copy (600 s in production)
QUEUE_AGE_S = 20
#: CertrailDeadLettersIncreasing's window in the copy (15 minutes in production)
WINDOW_S = 30
#: what the copy changes in an expression besides ``for`` (docs/operations.md, "Alerts"); every other
#: alert's expression is the production one
SUBSTITUTIONS = {
    "CertrailCommandQueueStalled": Substitution("> 600", f"> {QUEUE_AGE_S}", 1),
    "CertrailDeadLettersIncreasing": Substitution("15m", f"{WINDOW_S}s", 3),
}


@dataclass
class StackWithPrometheus(EmbeddedStack):
    rules_dir: Path = Path()
    ports: dict[str, int] = field(default_factory=lambda: dict(zip(
        [*PORT_NAMES, "PROMETHEUS"], free_ports(len(PORT_NAMES) + 1), strict=True)))

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "CERTRAIL_UP_WITH_PROMETHEUS": "1", "CERTRAIL_UP_PROMETHEUS_SCRAPE_INTERVAL": str(SCRAPE_S),
                "CERTRAIL_UP_PROMETHEUS_RULES_DIR": str(self.rules_dir),
                # the issuer probes a down connector at most every 2 s (30 s by default), so that it resolves quickly;
                # a locked database fails a write after 5 s (30 s), so that a consumer is reported stalled quickly
                "CERTRAIL_ISSUER_PROBE_MAX_S": "2", "CERTRAIL_DB_BUSY_TIMEOUT_MS": "5000",
                # the auditor exports the latest verify result with each checkpoint: every 2 s (60 s)
                "CERTRAIL_AUDITOR_CHECKPOINT_INTERVAL_S": "2"}

    def prometheus(self) -> Prometheus:
        return Prometheus(f"http://127.0.0.1:{self.ports['PROMETHEUS']}")


@dataclass
class Live:
    stack: StackWithPrometheus
    prometheus: Prometheus
    originals: dict[str, dict[str, object]]
    requested: list[str] = field(default_factory=list)

    def for_s(self, alert: str) -> float:
        return seconds(f"{FOR_S}s") if "for" in self.originals[alert] else 0.0

    def request(self, tag: str, count: int = 1, profile: str = "demo-web") -> list[str]:
        ids = []
        with self.stack.api("requester") as client:
            for _ in range(count):
                certificate_id = f"prom-{tag}-{len(self.requested)}.{DOMAIN}"
                answer = client.post("/v1/certificates", json={
                    "request_id": f"req-{certificate_id}", "profile": profile, "certificate_id": certificate_id,
                    "sans": [f"dns:{certificate_id}"]})
                assert answer.status_code == 202, answer.text
                self.requested.append(certificate_id)
                ids.append(certificate_id)
        return ids

    def deployed(self, ids: list[str], timeout_s: float = 120) -> None:
        with self.stack.api("admin") as client:
            for certificate_id in ids:
                wait_deployed(client, certificate_id, timeout_s=timeout_s)

    def shows(self, service: str, name: str, labels: dict[str, str], check: Callable[[float], bool]) -> float:
        """Waits until the service's own /metrics shows the fault (on the largest of the matching series, as
        the alerts aggregate with ``max``); returns when (monotonic)."""
        return wait_for(lambda: check(max(samples(self.stack.metrics(service), name, labels), default=0.0)),
                        f"{service}'s {name}{labels} to show the fault", 120)

    def fires(self, alert: str, labels: dict[str, str], since: float) -> None:
        """The alert reaches ``firing`` within its ``for`` plus SLACK_S of ``since``."""
        budget = self.for_s(alert) + SLACK_S
        fired = wait_for(lambda: self.prometheus.state(alert, labels) == "firing", f"{alert}{labels} to fire", budget + 30)
        assert fired - since <= budget, f"{alert} fired {fired - since:.1f}s after its fault showed (budget {budget:.1f}s)"

    def resolves(self, alert: str, labels: dict[str, str], timeout_s: float = 90, *, evidence: str = "") -> float:
        """The alert is no longer active (``evidence``: a metric whose series the failure message shows); returns
        when (monotonic)."""
        try:
            return wait_for(lambda: self.prometheus.state(alert, labels) == "inactive", f"{alert}{labels} to resolve",
                            timeout_s)
        except AssertionError as exc:
            series = self.prometheus.query(evidence) if evidence else []
            raise AssertionError(f"{exc}; {evidence}: {series}") from None


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("prometheus-live")
    rules_dir = root / "rules"
    originals = shorter_for_copy(rules_dir, FOR_S, SUBSTITUTIONS)
    stack = StackWithPrometheus(root / "var", rules_dir=rules_dir)
    stack.up()
    prometheus = stack.prometheus()
    try:
        assert f"Prometheus: http://127.0.0.1:{stack.ports['PROMETHEUS']}" in stack.up_output
        value = Live(stack, prometheus, originals)
        value.deployed(value.request("load", 4))  # a short load besides the demo
        yield value
    finally:
        prometheus.close()
        stack.down()


def test_every_rule_loads_and_evaluates_healthy_with_the_projects_expressions(live: Live) -> None:
    copied = {rule["alert"]: rule for path in sorted(live.stack.rules_dir.glob("*.yml"))
              for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule}
    assert set(copied) == set(live.originals)
    for name, original in live.originals.items():
        copy = copied[name]
        assert {k: v for k, v in copy.items() if k not in ("for", "expr")} == {
            k: v for k, v in original.items() if k not in ("for", "expr")}, name
        assert ("for" in copy) == ("for" in original), name
        substitution = SUBSTITUTIONS.get(name)
        if substitution is None:
            assert copy["expr"] == original["expr"], name
        else:  # the declared parameter is the only difference: replaced back, the copy is the production expression
            assert copy["expr"] != original["expr"] and substitution.revert(copy["expr"]) == original["expr"], name

    def all_healthy() -> bool:
        rules = live.prometheus.rules()
        return len(rules) == len(live.originals) and all(rule["health"] == "ok" for rule in rules)

    wait_for(all_healthy, "every rule to be evaluated healthy", 30)
    assert {rule["name"] for rule in live.prometheus.rules()} == set(live.originals)
    assert all(not rule.get("lastError") for rule in live.prometheus.rules())
    up = live.prometheus.query('up{job=~"certrail-.+"}')
    assert {series["metric"]["job"] for series in up if series["value"][1] == "1"} == {
        "certrail-gateway", "certrail-issuer", "certrail-deployer", "certrail-auditor"}


def test_a_killed_service_fires_service_down_and_it_resolves_after_the_restart(live: Live) -> None:
    labels = {"job": "certrail-deployer"}
    assert live.prometheus.state("CertrailServiceDown", labels) == "inactive"
    live.stack.kill("deployer")
    live.fires("CertrailServiceDown", labels, monotonic())
    live.stack.up()  # restarts what died
    live.resolves("CertrailServiceDown", labels)


def test_emca_down_fires_connector_down_and_queue_stalled_and_they_resolve_when_emca_answers(live: Live) -> None:
    labels = {"connector": CONNECTOR}
    age = "certrail_issuer_oldest_queued_command_age_seconds"
    with live.stack.sim_admin() as admin:
        admin.post("/admin/faults", json={"down": True}).raise_for_status()
        try:
            ids = live.request("emca-down", 2)
            # a command waits, younger than the threshold: the queue alert holds back
            live.shows("issuer", age, labels, lambda v: 0 < v < QUEUE_AGE_S - 2 * SCRAPE_S - 1)
            assert live.prometheus.state("CertrailCommandQueueStalled", labels) == "inactive"
            since = live.shows("issuer", "certrail_issuer_circuit_state", {"connector": CONNECTOR, "state": "open"},
                               lambda v: v == 1)
            live.fires("CertrailConnectorDown", labels, since)
            since = live.shows("issuer", age, labels, lambda v: v > QUEUE_AGE_S)
            live.fires("CertrailCommandQueueStalled", labels, since)
        finally:
            admin.delete("/admin/faults").raise_for_status()
    live.deployed(ids)
    live.resolves("CertrailConnectorDown", labels)
    live.resolves("CertrailCommandQueueStalled", labels, evidence=age)


def test_rotated_credentials_fire_connector_misconfigured_and_it_resolves_once_fixed(live: Live) -> None:
    labels = {"connector": CONNECTOR}
    with live.stack.sim_admin() as admin:
        admin.post("/admin/applications/certrail-v424/rotate-credentials").raise_for_status()
    ids = live.request("rotated", 1)
    since = live.shows("issuer", "certrail_issuer_connector_misconfigured", labels, lambda v: v == 1)
    live.fires("CertrailConnectorMisconfigured", labels, since)
    fresh = live.stack.sim_credentials()
    with live.stack.api("admin") as client:
        answer = client.patch(f"/v1/connectors/{CONNECTOR}",
                              json={"password": fresh["password"], "client_id": fresh["client_id"]})
        assert answer.status_code == 200, answer.text
    live.deployed(ids)
    live.resolves("CertrailConnectorMisconfigured", labels)


def _poison(live: Live, count: int = 1) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(**producer_kwargs(live.stack.kafka_settings("requester")))
        await producer.start()
        try:
            for _ in range(count):
                await producer.send_and_wait("certrail.requests", b"\x00not a cloudevent", key=b"poison")
        finally:
            await producer.stop()

    asyncio.run(send())


def _dead_letters(live: Live) -> float:
    return metric(live.stack.metrics("gateway"), "certrail_dead_letters_total", {"service": "gateway"})


def test_dead_letters_fire_dead_letters_increasing_and_it_resolves_a_window_after_the_last(live: Live) -> None:
    labels = {"service": "gateway"}
    before = _dead_letters(live)
    _poison(live)  # a new series (its code's first dead letter) or an increase: either arm of the expression
    since = wait_for(lambda: _dead_letters(live) >= before + 1, "the gateway to dead-letter the record", 60)
    live.fires("CertrailDeadLettersIncreasing", labels, since)
    # no more dead letters (the fault is gone): the alert holds for its window after the last one, then resolves
    resolved = live.resolves("CertrailDeadLettersIncreasing", labels, WINDOW_S + 60, evidence="certrail_dead_letters_total")
    assert _dead_letters(live) == before + 1
    assert resolved - since >= WINDOW_S - SLACK_S, f"resolved {resolved - since:.1f}s after the last dead letter"


def test_a_broken_target_fires_deployment_failures_on_its_first_failure(live: Live) -> None:
    labels = {"kind": "file"}
    failed = {"kind": "file", "outcome": "failed"}
    # the deployer creates every kind's series at its start: Prometheus has the 0 the first failure increases
    before = live.prometheus.query('certrail_deployer_deployments_total{kind="file",outcome="failed"}')
    assert before and all(series["value"][1] == "0" for series in before), before
    assert live.prometheus.state("CertrailDeploymentFailures", labels) == "inactive"
    directory = live.stack.var_dir / "deploy" / "prom-broken"
    directory.mkdir(parents=True)
    with live.stack.api("admin") as client:
        answer = client.put("/v1/targets/prom-broken", json={"kind": "file", "config": {"dir": str(directory)}})
        assert answer.status_code == 201, answer.text
        profile = client.get("/v1/profiles/demo-web").json()
        answer = client.post("/v1/profiles", json={
            **{k: profile[k] for k in ("connector", "ca_profile", "key_generation", "bot_key_algorithm",
                                       "allowed_requesters", "domain_rules", "validity_days")},
            "name": "prom-broken", "deployment_target": "prom-broken"})
        assert answer.status_code == 201, answer.text
        answer = client.put("/v1/profiles/prom-broken/targets/prom-broken")
        assert answer.status_code in (200, 201), answer.text
    shutil.rmtree(directory)
    directory.write_text("a file where the target's directory was\n")  # nothing can be installed under it
    try:
        [broken] = live.request("broken", 1, profile="prom-broken")
        live.requested.remove(broken)  # never deployed
        since = live.shows("deployer", "certrail_deployer_deployments_total", failed, lambda v: v == 1)
        live.fires("CertrailDeploymentFailures", labels, since)
        with live.stack.api("admin") as client:  # DeploymentFailed reached the audit store's inventory
            wait_for(lambda: any(d["status"] == "failed" for d in (
                client.get(f"/v1/certificates/{broken}").json().get("inventory") or {}).get("deployments", [])),
                f"{broken}'s failed deployment in the inventory", 60)
    finally:
        directory.unlink()
        directory.mkdir()
    # the target fixed, the next certificate deploys; the alert holds for its 15 minutes after the failure
    # (the production window, longer than this test: docs/operations.md)
    live.deployed(live.request("fixed", 1, profile="prom-broken"))
    assert live.prometheus.state("CertrailDeploymentFailures", labels) == "firing"


def _verify(live: Live) -> int:
    return cli(live.stack.tool_env(), "audit", "verify").returncode


def _verify_passes(live: Live) -> None:
    wait_for(lambda: _verify(live) == 0, "`certrail audit verify` to pass", 120, interval_s=2)


def test_no_verify_yet_fires_audit_verify_stale_and_a_clean_verify_resolves_it(live: Live) -> None:
    labels = {"job": "certrail-auditor"}
    since = live.shows("auditor", "certrail_audit_last_verify_timestamp_seconds", {}, lambda v: v == 0)  # never run
    live.fires("CertrailAuditVerifyStale", labels, since)
    _verify_passes(live)
    live.resolves("CertrailAuditVerifyStale", labels)


def test_a_tampered_audit_store_fires_audit_verify_failing_and_it_resolves_once_restored(live: Live) -> None:
    labels = {"job": "certrail-auditor"}
    db = sqlite3.connect(live.stack.var_dir / "certrail.db", timeout=30, isolation_level=None)
    try:
        row_id, value = db.execute("SELECT id, value FROM audit_records ORDER BY id LIMIT 1").fetchone()
        db.execute("UPDATE audit_records SET value = ? WHERE id = ?", (b"tampered", row_id))
        try:
            assert _verify(live) != 0
            since = live.shows("auditor", "certrail_audit_last_verify_success", {}, lambda v: v == 0)
            live.fires("CertrailAuditVerifyFailing", labels, since)
        finally:
            db.execute("UPDATE audit_records SET value = ? WHERE id = ?", (value, row_id))
    finally:
        db.close()
    _verify_passes(live)
    live.resolves("CertrailAuditVerifyFailing", labels)


def test_a_locked_database_fires_consumer_not_progressing_and_stalled_and_they_resolve(live: Live) -> None:
    labels = {"service": "auditor", "consumer": "audit"}
    lock = sqlite3.connect(live.stack.var_dir / "certrail.db", timeout=30, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")  # every writer waits, then fails (transient): the auditor cannot store
        _poison(live)  # a record every consumer of certrail.requests' audit must store
        stalled_since = live.shows("auditor", "certrail_consumer_stalled", labels, lambda v: v == 1)
        live.fires("CertrailConsumerStalled", labels, stalled_since)
        since = live.shows("auditor", "certrail_consumer_no_progress_seconds", labels, lambda v: v > 60)
        live.fires("CertrailConsumerNotProgressing", labels, since)
        assert max(samples(live.stack.metrics("auditor"), "certrail_consumer_oldest_unprocessed_age_seconds", labels)) > 60
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    live.resolves("CertrailConsumerNotProgressing", labels,
                  evidence='certrail_consumer_no_progress_seconds{service="auditor"} > 0 or certrail_consumer_lag_records > 0')
    live.resolves("CertrailConsumerStalled", labels)
    # moving again: whatever waits now (records keep arriving) waits for moments, not for the minute the alert needs
    assert max(samples(live.stack.metrics("auditor"), "certrail_consumer_no_progress_seconds", labels)) < 10


#: series the services create at their first event (or keep only while it lasts), which none of this
#: module's faults causes: a panel target on them returns no series here (each such panel has another
#: target that does)
FIRST_EVENT_ONLY = {
    "certrail_issuer_possible_duplicates_total": "a crash between emCA's answer and the recorded outcome",
    "certrail_issuer_certificate_mismatches_total": "emCA returning a certificate that fails verification",
    "certrail_audit_offset_gaps_total": "offsets Kafka does not deliver",
    "certrail_gateway_renewals_due_published_total": "a certificate due for renewal (the demo's live 90 days)",
    "certrail_gateway_renewals_waiting": "due renewals held back by a connector's rate limit (only while they are)",
}


def test_every_dashboard_panel_returns_data(live: Live) -> None:
    live.deployed(live.requested)  # everything requested went through: the lifecycle series exist
    by_panel: dict[str, list[int]] = {}
    known = live.prometheus.metric_names()
    absent: dict[str, set[str]] = {}
    for title, expr in dashboard_targets():
        by_panel.setdefault(title, []).append(len(live.prometheus.query(expr)))
        names = set(re.findall(r"(?<![A-Za-z0-9_:])certrail_[a-z0-9_]+", expr)) - known
        if names - set(FIRST_EVENT_ONLY):
            absent[title] = names - set(FIRST_EVENT_ONLY)
    empty = [title for title, counts in by_panel.items() if not any(counts)]
    assert not empty, f"panels with no series on the live stack: {empty}"
    assert not absent, f"panel targets on series the live stack does not have: {absent}"
