"""A SIGKILL-induced duplicate on 4.2.x found and revoked, on the real stack (issue 20, decision 0032): the four
services as processes on the test run's Kafka broker and a SQLite file, the emCA simulator speaking 4.2.4 (no
applicationId dedupe).

The issuer runs with the test crash point after_emca_response:1: it dies (os._exit, as a SIGKILL would leave it) after
emCA signed the certificate and before anything was recorded. It comes back without the crash point; the retry is
published as POSSIBLE_DUPLICATE and the duplicate is listed unresolved (``GET /v1/duplicates``, gauge at 1). The test
plays the operator: it finds the extra serial with the simulator's admin listing (``certrail emca-sim certificates``,
the stand-in for emCA's console) and resolves it with ``certrail duplicates resolve``. The extra serial is revoked
(superseded), appears on the CA's CRL, RevocationConfirmed and DuplicateResolved are in the audit store, the gauge is
0, and the delivered certificate is untouched (live at the CA, active in the inventory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from emca_sim.server import start_in_thread
from services.common.contracts.duplicates import DuplicateDetected, DuplicateResolved
from services.common.contracts.events import CertificateIssued
from services.common.contracts.identity import normalise_serial
from services.common.contracts.revocation import RevocationConfirmed
from services.common.settings import KafkaSettings
from services.issuer.processor import CRASH_EXIT_CODE
from tests.conftest import wait_until
from tests.e2e.process_stack import ProcessStack, check, csr, process_stack
from tests.issuer_harness import metric

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONNECTOR, PROFILE, REQUESTER = "emca-dup", "dup-csr", "web-team"
DOMAIN = "dup.certrail.test"
CRASH = "CERTRAIL_ISSUER_TEST_CRASH_POINT"
GAUGE = "certrail_issuer_duplicates_unresolved"


@pytest.fixture
def live(kafka_settings: KafkaSettings, tmp_path: Path) -> Iterator[ProcessStack]:
    with start_in_thread(tmp_path / "emca-sim", port=0, crl_port=0, admin_port=0) as sim, \
            process_stack(kafka_settings, tmp_path, requester=REQUESTER, description="duplicates e2e", env={
                CRASH: "after_emca_response:1",  # read by the issuer only
                "CERTRAIL_ISSUER_REVOCATION_CONFIRM_POLL_INITIAL_S": "1",
                "CERTRAIL_ISSUER_REVOCATION_CONFIRM_POLL_MAX_S": "2"}) as stack:
        stack.add_connector(CONNECTOR, sim)
        check(stack.admin.post("/v1/profiles", json={
            "name": PROFILE, "connector": CONNECTOR, "ca_profile": "TLS Server", "key_generation": "requester",
            "domain_rules": {"dns_suffixes": [DOMAIN]}, "allowed_requesters": [REQUESTER], "validity_days": 1}), 201)
        yield stack


def _certrail(live: ProcessStack, *args: str) -> str:
    token = live.admin.headers["Authorization"].removeprefix("Bearer ")
    done = subprocess.run([str(Path(sys.executable).parent / "certrail"), *args], capture_output=True, text=True,
                          timeout=90, check=False, env={**os.environ, "CERTRAIL_TOKEN": token,
                                                        "CERTRAIL_GATEWAY_URL": str(live.admin.base_url)})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _gauge(live: ProcessStack) -> float | None:
    try:
        return metric(httpx.get(f"{live.issuer_url}/metrics", timeout=5).text, GAUGE, {"connector": CONNECTOR})
    except httpx.HTTPError:
        return None


def _on_crl(live: ProcessStack, certificate_pem: str, serial: str) -> x509.RevokedCertificate | None:
    """The serial's entry on the CRL at the certificate's own distribution point (plain HTTP, as published)."""
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    [point] = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    url = next(n.value for n in point.full_name or () if isinstance(n, x509.UniformResourceIdentifier))
    crl = x509.load_der_x509_crl(httpx.get(url, timeout=10).content)
    return crl.get_revoked_certificate_by_serial_number(int(serial, 16))


def _audited(live: ProcessStack, event_type: str, certificate_id: str) -> list[str]:
    """The event ids stored (publishing is at least once: a redelivered record is stored again, under the same id)."""
    return [i for (i,) in live.rows("SELECT DISTINCT event_id FROM audit_records WHERE event_type = ? AND subject = ?",
                                    event_type, certificate_id)]


@pytest.mark.timeout(300)
def test_a_sigkill_induced_duplicate_on_4_2_x_is_found_and_revoked(live: ProcessStack) -> None:
    certificate_id = f"www.{DOMAIN}"
    check(live.requester.post("/v1/certificates", json={
        "request_id": f"issue-{certificate_id}", "profile": PROFILE, "certificate_id": certificate_id,
        "csr": csr(certificate_id)}), 202)

    # -- the issuer dies after emCA answered; it comes back without the crash point
    [issuer] = live.stack.instances_of("issuer")
    wait_until(lambda: issuer.exited() is not None, "the issuer to reach its crash point", 90, interval_s=0.5)
    assert issuer.exited() == CRASH_EXIT_CODE
    issuer.env = {k: v for k, v in issuer.env.items() if k != CRASH}
    issuer.start()
    wait_until(issuer.healthy, "the issuer to be healthy again", 60, interval_s=0.5)

    found = wait_until(lambda: live.events(live.topics.issuer_events, CertificateIssued.TYPE, certificate_id),
                       f"{certificate_id} issued", 90, interval_s=0.5)
    assert isinstance(found, list) and len(found) == 1
    issued = found[0].data
    assert issued.possible_duplicate
    [detected] = live.events(live.topics.issuer_events, DuplicateDetected.TYPE, certificate_id)
    assert detected.data.delivered_serial == issued.serial

    # -- listed unresolved (API and gauge)
    unresolved = check(live.admin.get("/v1/duplicates", params={"state": "unresolved"}), 200)["duplicates"]
    assert [(d["certificate_id"], d["delivered_serial"]) for d in unresolved] == [(certificate_id, issued.serial)]
    wait_until(lambda: _gauge(live) == 1, lambda: f"the unresolved gauge at 1 (is {_gauge(live)})", 30, interval_s=0.5)
    assert check(live.requester.get("/v1/duplicates"), 403)["code"] == "REQUESTER_NOT_AUTHORISED"

    # -- the operator: emCA's console (the simulator's listing), then `certrail duplicates resolve`
    at_ca = json.loads(_certrail(live, "emca-sim", "certificates", "--application-id", detected.data.issuance_id, "--json",
                                 "--data-dir", str(live.sims[CONNECTOR].data_dir)))
    # (emCA writes serials zero-padded; certrail's events carry them without leading zeros)
    assert len(at_ca) == 2 and issued.serial in {normalise_serial(c["serial"]) for c in at_ca}
    [extra] = [c for c in at_ca if normalise_serial(c["serial"]) != issued.serial]
    extra_serial = normalise_serial(extra["serial"])
    out = _certrail(live, "duplicates", "resolve", certificate_id, "--extra-serial", extra["serial"],
                    "--note", "found in emCA's console by applicationId")
    assert f"extra serial {extra_serial} revoked" in out

    # -- revoked and on the CA's CRL, confirmed, audited; the gauge back at 0; the delivered certificate untouched
    entry = wait_until(lambda: _on_crl(live, extra["certificate_pem"], extra["serial"]), "the extra serial on the CRL", 30,
                       interval_s=0.5)
    assert isinstance(entry, x509.RevokedCertificate)
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.superseded
    [resolved] = wait_until(lambda: _audited(live, DuplicateResolved.TYPE, certificate_id), "DuplicateResolved audited",
                            30, interval_s=0.5)
    wait_until(lambda: _audited(live, RevocationConfirmed.TYPE, certificate_id), "RevocationConfirmed audited", 60,
               interval_s=0.5)
    [confirmed] = live.events(live.topics.issuer_events, RevocationConfirmed.TYPE, certificate_id)
    assert confirmed.data.serial == extra_serial and confirmed.causationid == resolved
    wait_until(lambda: _gauge(live) == 0, lambda: f"the unresolved gauge at 0 (is {_gauge(live)})", 30, interval_s=0.5)
    assert check(live.admin.get("/v1/duplicates"), 200)["duplicates"] == []
    assert _on_crl(live, issued.certificate, issued.serial) is None
    assert live.rows("SELECT serial, status FROM certificate_inventory WHERE certificate_id = ?", certificate_id) == [
        (issued.serial, "active")]
