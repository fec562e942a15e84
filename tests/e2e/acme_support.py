"""What the ACME door's end-to-end tests share (tests/e2e/test_acme_live.py with certbot and its ``acme`` library,
tests/e2e/test_acme_lego_live.py with lego): the stack with the gateway's challenge policy set by env (the http-01
port, the ordered name mapped to 127.0.0.1, loopback allowed), a connector to the emCA simulator and a profile that
allows the name; a plain http-01 answering server; the ``certrail`` CLI; and the CA's CRL lookup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from emca_sim.server import SimServer, start_in_thread
from services.common.settings import KafkaSettings
from tests.conftest import free_ports, wait_until
from tests.e2e.process_stack import ProcessStack, check, process_stack

CONNECTOR, PROFILE, REQUESTER = "emca-acme", "acme-web", "acme-team"
NAME = "www.acme.certrail.test"


class ChallengeServer:
    """A plain HTTP server on a loopback port answering ``/.well-known/acme-challenge/<token>`` (as certbot's
    standalone plugin does)."""

    def __init__(self, port: int) -> None:
        self.answers: dict[str, bytes] = {}
        self.seen: list[str] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                state.seen.append(self.path)
                body = state.answers.get(self.path)
                self.send_response(404 if body is None else 200)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="http-01", daemon=True)

    def __enter__(self) -> ChallengeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def acme_stack(kafka_settings: KafkaSettings, tmp_path: Path, env: dict[str, str] | None = None,
               ) -> Iterator[tuple[ProcessStack, ChallengeServer, SimServer]]:
    """The stack with the ACME challenge policy for NAME on a loopback port (answered by the ChallengeServer until a
    test closes it for its client's own server), the emCA simulator's connector and PROFILE; ``env`` adds gateway
    settings."""
    [port] = free_ports(1)
    acme_env = {"CERTRAIL_GATEWAY_ACME__CHALLENGES__HTTP01_PORT": str(port),
                "CERTRAIL_GATEWAY_ACME__CHALLENGES__RESOLVE": json.dumps({NAME: "127.0.0.1"}),
                "CERTRAIL_GATEWAY_ACME__CHALLENGES__ALLOWED_NETWORKS": json.dumps(["127.0.0.0/8"]),
                "CERTRAIL_GATEWAY_ACME__RETRY_AFTER_S": "1", **(env or {})}
    with ChallengeServer(port) as answering, \
            start_in_thread(tmp_path / "emca-sim", port=0, crl_port=0, admin_port=0) as sim, \
            process_stack(kafka_settings, tmp_path, requester=REQUESTER, description="acme e2e", env=acme_env) as stack:
        stack.add_connector(CONNECTOR, sim)
        check(stack.admin.post("/v1/profiles", json={
            "name": PROFILE, "connector": CONNECTOR, "ca_profile": "TLS Server", "key_generation": "requester",
            "domain_rules": {"dns_suffixes": ["acme.certrail.test"]}, "allowed_requesters": [REQUESTER],
            "validity_days": 1}), 201)
        yield stack, answering, sim


@pytest.fixture
def live(kafka_settings: KafkaSettings, tmp_path: Path) -> Iterator[tuple[ProcessStack, ChallengeServer, SimServer]]:
    with acme_stack(kafka_settings, tmp_path) as started:
        yield started


def certrail(live: ProcessStack, *args: str) -> str:
    """Runs the ``certrail`` CLI against the stack's gateway with its admin token; its stdout."""
    token = live.admin.headers["Authorization"].removeprefix("Bearer ")
    done = subprocess.run([str(Path(sys.executable).parent / "certrail"), *args], capture_output=True, text=True,
                          timeout=90, check=False, env={**os.environ, "CERTRAIL_TOKEN": token,
                                                        "CERTRAIL_GATEWAY_URL": str(live.admin.base_url)})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def eab_key(live: ProcessStack) -> dict[str, str]:
    """A fresh EAB key for REQUESTER and PROFILE (``certrail acme eab create --json``): key_id, hmac_key."""
    created: dict[str, str] = json.loads(certrail(live, "acme", "eab", "create", "--requester", REQUESTER,
                                                  "--profile", PROFILE, "--json"))
    return created


def on_crl(certificate: x509.Certificate) -> x509.RevokedCertificate | None:
    """The certificate's entry on the CRL at its distribution point (the CA's), or None."""
    [point] = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    url = next(n.value for n in point.full_name or () if isinstance(n, x509.UniformResourceIdentifier))
    crl = x509.load_der_x509_crl(httpx.get(url, timeout=10).content)
    return crl.get_revoked_certificate_by_serial_number(certificate.serial_number)


def openssl_verifies(leaf_pem: Path, intermediates_pem: Path, sim: SimServer, tmp_path: Path) -> None:
    """`openssl verify` of the (first) certificate in ``leaf_pem`` against the emCA root (the self-signed certificate of
    the simulator's published CA chain), with ``intermediates_pem`` as the untrusted intermediates."""
    roots = [c for c in x509.load_pem_x509_certificates((sim.data_dir / "ca-chain.pem").read_bytes()) if c.issuer == c.subject]
    root_file = tmp_path / "emca-roots.pem"
    root_file.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in roots))
    checked = subprocess.run(["openssl", "verify", "-CAfile", str(root_file), "-untrusted", str(intermediates_pem),
                              str(leaf_pem)], capture_output=True, text=True, timeout=30, check=False)
    assert checked.returncode == 0 and checked.stdout.strip().endswith(": OK"), checked.stdout + checked.stderr


def audited_issuance(stack: ProcessStack, certificate_id: str) -> None:
    """Wait until the certificate's CertificateIssued is in the audit store."""
    wait_until(lambda: stack.rows("SELECT 1 FROM audit_records WHERE event_type = ? AND subject = ?",
                                  "io.certrail.certificate.issued.v1", certificate_id),
               f"CertificateIssued of {certificate_id} in the audit store", 60, interval_s=0.5)


def finalized(stack: ProcessStack) -> list[tuple[str, str]]:
    """The ACME finalize requests the gateway accepted (request id, requester), in request id order."""
    rows: list[tuple[str, str]] = stack.rows(
        "SELECT request_id, requester FROM gateway_requests WHERE request_id LIKE 'acme-finalize-%' ORDER BY request_id")
    return rows


def in_inventory(stack: ProcessStack, order_request_id: str, leaf: x509.Certificate) -> None:
    """The order's certificate is in the auditor's inventory with the account's requester and the profile, and its
    CertificateIssued is in the audit store."""
    certificate_id = "acme-" + order_request_id.removeprefix("acme-finalize-")
    inventory = wait_until(lambda: stack.rows("SELECT serial, requester, profile FROM certificate_inventory "
                                              "WHERE certificate_id = ?", certificate_id),
                           "the certificate in the auditor's inventory", 60, interval_s=0.5)
    assert inventory == [(format(leaf.serial_number, "x"), REQUESTER, PROFILE)]
    audited_issuance(stack, certificate_id)
