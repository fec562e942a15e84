"""The ACME door end to end with lego (issue 22): the stack of tests/e2e/acme_support.py (the four services as
processes, the emCA simulator as the CA, the gateway's http-01 policy set by env) and lego's ACME client, the Go module
github.com/go-acme/lego/v5 built with the machine's Go toolchain by scripts/lego.sh. lego registers with External
Account Binding (a key from ``certrail acme eab create``), answers http-01 with its own server on a loopback port,
obtains a certificate (``run``), renews it (a new order, a new serial) and revokes it (signed by the account); then a
second account obtains one with tls-alpn-01 (RFC 8737), lego's own tls-alpn-01 server answering on a loopback port.

What runs is lego's library behind tests/e2e/lego_driver (the lego CLI's flags and actions): the lego CLI package
imports a module the Go module proxy here refuses, see scripts/lego.sh. lego talks to the gateway's own HTTPS
listener (``CERTRAIL_GATEWAY_TLS__*``; lego refuses ACME over plain HTTP, RFC 8555 6.1), trusting the CA of its
certificate through LEGO_CA_CERTIFICATES. Each certificate is checked with ``cryptography`` (the leaf signed by
the issuer lego saved, the name) and with `openssl verify` against the emCA root, the requester of each finalize is
the ACME account's (the EAB key's requester), the certificate is in the auditor's inventory and its CertificateIssued
in the audit store, and the revoked serial is in the gateway's projection and on the CA's CRL.
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from emca_sim.server import SimServer
from services.common.settings import KafkaSettings
from tests.conftest import free_ports, wait_until
from tests.e2e.acme_support import (
    NAME,
    REQUESTER,
    ChallengeServer,
    acme_stack,
    eab_key,
    finalized,
    in_inventory,
    on_crl,
    openssl_verifies,
)
from tests.e2e.process_stack import ProcessStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and its server certificate for 127.0.0.1: (the CA's PEM, the server's chain, its key)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certrail e2e TLS CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
          .not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def live_https(kafka_settings: KafkaSettings, tmp_path_factory: pytest.TempPathFactory,
               ) -> Iterator[tuple[ProcessStack, ChallengeServer, SimServer, str, Path, int]]:
    """The ACME stack with the gateway's own HTTPS listener (``CERTRAIL_GATEWAY_TLS__*``, decision 0033 addendum)
    and tls-alpn-01 enabled on a loopback port, one stack for the module's tests (in file order): (stack, the http-01
    answering server, the simulator, the HTTPS directory URL, the CA that signed the listener's certificate: the
    bundle lego trusts, the tls-alpn-01 port)."""
    tmp_path = tmp_path_factory.mktemp("acme-lego")
    https_port, alpn_port = free_ports(2)
    ca, certfile, keyfile = _tls_files(tmp_path / "https")
    tls_env = {"CERTRAIL_GATEWAY_TLS__CERT_FILE": str(certfile), "CERTRAIL_GATEWAY_TLS__KEY_FILE": str(keyfile),
               "CERTRAIL_GATEWAY_TLS__PORT": str(https_port),
               "CERTRAIL_GATEWAY_ACME__CHALLENGES__TLS_ALPN01_ENABLED": "true",
               "CERTRAIL_GATEWAY_ACME__CHALLENGES__TLS_ALPN01_PORT": str(alpn_port)}
    directory = f"https://127.0.0.1:{https_port}/acme/directory"
    with acme_stack(kafka_settings, tmp_path, tls_env) as (stack, answering, sim):
        trust = ssl.create_default_context(cafile=str(ca))

        def answers() -> bool:
            try:
                return httpx.get(directory, timeout=5, verify=trust).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, "the ACME directory over HTTPS, verified against the CA", 30, interval_s=0.2)
        plain = httpx.get(f"http://127.0.0.1:{stack.ports['gateway']}/acme/directory", timeout=5)
        assert plain.status_code == 403 and directory in plain.json()["detail"], "ACME is HTTPS only beside it"
        yield stack, answering, sim, directory, ca, alpn_port


@pytest.fixture(scope="module")
def lego() -> Path:
    """The lego binary from scripts/lego.sh (cached under .cache/lego; built when missing, which needs the Go
    toolchain and the Go module proxy). Skipped, with the script's own error, only when no binary could be had."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "lego.sh")], capture_output=True, text=True, timeout=900,
                          check=False, cwd=ROOT)
    binary = Path(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else None
    if binary is None or not os.access(binary, os.X_OK):
        pytest.skip(f"lego could not be built by scripts/lego.sh (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return binary


def _account_args(directory: str, eab: dict[str, str], path: Path) -> list[str]:
    """lego's options for the door, an EAB-bound account and NAME, its files under ``path`` (the challenge's apart)."""
    return ["--server", directory, "--email", "ops@acme.certrail.test", "--accept-tos", "--eab",
            f"--eab.kid={eab['key_id']}", f"--eab.hmac={eab['hmac_key']}", "--domains", NAME, "--path", str(path)]


def _lego(binary: Path, args: list[str], action: str, ca: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(binary), *args, action], capture_output=True, text=True, timeout=240, check=False,
                          env={**os.environ, "LEGO_CA_CERTIFICATES": str(ca)})
    assert done.returncode == 0, f"lego {action}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done


def _certificate(path: Path, sim: SimServer, tmp_path: Path) -> x509.Certificate:
    """The leaf lego saved, checked: signed by the issuer lego saved beside it, `openssl verify` against the emCA
    root with that issuer file as the intermediates, for NAME only."""
    bundle, issuer_file = path / "certificates" / f"{NAME}.crt", path / "certificates" / f"{NAME}.issuer.crt"
    leaf, *chain = x509.load_pem_x509_certificates(bundle.read_bytes())
    [issuer, *_] = x509.load_pem_x509_certificates(issuer_file.read_bytes())
    assert chain and chain[0] == issuer, "the bundle carries the issuer after the leaf"
    leaf.verify_directly_issued_by(issuer)
    openssl_verifies(bundle, issuer_file, sim, tmp_path)
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [NAME]
    return leaf


@pytest.mark.timeout(600)
def test_lego_obtains_renews_and_revokes_a_certificate(
        live_https: tuple[ProcessStack, ChallengeServer, SimServer, str, Path, int], lego: Path, tmp_path: Path,
) -> None:
    stack, answering, sim, directory, ca, _alpn = live_https
    port = answering.httpd.server_address[1]
    answering.__exit__()  # lego's own http-01 server answers on that port now
    created = eab_key(stack)
    path = tmp_path / "lego"
    args = _account_args(directory, created, path) + ["--http", "--http.address", f"127.0.0.1:{port}"]

    _lego(lego, args, "run", ca)
    first = _certificate(path, sim, tmp_path)
    [(first_request, requester)] = finalized(stack)
    assert requester == REQUESTER, "the finalize is the ACME account's request (the EAB key's requester)"
    in_inventory(stack, first_request, first)

    # renewal: a new order and a new certificate with a new serial, by the same account
    _lego(lego, args, "renew", ca)
    second = _certificate(path, sim, tmp_path)
    assert second.serial_number != first.serial_number
    requests = finalized(stack)
    assert len(requests) == 2 and {r for _, r in requests} == {REQUESTER}
    [(second_request, _)] = [row for row in requests if row[0] != first_request]
    in_inventory(stack, second_request, second)

    _lego(lego, args, "revoke", ca)
    serial = format(second.serial_number, "x")
    wait_until(lambda: stack.rows("SELECT status FROM gateway_issued_serials WHERE serial = ?", serial) == [("revoked",)],
               "the renewed certificate revoked in the gateway's projection", 90, interval_s=0.5)
    assert isinstance(wait_until(lambda: on_crl(second), "the serial on the CA's CRL", 60, interval_s=1),
                      x509.RevokedCertificate)
    assert on_crl(first) is None, "only the revoked certificate is on the CRL"


@pytest.mark.timeout(600)
def test_lego_obtains_a_certificate_with_tls_alpn_01(
        live_https: tuple[ProcessStack, ChallengeServer, SimServer, str, Path, int], lego: Path, tmp_path: Path,
) -> None:
    """tls-alpn-01 (RFC 8737), on the module's stack after the http-01 test: lego answers with its own tls-alpn-01
    server (``--tls --tls.address``); its challenge certificate, built by lego, is the one the gateway's validator
    (services/gateway/acme/tls_alpn.py) must accept. A new account, so a new authorization: proven by tls-alpn-01,
    its http-01 challenge offered beside it and left pending."""
    stack, _, sim, directory, ca, alpn_port = live_https
    before = {request for request, _ in finalized(stack)}
    created = eab_key(stack)
    path = tmp_path / "lego-tls"
    args = _account_args(directory, created, path) + ["--tls", "--tls.address", f"127.0.0.1:{alpn_port}"]

    _lego(lego, args, "run", ca)

    leaf = _certificate(path, sim, tmp_path)
    [(request_id, requester)] = [row for row in finalized(stack) if row[0] not in before]
    assert requester == REQUESTER, "the finalize is the ACME account's request (the EAB key's requester)"
    in_inventory(stack, request_id, leaf)
    [(authz,)] = stack.rows("SELECT authz_id FROM gateway_acme_challenges WHERE type = 'tls-alpn-01' AND status = 'valid'")
    challenges = stack.rows("SELECT type, status, error FROM gateway_acme_challenges WHERE authz_id = ? ORDER BY type",
                            authz)
    assert challenges == [("http-01", "pending", None), ("tls-alpn-01", "valid", None)], \
        "the identifier was proven by tls-alpn-01; http-01 was offered beside it and left alone"
    validated = [json.loads(value)["data"]["change"] for (value,) in stack.rows(
        "SELECT value FROM gateway_admin_outbox WHERE event_type = ?", "io.certrail.admin.acme_challenge_validated.v1")]
    assert [(c["type"], c["identifier"], c["addresses"]) for c in validated if c["type"] == "tls-alpn-01"] == \
        [("tls-alpn-01", NAME, ["127.0.0.1"])]
