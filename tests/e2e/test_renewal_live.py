"""Scheduled renewal on the real stack (issue 20): the four services as processes (services/common/stack.py)
on the test run's Kafka broker and a SQLite file, the emCA simulator with a certificate profile whose
leaves live 90 seconds, the gateway's scheduler ticking every second.

- A bot-held certificate renews itself twice without anyone asking: the scheduler's RenewalDue (id
  ``renewal_due_id(certificate, serial it replaces)``) -> the deployer's fresh key and CSR (a RenewRequested
  caused by that RenewalDue) -> gateway -> issuer -> emCA -> CertificateIssued -> deployed to the file target.
  Three distinct serials, each deployed in turn, each older one superseded in the auditor's inventory and
  in the gateway's projection.
- A requester-held certificate gets its CertificateExpiring notice (the tightest threshold, 7 days, at
  once: it lives 90 s), a renewal through the API replaces it, and its RenewalDue is for its requester
  (the deployer makes no key for it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from emca_sim.server import start_in_thread
from services.common.contracts.events import CertificateDeployed, CertificateExpiring, CertificateIssued, RenewalDue
from services.common.contracts.identity import renewal_due_id
from services.common.contracts.requests import RenewRequested
from services.common.settings import KafkaSettings
from services.gateway.scheduler import certificate_expiring_id
from tests.conftest import wait_until
from tests.e2e.process_stack import DEPLOYER, ProcessStack, process_stack
from tests.e2e.process_stack import check as _check
from tests.e2e.process_stack import csr as _csr
from tests.emca_sim_helpers import SHORT_PROFILE, short_lived_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONNECTOR, BOT_PROFILE, CSR_PROFILE, TARGET = "emca-short", "short-bot", "short-csr", "short-files"
REQUESTER = "web-team"
DOMAIN = "renew.certrail.test"
VALIDITY_S = 90  # the simulator backdates by a minute: lifetime 150 s, due at 60 % = 30 s after issuance (less jitter)
SCHEDULER = {"interval_s": 1.0, "lease_ttl_s": 5.0}



@pytest.fixture
def live(kafka_settings: KafkaSettings, tmp_path: Path) -> Iterator[ProcessStack]:
    yield from renewal_stack(kafka_settings, tmp_path)


def renewal_stack(kafka_settings: KafkaSettings, tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[ProcessStack]:
    """The stack with the short-lived connector, the bot and CSR profiles and the file target (also the key
    retention test's, with its ``env``)."""
    with start_in_thread(tmp_path / "emca-sim", port=0, crl_port=0, admin_port=0, config=short_lived_config(VALIDITY_S)) as sim, \
            process_stack(kafka_settings, tmp_path, requester=REQUESTER, description="renewal e2e",
                          env={"CERTRAIL_GATEWAY_SCHEDULER": json.dumps(SCHEDULER), **(env or {})}) as live:
        live.add_connector(CONNECTOR, sim, default_profile=SHORT_PROFILE)
        live.add_deployer_key()
        common = {"connector": CONNECTOR, "ca_profile": SHORT_PROFILE, "domain_rules": {"dns_suffixes": [DOMAIN]},
                  "validity_days": 1}
        _check(live.admin.post("/v1/profiles", json={
            **common, "name": BOT_PROFILE, "key_generation": "bot", "bot_key_algorithm": "EC-P256",
            "allowed_requesters": [REQUESTER, DEPLOYER], "deployment_target": TARGET,
            "renewal": {"renew_at_fraction": 0.6}}), 201)
        # renew_before longer than the template's 90 s: the 2/3 fraction applies (decision 0022), not "due at once"
        _check(live.admin.post("/v1/profiles", json={
            **common, "name": CSR_PROFILE, "key_generation": "requester", "allowed_requesters": [REQUESTER],
            "renewal": {"renew_before": "PT1H"}}), 201)
        live.file_target(TARGET, BOT_PROFILE)
        yield live


# -- reading what happened ------------------------------------------------------------------------------------


def _serial_states(live: ProcessStack, certificate_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """(auditor inventory, gateway projection): serial -> status."""
    inventory = dict(live.rows("SELECT serial, status FROM certificate_serials WHERE certificate_id = ?", certificate_id))
    gateway = dict(live.rows("SELECT serial, status FROM gateway_issued_serials WHERE certificate_id = ?", certificate_id))
    return inventory, gateway


def _deployed_serials(live: ProcessStack, certificate_id: str) -> list[str]:
    rows = live.rows("SELECT serial FROM deployer_deployments WHERE certificate_id = ? AND target_name = ? AND status = 'deployed'"
                 " ORDER BY serial", certificate_id, TARGET)
    return [serial for (serial,) in rows]


def _current_file_serial(live: ProcessStack) -> str:
    path = live.var / "deploy" / "current" / "cert.pem"
    return format(x509.load_pem_x509_certificate(path.read_bytes()).serial_number, "x")


def _current_serial(live: ProcessStack, certificate_id: str) -> str | None:
    answer = live.admin.get(f"/v1/certificates/{certificate_id}")
    inventory = (answer.json().get("inventory") or {}) if answer.status_code == 200 else {}
    return inventory.get("serial")


# -- the tests ---------------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_short_lived_certificates_renew_by_themselves(live: ProcessStack) -> None:
    bot_id, csr_id = f"www.{DOMAIN}", f"api.{DOMAIN}"
    _check(live.requester.post("/v1/certificates", json={
        "request_id": f"issue-{bot_id}", "profile": BOT_PROFILE, "certificate_id": bot_id, "sans": [f"dns:{bot_id}"]}), 202)
    _check(live.requester.post("/v1/certificates", json={
        "request_id": f"issue-{csr_id}", "profile": CSR_PROFILE, "certificate_id": csr_id, "csr": _csr(csr_id)}), 202)

    # -- the requester-held certificate: its CertificateExpiring (the tightest threshold, 7 days, at once), then
    #    a renewal through the API replaces it
    first_csr = wait_until(lambda: _current_serial(live, csr_id), f"{csr_id} to be issued", 90, interval_s=0.5)
    expiring = wait_until(lambda: live.events(live.topics.gateway_events, CertificateExpiring.TYPE, csr_id),
                          f"a CertificateExpiring for {csr_id}", 60, interval_s=1)
    assert isinstance(expiring, list) and expiring[0].data.serial == first_csr and expiring[0].data.threshold_days == 7
    assert expiring[0].id == certificate_expiring_id(csr_id, first_csr, 7)
    _check(live.requester.post(f"/v1/certificates/{csr_id}/renew", json={"request_id": f"renew-{csr_id}", "csr": _csr(csr_id)}), 202)
    second_csr = wait_until(lambda: (s := _current_serial(live, csr_id)) != first_csr and s,
                            f"{csr_id} renewed through the API", 90, interval_s=0.5)
    wait_until(lambda: _serial_states(live, csr_id) == ({first_csr: "superseded", second_csr: "active"},) * 2,
               lambda: f"{csr_id}: {first_csr} superseded by {second_csr} (now {_serial_states(live, csr_id)})", 30,
               interval_s=0.5)

    # -- the bot-held certificate: issued once on request, then renewed twice by the scheduler alone
    def renewed_twice() -> list[str] | None:
        """The serials in issuance order once three are deployed and each older one is superseded, the
        newest active, in both the auditor's inventory and the gateway's projection."""
        ordered = [s for (s,) in live.rows("SELECT serial FROM gateway_issued_serials WHERE certificate_id = ?"
                                             " ORDER BY issued_at", bot_id)]
        if len(ordered) < 3 or not set(ordered[:3]) <= set(_deployed_serials(live, bot_id)):
            return None
        expected = {serial: "superseded" for serial in ordered[:-1]} | {ordered[-1]: "active"}
        return ordered if all(states == expected for states in _serial_states(live, bot_id)) else None

    found = wait_until(renewed_twice, lambda: f"{bot_id} renewed twice and deployed, older serials superseded "
                                              f"(now {_serial_states(live, bot_id)}, deployed {_deployed_serials(live, bot_id)})",
                       180, interval_s=0.5)
    assert isinstance(found, list)
    serials = found[:3]
    assert len(set(serials)) == 3
    # each deployed to the file target in turn (verified there), each with a fresh key made by the deployer
    deployed = sorted(live.events(live.topics.deployer_events, CertificateDeployed.TYPE, bot_id), key=lambda e: e.time)
    assert list(dict.fromkeys(e.data.serial for e in deployed if e.data.serial in serials)) == serials
    assert all(e.data.verified_serial == e.data.serial and e.data.target.name == TARGET for e in deployed)
    issued = {e.data.serial: e.data for e in live.events(live.topics.issuer_events, CertificateIssued.TYPE, bot_id)}
    assert len({issued[s].public_key_sha256 for s in serials}) == 3
    assert [issued[s].replaces_serial for s in serials] == [None, *serials[:2]]
    now_issued = [s for (s,) in live.rows("SELECT serial FROM gateway_issued_serials WHERE certificate_id = ?"
                                          " ORDER BY issued_at", bot_id)]
    assert _current_file_serial(live) in now_issued[2:]  # the newest deployed (a fourth may have come meanwhile)

    # the RenewalDue events: deterministic ids, one per replaced serial, to the deployer (bot key)
    dues = {e.id: e for e in live.events(live.topics.gateway_events, RenewalDue.TYPE, bot_id)}
    for replaced in serials[:2]:
        event = dues.get(renewal_due_id(bot_id, replaced))
        assert event is not None, f"no RenewalDue for {bot_id} serial {replaced}: {sorted(dues)}"
        assert event.data.serial == replaced and event.data.key_generation.value == "bot"
    assert {e.data.serial for e in dues.values()} <= set(now_issued)  # never one for a serial it did not have

    # nobody asked: each renewal request is the deployer's, caused by the RenewalDue of the serial it replaces
    renewals = live.events(live.topics.requests, RenewRequested.TYPE, bot_id)
    by_replaced = {e.data.replaces_serial: e for e in renewals}
    assert set(serials[:2]) <= set(by_replaced), by_replaced
    for replaced in serials[:2]:
        request = by_replaced[replaced]
        assert request.data.requester == DEPLOYER and request.causationid == renewal_due_id(bot_id, replaced)

    # the requester-held certificate gets its RenewalDue too (for its requester: the deployer makes no key for it)
    due = wait_until(lambda: live.events(live.topics.gateway_events, RenewalDue.TYPE, csr_id),
                     f"a RenewalDue for the requester-held {csr_id}", 60, interval_s=1)
    assert isinstance(due, list)
    assert all(e.data.key_generation.value == "requester" and e.id == renewal_due_id(csr_id, e.data.serial) for e in due)
    # renew_before (1 h) exceeds the lifetime: due at 2/3 of it less jitter, well after issuance (notBefore + 60 s)
    assert all(e.data.renew_at >= e.data.not_after - timedelta(seconds=VALIDITY_S) + timedelta(seconds=20) for e in due), due
    assert not [e for e in live.events(live.topics.requests, RenewRequested.TYPE, csr_id) if e.data.requester == DEPLOYER]
