"""The ACME door end to end (issue 22, slice 2b): the four services as processes on the test run's Kafka broker and a
SQLite file, the emCA simulator as the CA, and a real ACME client nobody here wrote (the `acme` package, certbot's
client library) registering with External Account Binding (a key from ``certrail acme eab create``), ordering a name
the profile allows, answering http-01 from a real HTTP server on a loopback port (the gateway's challenge policy is
set by env: that port, the ordered name mapped to 127.0.0.1, loopback allowed), finalizing, polling the order to
valid and downloading the chain. The leaf is checked with ``cryptography`` (signed by the chain's issuing CA, the
CSR's key and names); then the client revokes it (kid) and the revocation is seen in the gateway's projection and on
the CA's CRL. The order's state changes are admin events in the audit store, the request's requester the account's.
The certbot CLI does the same (obtain, renew, revoke); its certificates also pass `openssl verify` against the emCA
root, and its renewal retires the first certificate (superseded in the gateway's projection and the inventory).
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import josepy as jose
import pytest
from acme import challenges as acme_challenges
from acme import client as acme_client
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from emca_sim.server import SimServer
from tests.conftest import wait_until
from tests.e2e.acme_support import (
    CONNECTOR,
    NAME,
    PROFILE,
    REQUESTER,
    ChallengeServer,
    audited_issuance,
    eab_key,
    finalized,
    in_inventory,
    live,
    on_crl,
    openssl_verifies,
)
from tests.e2e.process_stack import ProcessStack
from tests.issuer_harness import metric

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["live"]  # the stack fixture (tests/e2e/acme_support.py), imported for pytest


def _registered(live: ProcessStack) -> acme_client.ClientV2:
    created = eab_key(live)
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = acme_client.ClientNetwork(key=key, alg=jose.ES256, user_agent="certrail-acme-e2e")
    directory = acme_client.ClientV2.get_directory(f"{live.admin.base_url}/acme/directory", net)
    client = acme_client.ClientV2(directory, net)
    binding = messages.ExternalAccountBinding.from_data(account_public_key=key.public_key(), kid=created["key_id"],
                                                        hmac_key=created["hmac_key"], directory=directory)
    client.net.account = client.new_account(messages.NewRegistration.from_data(
        email="ops@acme.certrail.test", terms_of_service_agreed=True, external_account_binding=binding))
    return client


def _ordered(client: acme_client.ClientV2, answering: ChallengeServer) -> tuple[Any, messages.OrderResource, Any]:
    """A new order for NAME (a fresh key's CSR) with its http-01 challenge answered: the key, the order, the challenge."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    orderr = client.new_order(csr)
    [authzr] = orderr.authorizations
    [challb] = [c for c in authzr.body.challenges if isinstance(c.chall, acme_challenges.HTTP01)]
    response, validation = challb.response_and_validation(client.net.key)
    answering.answers[challb.chall.path] = validation.encode()
    client.answer_challenge(challb, response)
    return key, orderr, challb


@pytest.mark.timeout(300)
def test_a_real_acme_client_gets_a_certificate_from_emca_and_revokes_it(
        live: tuple[ProcessStack, ChallengeServer, SimServer]) -> None:
    stack, answering, _ = live
    client = _registered(stack)
    key, orderr, challb = _ordered(client, answering)
    order_id = orderr.uri.rsplit("/", 1)[1]

    # finalize, poll the order (processing, Retry-After) to valid, download the chain: the client library's own loop
    done = client.poll_and_finalize(orderr, datetime.now() + timedelta(seconds=120))
    assert done.body.status == messages.STATUS_VALID and done.fullchain_pem
    assert answering.seen == [challb.chall.path]
    leaf, *chain = x509.load_pem_x509_certificates(done.fullchain_pem.encode())
    assert chain, "the download carries the chain after the leaf"
    leaf.verify_directly_issued_by(chain[0])
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert (leaf.public_key().public_bytes(serialization.Encoding.DER, spki)
            == key.public_key().public_bytes(serialization.Encoding.DER, spki))
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [NAME]
    serial = format(leaf.serial_number, "x")
    certificate_id = f"acme-{order_id}"

    # the audit trail: the request's requester is the account's; the order's steps are admin events
    audited_issuance(stack, certificate_id)
    [(requester,)] = stack.rows("SELECT requester FROM gateway_requests WHERE request_id = ?", f"acme-finalize-{order_id}")
    assert requester == REQUESTER
    inventory = wait_until(lambda: stack.rows("SELECT status, serial, requester, profile FROM certificate_inventory "
                                              "WHERE certificate_id = ?", certificate_id),
                           "the certificate in the auditor's inventory", 60, interval_s=0.5)
    assert inventory == [("active", serial, REQUESTER, PROFILE)]
    admin_types = {t for (t,) in stack.rows("SELECT event_type FROM gateway_admin_outbox")}
    assert {"io.certrail.admin.acme_order_finalized.v1", "io.certrail.admin.acme_order_valid.v1"} <= admin_types

    # revoke (signed by the account, kid) through the intake: the projection and the CA's CRL show it
    client.revoke(leaf, 4)
    wait_until(lambda: stack.rows("SELECT status FROM gateway_issued_serials WHERE certificate_id = ? AND serial = ?",
                                  certificate_id, serial) == [("revoked",)],
               "the gateway's projection to show the serial revoked", 90, interval_s=0.5)
    entry = wait_until(lambda: on_crl(leaf), "the serial on the CA's CRL", 60, interval_s=1)
    assert isinstance(entry, x509.RevokedCertificate)
    with pytest.raises(Exception, match="alreadyRevoked|already"):
        client.revoke(leaf, 4)


def _certbot(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    dirs = ["--config-dir", str(tmp_path / "certbot" / "config"), "--work-dir", str(tmp_path / "certbot" / "work"),
            "--logs-dir", str(tmp_path / "certbot" / "logs")]
    return subprocess.run([str(Path(sys.executable).parent / "certbot"), *args, *dirs, "--non-interactive"],
                          capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.timeout(420)
def test_the_certbot_cli_obtains_renews_and_revokes_a_certificate(
        live: tuple[ProcessStack, ChallengeServer, SimServer], tmp_path: Path) -> None:
    stack, answering, sim = live
    port = answering.httpd.server_address[1]
    answering.__exit__()  # certbot's standalone server answers http-01 on that port now
    created = eab_key(stack)
    server = f"{stack.admin.base_url}/acme/directory"
    common = ["--server", server, "--standalone", "--http-01-port", str(port), "--http-01-address", "127.0.0.1"]
    done = _certbot(tmp_path, "certonly", *common, f"--eab-kid={created['key_id']}", f"--eab-hmac-key={created['hmac_key']}",
                    "--agree-tos", "-m", "ops@acme.certrail.test", "-d", NAME, "--key-type", "ecdsa")
    assert done.returncode == 0, done.stdout + done.stderr
    live_dir = tmp_path / "certbot" / "config" / "live" / NAME
    first = x509.load_pem_x509_certificates((live_dir / "fullchain.pem").read_bytes())
    first[0].verify_directly_issued_by(first[1])
    openssl_verifies(live_dir / "cert.pem", live_dir / "chain.pem", sim, tmp_path)
    assert first[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [NAME]
    [(first_request, requester)] = finalized(stack)
    assert requester == REQUESTER, "the finalize is the ACME account's request (the EAB key's requester)"
    in_inventory(stack, first_request, first[0])

    # renewal: a new order (the authorization is reused), a new certificate with a new serial
    renewed = _certbot(tmp_path, "renew", "--force-renewal", "--no-random-sleep-on-renew", "--standalone",
                       "--http-01-port", str(port), "--http-01-address", "127.0.0.1")
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    second = x509.load_pem_x509_certificates((live_dir / "fullchain.pem").read_bytes())
    assert second[0].serial_number != first[0].serial_number
    openssl_verifies(live_dir / "cert.pem", live_dir / "chain.pem", sim, tmp_path)
    [(second_request, requester)] = [row for row in finalized(stack) if row[0] != first_request]
    assert requester == REQUESTER
    in_inventory(stack, second_request, second[0])
    # certbot sends no `replaces` (no ARI newOrder): the same names, account, profile and key type retire the first
    # certificate all the same (decision 0033, "replaces retires"): superseded for the scheduler and in the inventory
    # (the gateway's CertificateSuperseded, through its outbox relay), not revoked
    old = format(first[0].serial_number, "x")
    wait_until(lambda: stack.rows("SELECT status FROM gateway_issued_serials WHERE serial = ?", old) == [("superseded",)],
               "the first certificate superseded in the gateway's projection", 90, interval_s=0.5)
    wait_until(lambda: stack.rows("SELECT status FROM certificate_inventory WHERE serial = ?", old) == [("superseded",)],
               "the first certificate superseded in the auditor's inventory", 90, interval_s=0.5)

    revoked = _certbot(tmp_path, "revoke", "--server", server, "--cert-path", str(live_dir / "cert.pem"),
                       "--reason", "superseded", "--no-delete-after-revoke")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    serial = format(second[0].serial_number, "x")
    wait_until(lambda: stack.rows("SELECT status FROM gateway_issued_serials WHERE serial = ?", serial) == [("revoked",)],
               "the renewed certificate revoked in the gateway's projection", 90, interval_s=0.5)
    assert isinstance(wait_until(lambda: on_crl(second[0]), "the serial on the CA's CRL", 60, interval_s=1),
                      x509.RevokedCertificate)


def _queued_s(stack: ProcessStack) -> float:
    try:
        text = httpx.get(f"{stack.issuer_url}/metrics", timeout=5).text
        return metric(text, "certrail_issuer_oldest_queued_command_age_seconds", {"connector": CONNECTOR}) or 0.0
    except (httpx.HTTPError, AssertionError, ValueError):
        return 0.0


@pytest.mark.timeout(300)
def test_while_emca_is_down_the_order_stays_processing_and_completes_when_it_returns(
        live: tuple[ProcessStack, ChallengeServer, SimServer]) -> None:
    stack, answering, sim = live
    client = _registered(stack)
    _, orderr, _ = _ordered(client, answering)
    orderr = client.poll_authorizations(orderr, datetime.now() + timedelta(seconds=60))
    trust = ssl.create_default_context(cafile=str(sim.data_dir / "tls-ca.pem"))
    with httpx.Client(base_url=sim.endpoints.admin_url, verify=trust, timeout=10,
                      headers={"Authorization": f"Bearer {sim.admin_token}"}) as admin:
        admin.post("/admin/faults", json={"down": True}).raise_for_status()
        try:
            orderr = client.begin_finalization(orderr)
            assert orderr.body.status == messages.STATUS_PROCESSING
            # the issuer holds the command queued while emCA does not answer; the order waits, processing
            wait_until(lambda: _queued_s(stack) > 3, "the finalize command queued at the issuer for 3 s", 90, interval_s=0.5)
            polled = client.net.post(orderr.uri, None, new_nonce_url=client.directory["newNonce"])
            assert polled.json()["status"] == "processing" and polled.headers["Retry-After"] == "1"
        finally:
            admin.delete("/admin/faults").raise_for_status()
    done = client.poll_finalization(orderr, datetime.now() + timedelta(seconds=150))
    assert done.body.status == messages.STATUS_VALID and done.fullchain_pem
