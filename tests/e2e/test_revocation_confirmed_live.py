"""Revocation confirmed on the CA's CRL, on the real stack (issue 20): the four services as processes on the test
run's Kafka broker and a SQLite file, two emCA simulators.

- ``emca-live``: a certificate revoked through the HTTP API -> CertificateRevoked -> the issuer reads the CRL at the
  certificate's own distribution point (the simulator's CRL server), verifies it against the connector's pinned
  issuing CA and publishes RevocationConfirmed; ``openssl verify -crl_check`` with that CRL refuses the certificate
  (and accepted it with the CRL from before the revocation); the auditor's inventory shows the revocation confirmed.
- ``emca-stale``: a simulator whose certificates name a distribution point that serves a CRL published once and
  never again (a mirror that stopped syncing: the CA's own, validly signed CRL, without the serial). The revocation
  is accepted by emCA but never listed: RevocationUnconfirmed (not_listed) after the issuer's deadline, and the
  counter the alert uses.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from emca_sim.server import SimServer, start_in_thread
from services.common.contracts.envelope import Envelope
from services.common.contracts.events import CertificateIssued, CertificateRevoked
from services.common.contracts.revocation import RevocationConfirmed, RevocationUnconfirmed, UnconfirmedCause
from services.common.settings import KafkaSettings
from services.issuer.revocation.crl_check import distribution_points
from tests.conftest import wait_until
from tests.e2e.process_stack import ProcessStack, process_stack, read_topic
from tests.e2e.process_stack import check as _check
from tests.e2e.process_stack import csr as _csr

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIVE, STALE = "emca-live", "emca-stale"
REQUESTER, DOMAIN = "web-team", "revoke.certrail.test"
CONFIRM_TIMEOUT_S = 20  # the stale connector's revocation is given up after this
CA_SLUG = "certrail-sim-issuing-ca-p-256"


class FrozenCrl:
    """A CRL distribution point that serves the bytes it was given, forever (a mirror that stopped syncing)."""

    def __init__(self) -> None:
        self.body = b""
        frozen = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200 if frozen.body else 503)
                self.send_header("Content-Type", "application/pkix-crl")
                self.send_header("Content-Length", str(len(frozen.body)))
                self.end_headers()
                self.wfile.write(frozen.body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="frozen-crl", daemon=True)

    def __enter__(self) -> FrozenCrl:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def live(kafka_settings: KafkaSettings, tmp_path: Path) -> Iterator[ProcessStack]:
    with FrozenCrl() as frozen, \
            start_in_thread(tmp_path / "sim-live", port=0, crl_port=0, admin_port=0) as sim_live, \
            start_in_thread(tmp_path / "sim-stale", port=0, crl_port=0, admin_port=0,
                            public_base_url=frozen.base_url) as sim_stale, \
            process_stack(kafka_settings, tmp_path, requester=REQUESTER, description="revocation e2e", env={
                "CERTRAIL_ISSUER_REVOCATION_CONFIRM_TIMEOUT_S": str(CONFIRM_TIMEOUT_S),
                "CERTRAIL_ISSUER_REVOCATION_CONFIRM_POLL_INITIAL_S": "1",
                "CERTRAIL_ISSUER_REVOCATION_CONFIRM_POLL_MAX_S": "3"}) as live:
        # the stale CA's distribution point: its CRL as published now, before any revocation, and never again
        frozen.body = httpx.get(f"{sim_stale.endpoints.crl_base_url}/crl/{CA_SLUG}.crl", timeout=10).content
        for name, sim in ((LIVE, sim_live), (STALE, sim_stale)):
            live.add_connector(name, sim)
            _check(live.admin.post("/v1/profiles", json={
                "name": f"web-{name}", "connector": name, "ca_profile": "TLS Server", "key_generation": "requester",
                "domain_rules": {"dns_suffixes": [DOMAIN]}, "validity_days": 1, "allowed_requesters": [REQUESTER]}), 201)
        yield live


# -- reading what happened ------------------------------------------------------------------------------------


def _issuer_events(live: ProcessStack, event_type: str, certificate_id: str) -> list[Envelope]:
    return [e for e in asyncio.run(read_topic(live.kafka, live.topics.issuer_events))
            if e.type == event_type and e.subject == certificate_id]


def _serial_check(live: ProcessStack, certificate_id: str, serial: str) -> tuple[Any, ...] | None:
    connection = sqlite3.connect(live.db, timeout=10)
    try:
        return connection.execute(
            "SELECT s.status, s.revocation_check, s.revocation_crl_number, i.revocation_check FROM certificate_serials s"
            " JOIN certificate_inventory i ON i.certificate_id = s.certificate_id"
            " WHERE s.certificate_id = ? AND s.serial = ?", (certificate_id, serial)).fetchone()
    finally:
        connection.close()


def _issue(live: ProcessStack, connector: str, certificate_id: str) -> CertificateIssued:
    _check(live.requester.post("/v1/certificates", json={
        "request_id": f"issue-{certificate_id}", "profile": f"web-{connector}", "certificate_id": certificate_id,
        "csr": _csr(certificate_id)}), 202)
    found = wait_until(lambda: _issuer_events(live, CertificateIssued.TYPE, certificate_id),
                       f"{certificate_id} issued", 90, interval_s=0.5)
    assert isinstance(found, list)
    issued = found[0].data
    assert isinstance(issued, CertificateIssued)
    # as a client would: the request's status says issued once the gateway folded the event (revoke reads that fold)
    wait_until(lambda: live.requester.get(f"/v1/requests/issue-{certificate_id}").json().get("state") == "issued",
               f"the gateway to know {certificate_id} issued", 60, interval_s=0.5)
    return issued


def _revoke(live: ProcessStack, certificate_id: str, serial: str) -> None:
    _check(live.requester.post(f"/v1/certificates/{certificate_id}/revoke", json={
        "request_id": f"revoke-{certificate_id}", "reason": "keyCompromise", "serial": serial}), 202)


def _openssl_verify(live: ProcessStack, sim: SimServer, leaf_pem: str, crl_der: bytes, name: str) -> subprocess.CompletedProcess[str]:
    leaf, crl = live.var / f"{name}.leaf.pem", live.var / f"{name}.crl.pem"
    leaf.write_text(leaf_pem)
    crl.write_bytes(x509.load_der_x509_crl(crl_der).public_bytes(serialization.Encoding.PEM))
    return subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(sim.data_dir / "ca-chain.pem"),
                           "-CRLfile", str(crl), str(leaf)], capture_output=True, text=True, timeout=30, check=False)


# -- the tests ---------------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_revocation_is_confirmed_on_the_crl_or_reported_unconfirmed(live: ProcessStack) -> None:
    live_id, stale_id = f"www.{DOMAIN}", f"api.{DOMAIN}"
    issued = _issue(live, LIVE, live_id)
    stale = _issue(live, STALE, stale_id)
    [cdp] = distribution_points(x509.load_pem_x509_certificate(issued.certificate.encode()))
    assert cdp.startswith(live.sims[LIVE].endpoints.public_base_url)  # the certificate's own distribution point
    before = httpx.get(cdp, timeout=10).content
    accepted = _openssl_verify(live, live.sims[LIVE], issued.certificate, before, "before")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr

    _revoke(live, live_id, issued.serial)
    _revoke(live, stale_id, stale.serial)

    # -- confirmed: the CA's CRL lists the serial with the reason asked for
    found = wait_until(lambda: _issuer_events(live, RevocationConfirmed.TYPE, live_id),
                       f"RevocationConfirmed for {live_id}", 60, interval_s=0.5)
    assert isinstance(found, list) and len(found) == 1
    confirmed = found[0]
    assert isinstance(confirmed.data, RevocationConfirmed)
    [revoked] = _issuer_events(live, CertificateRevoked.TYPE, live_id)
    assert confirmed.causationid == revoked.id and confirmed.correlationid == f"revoke-{live_id}"
    assert (confirmed.data.serial, confirmed.data.reason.value, confirmed.data.distribution_point) == (
        issued.serial, "keyCompromise", cdp)
    crl_der = httpx.get(cdp, timeout=10).content
    crl = x509.load_der_x509_crl(crl_der)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert int(confirmed.data.crl_number or "0") <= number
    refused = _openssl_verify(live, live.sims[LIVE], issued.certificate, crl_der, "after")
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr, refused
    wait_until(lambda: (_serial_check(live, live_id, issued.serial) or ())[:2] == ("revoked", "confirmed"),
               lambda: f"the inventory to show {live_id}'s revocation confirmed: {_serial_check(live, live_id, issued.serial)}",
               30, interval_s=0.5)
    row = _serial_check(live, live_id, issued.serial)
    assert row is not None and row[2] == confirmed.data.crl_number and row[3] == "confirmed"

    # -- unconfirmed: emCA accepted the revocation, the certificate's distribution point never lists it
    found = wait_until(lambda: _issuer_events(live, RevocationUnconfirmed.TYPE, stale_id),
                       f"RevocationUnconfirmed for {stale_id}", CONFIRM_TIMEOUT_S + 40, interval_s=1)
    assert isinstance(found, list) and len(found) == 1
    unconfirmed = found[0].data
    assert isinstance(unconfirmed, RevocationUnconfirmed)
    assert unconfirmed.cause is UnconfirmedCause.NOT_LISTED and unconfirmed.serial == stale.serial
    assert unconfirmed.checks >= 2 and unconfirmed.crl_number is not None
    [stale_revoked] = _issuer_events(live, CertificateRevoked.TYPE, stale_id)
    assert isinstance(stale_revoked.data, CertificateRevoked)
    assert unconfirmed.deadline == stale_revoked.data.revoked_at + timedelta(seconds=CONFIRM_TIMEOUT_S)
    assert unconfirmed.given_up_at >= unconfirmed.deadline  # polled until the deadline, not given up before
    assert not _issuer_events(live, RevocationConfirmed.TYPE, stale_id)
    at_ca = httpx.get(f"{live.sims[STALE].endpoints.crl_base_url}/crl/{CA_SLUG}.crl", timeout=10).content
    assert x509.load_der_x509_crl(at_ca).get_revoked_certificate_by_serial_number(int(stale.serial, 16)) is not None, \
        "emCA did revoke it: only the distribution point the certificate names is stale"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(httpx.get(f"{live.issuer_url}/metrics", timeout=10).text)
               for s in family.samples}
    assert samples[("certrail_issuer_revocations_unconfirmed_total", (("cause", "not_listed"), ("connector", STALE)))] == 1
    assert samples[("certrail_issuer_revocations_confirmed_total", (("connector", LIVE),))] == 1
    wait_until(lambda: (_serial_check(live, stale_id, stale.serial) or ())[:2] == ("revoked", "unconfirmed"),
               lambda: f"the inventory to show {stale_id}'s revocation unconfirmed: {_serial_check(live, stale_id, stale.serial)}",
               30, interval_s=0.5)
