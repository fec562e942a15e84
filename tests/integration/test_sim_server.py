"""The emCA simulator's servers with real clients: TLS trust, CRLs over HTTP checked by openssl, the admin
API, every fault mode seen by httpx, the CLI, and a `serve` process stopped by SIGTERM.

The server runs in-process in a background thread (its own event loop) on free ports; issuance goes
through the backend directly (the dialect modules test their own endpoints).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID
from typer.testing import CliRunner

from emca_sim.backend import Issued, Pending
from emca_sim.server import SimServer, start_in_thread
from services.cli.emca_sim_cmd import app as cli_app
from tests.conftest import free_ports, wait_until

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

API_PATH = "/emCAServices/rest/getCertificateProfileList"  # any path: faults apply before routing


def trust(bundle: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(bundle))


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    with start_in_thread(tmp_path_factory.mktemp("emca-sim-server"), port=0, crl_port=0, admin_port=0) as server:
        yield server


@pytest.fixture(scope="module")
def admin(sim: SimServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.endpoints.admin_url, verify=trust(sim.data_dir / "tls-ca.pem"),
                      headers={"Authorization": f"Bearer {sim.admin_token}"}, timeout=10) as client:
        yield client


@pytest.fixture
def api(sim: SimServer, admin: httpx.Client) -> Iterator[httpx.Client]:
    """A client of the emCA API port; every fault is cleared afterwards."""
    with httpx.Client(base_url=sim.endpoints.api_url, verify=trust(sim.data_dir / "tls-ca.pem"), timeout=10) as client:
        yield client
    admin.delete("/admin/faults").raise_for_status()


def set_faults(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    response = admin.post("/admin/faults", json=body)
    response.raise_for_status()
    return response.json()


def reachable(url: str, ca: Path) -> bool:
    try:
        with httpx.Client(verify=trust(ca), timeout=2) as client:
            client.get(url)
        return True
    except httpx.TransportError:
        return False


def csr_pem(*names: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)


# --- TLS, CRLs, AIA ---------------------------------------------------------------------------


def test_api_tls_verifies_against_the_trust_bundle_only(sim: SimServer) -> None:
    with httpx.Client(verify=trust(sim.data_dir / "tls-ca.pem")) as client:
        assert client.get(sim.endpoints.api_url + API_PATH).status_code in (200, 401, 403, 404, 405)
        assert client.get(sim.endpoints.admin_url + "/admin/health").json()["status"] == "ok"
    with httpx.Client() as default_trust, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        default_trust.get(sim.endpoints.api_url + API_PATH)
    with httpx.Client(verify=trust(sim.data_dir / "ca-chain.pem")) as wrong_ca, pytest.raises(httpx.ConnectError):
        wrong_ca.get(sim.endpoints.api_url + API_PATH)
    with pytest.raises(httpx.RemoteProtocolError):  # HTTPS only
        httpx.get(sim.endpoints.api_url.replace("https://", "http://") + API_PATH)


@pytest.mark.parametrize("profile", ["TLS Server", "TLS Server RSA"])
def test_crl_from_the_certificates_own_distribution_point(sim: SimServer, admin: httpx.Client, tmp_path: Path,
                                                          profile: str) -> None:
    result = sim.backend.issue(profile=profile, subscriber_id="SUB-0001", csr_pem=csr_pem("crl.example.com"),
                               application_id=None, dedupe_by_application_id=False)
    assert isinstance(result, Issued)
    cert = x509.load_pem_x509_certificate(result.certificate_pem.encode())
    crl_url = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name[0].value  # type: ignore[index]
    aia_url = next(d.access_location.value for d in cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
                   if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS)
    assert crl_url.startswith(sim.endpoints.public_base_url + "/crl/")
    leaf, chain, crl_pem = tmp_path / "leaf.pem", sim.data_dir / "ca-chain.pem", tmp_path / "crl.pem"
    leaf.write_text(result.certificate_pem)

    issuer = httpx.get(aia_url)
    assert issuer.headers["content-type"] == "application/pkix-cert"
    assert x509.load_der_x509_certificate(issuer.content).public_bytes(serialization.Encoding.PEM).decode() == result.chain_pem[0]

    def fetch_crl() -> None:
        response = httpx.get(crl_url)
        assert response.status_code == 200 and response.headers["content-type"] == "application/pkix-crl"
        crl_pem.write_bytes(x509.load_der_x509_crl(response.content).public_bytes(serialization.Encoding.PEM))

    fetch_crl()
    ok = openssl("verify", "-crl_check", "-CAfile", str(chain), "-CRLfile", str(crl_pem), str(leaf))
    assert ok.returncode == 0 and ok.stdout.strip() == f"{leaf}: OK", ok.stdout + ok.stderr

    response = admin.post(f"/admin/certificates/{result.serial}/revoke", json={"reason": "keyCompromise"})
    assert response.status_code == 200 and response.json()["revocation_reason"] == "keyCompromise"
    fetch_crl()
    revoked = openssl("verify", "-crl_check", "-CAfile", str(chain), "-CRLfile", str(crl_pem), str(leaf))
    assert revoked.returncode != 0 and "certificate revoked" in revoked.stdout + revoked.stderr
    entry = x509.load_pem_x509_crl(crl_pem.read_bytes()).get_revoked_certificate_by_serial_number(int(result.serial, 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    # openssl prints the serial's magnitude: a serial whose first byte is 00 is printed without it.
    text = openssl("crl", "-in", str(crl_pem), "-noout", "-text").stdout
    assert format(int(result.serial, 16), "X") in text.replace(":", "").upper() and "Key Compromise" in text
    assert admin.post(f"/admin/certificates/{result.serial}/revoke", json={"reason": "superseded"}).status_code == 409


def test_crl_port_serves_only_known_cas(sim: SimServer) -> None:
    assert httpx.get(sim.endpoints.crl_base_url + "/crl/nope.crl").status_code == 404
    assert httpx.get(sim.endpoints.crl_base_url + "/ca/nope.crt").status_code == 404
    root = httpx.get(sim.endpoints.crl_base_url + "/crl/certrail-sim-root-ca.crl")
    assert root.status_code == 200 and len(list(x509.load_der_x509_crl(root.content))) == 0


# --- admin API --------------------------------------------------------------------------------


def test_admin_api_needs_the_token(sim: SimServer) -> None:
    with httpx.Client(base_url=sim.endpoints.admin_url, verify=trust(sim.data_dir / "tls-ca.pem")) as client:
        for method, path in [("GET", "/admin/faults"), ("POST", "/admin/faults"), ("DELETE", "/admin/faults"),
                             ("GET", "/admin/counters"), ("GET", "/admin/pending"), ("POST", "/admin/pending/x/approve"),
                             ("POST", "/admin/applications/certrail-v423/rotate-credentials")]:
            assert client.request(method, path).status_code == 401
            assert client.request(method, path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/admin/health").status_code == 200
    token_file = sim.data_dir / "admin-token"
    assert token_file.read_text().strip() == sim.admin_token and (token_file.stat().st_mode & 0o777) == 0o600


def test_admin_counters_and_manual_approval(sim: SimServer, admin: httpx.Client) -> None:
    held = sim.backend.issue(profile="TLS Server Manual", subscriber_id="SUB-0002", csr_pem=csr_pem("m.example.com"),
                             application_id="admin-manual", dedupe_by_application_id=True)
    other = sim.backend.issue(profile="TLS Server Manual", subscriber_id="SUB-0002", csr_pem=csr_pem("n.example.com"),
                              application_id=None, dedupe_by_application_id=False)
    assert isinstance(held, Pending) and isinstance(other, Pending)
    listed = admin.get("/admin/pending").json()
    assert {held.request_id, other.request_id} <= {p["request_id"] for p in listed}
    approved = admin.post(f"/admin/pending/{held.request_id}/approve").json()
    assert approved["state"] == "approved" and approved["issued"]["certificate_pem"].startswith("-----BEGIN CERTIFICATE-----")
    rejected = admin.post(f"/admin/pending/{other.request_id}/reject", json={"reason": "policy"}).json()
    assert (rejected["state"], rejected["rejection"]) == ("rejected", "policy")
    assert admin.post(f"/admin/pending/{other.request_id}/approve").status_code == 409
    assert admin.post("/admin/pending/unknown/approve").status_code == 404
    assert sim.backend.pending(held.request_id).state == "approved"
    sim.backend.count_request("createCertificate")
    counters = admin.get("/admin/counters").json()
    assert counters["issued_by_application_id"]["admin-manual"] == 1
    assert counters["requests_by_method"]["createCertificate"] >= 1
    assert admin.get(f"/admin/certificates/{approved['issued']['serial']}").json()["application_id"] == "admin-manual"
    assert admin.post("/admin/faults", json={"slow_ms": -1}).status_code == 422


# --- faults -----------------------------------------------------------------------------------


def test_down_refuses_and_resets_then_up_restores(sim: SimServer, admin: httpx.Client, api: httpx.Client) -> None:
    assert api.get(API_PATH).status_code < 500
    api.close()  # no idle keep-alive connection left to count
    wait_until(lambda: admin.get("/admin/faults").json()["connections"] == 0, "idle connections to close", 10, interval_s=0.02)
    set_faults(admin, slow_ms=5000)
    outcome: list[BaseException | httpx.Response] = []

    def in_flight() -> None:
        with httpx.Client(verify=trust(sim.data_dir / "tls-ca.pem"), timeout=10) as client:
            try:
                outcome.append(client.get(sim.endpoints.api_url + API_PATH))
            except httpx.TransportError as exc:
                outcome.append(exc)

    thread = threading.Thread(target=in_flight)
    thread.start()
    wait_until(lambda: admin.get("/admin/faults").json()["connections"] >= 1, "the request to be in flight", 10, interval_s=0.02)
    started = time.monotonic()
    assert set_faults(admin, down=True)["down"] is True
    thread.join(10)
    assert isinstance(outcome[0], httpx.ReadError | httpx.RemoteProtocolError), outcome
    assert time.monotonic() - started < 4  # reset at once, not answered after the 5 s latency
    with pytest.raises(httpx.ConnectError):
        httpx.get(sim.endpoints.api_url + API_PATH, verify=trust(sim.data_dir / "tls-ca.pem"))
    assert admin.get("/admin/health").json()["api"] == "down"
    assert httpx.get(sim.endpoints.crl_base_url + "/ca/certrail-sim-root-ca.crt").status_code == 200  # other ports unaffected
    set_faults(admin, down=False, slow_ms=0)
    assert httpx.get(sim.endpoints.api_url + API_PATH, verify=trust(sim.data_dir / "tls-ca.pem")).status_code < 500


def test_slow_adds_latency(admin: httpx.Client, api: httpx.Client) -> None:
    api.get(API_PATH)  # connection set up outside the measurement
    set_faults(admin, slow_ms=400)
    started = time.monotonic()
    assert api.get(API_PATH).status_code < 500
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    admin.get("/admin/faults")
    assert time.monotonic() - started < 0.4  # not the admin API


def test_error_rate(admin: httpx.Client, api: httpx.Client) -> None:
    set_faults(admin, error_rate=1.0, error_status=503)
    response = api.get(API_PATH)
    assert response.status_code == 503 and response.json() == {"status": "failure", "result": "Internal server error"}
    set_faults(admin, error_rate=0.5, error_status=500)
    statuses = {api.get(API_PATH).status_code for _ in range(60)}
    assert 500 in statuses and len(statuses) == 2


def test_rate_limit(admin: httpx.Client, api: httpx.Client) -> None:
    set_faults(admin, rate_limit={"rate": 1.0, "retry_after_s": 7})
    response = api.get(API_PATH)
    assert response.status_code == 429 and response.headers["retry-after"] == "7"
    set_faults(admin, rate_limit=None)
    assert api.get(API_PATH).status_code != 429


def test_flapping(sim: SimServer, admin: httpx.Client, api: httpx.Client) -> None:
    ca = sim.data_dir / "tls-ca.pem"
    url = sim.endpoints.api_url + API_PATH
    assert set_faults(admin, flap={"up_s": 0.5, "down_s": 0.5})["flap"] == {"up_s": 0.5, "down_s": 0.5}
    seen: list[bool] = []

    def transitions() -> bool:
        state = reachable(url, ca)
        if not seen or seen[-1] != state:
            seen.append(state)
        return len(seen) >= 4  # e.g. down, up, down, up

    wait_until(transitions, "the API to flap", 15, interval_s=0.02)
    set_faults(admin, flap=None)
    assert wait_until(lambda: reachable(url, ca), "the API to stay up", 10, interval_s=0.02)
    assert admin.get("/admin/faults").json()["flap"] is None


def test_rotated_credentials(sim: SimServer, admin: httpx.Client) -> None:
    before = sim.backend.application("certrail-v4017")
    assert before is not None
    response = admin.post("/admin/applications/certrail-v4017/rotate-credentials")
    assert response.status_code == 200
    body = response.json()
    assert body["password"] != before.password and sim.backend.application("certrail-v4017").password == body["password"]  # type: ignore[union-attr]
    assert json.loads(Path(body["credentials_file"]).read_text())["password"] == body["password"]
    assert "certrail-v4017" in admin.get("/admin/faults").json()["rotated_credentials"]
    assert admin.post("/admin/applications/nobody/rotate-credentials").status_code == 404


def test_rotated_credentials_fail_authentication_at_the_dialect(sim: SimServer, admin: httpx.Client, api: httpx.Client) -> None:
    """Through the V4.2.3 dialect's getCAs (wire format: emca_sim/dialects/v4_2.py), if that dialect is served."""
    dialect = pytest.importorskip("emca_sim.dialects.v4_2")
    if not hasattr(dialect, "routes"):
        pytest.skip("the 4.2.x dialect has no routes yet")
    username = "certrail-v423"

    def get_cas(password: str, client_id: str) -> httpx.Response:
        ts, txn = str(int(time.time() * 1000)), secrets.token_hex(8)
        basic = base64.b64encode(f"{username}:{password}".encode()).decode()
        return api.get(f"/emCAServices42/rest/getCAs/{username}", headers={
            "Authorization": f"Basic {basic}", "AuthKey": hashlib.sha256(f"{client_id}{ts}{txn}".encode()).hexdigest(),
            "ts": ts, "txn": txn})

    credentials_file = sim.data_dir / "applications" / username / "credentials.json"
    old = json.loads(credentials_file.read_text())
    assert get_cas(old["password"], old["client_id"]).status_code == 200
    admin.post(f"/admin/applications/{username}/rotate-credentials").raise_for_status()
    refused = get_cas(old["password"], old["client_id"])
    assert refused.status_code == 401 and refused.json()["status"] == "failure"
    new = json.loads(credentials_file.read_text())
    assert get_cas(new["password"], new["client_id"]).status_code == 200


# --- CLI and the serve process ----------------------------------------------------------------


def test_fault_cli(sim: SimServer, api: httpx.Client) -> None:
    runner = CliRunner()
    data_dir = str(sim.data_dir)

    def run(*args: str) -> dict[str, Any]:
        result = runner.invoke(cli_app, [*args, "--data-dir", data_dir])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    assert run("fault", "slow", "150")["slow_ms"] == 150
    assert run("fault", "errors", "0.25", "--status", "502")["error_rate"] == 0.25
    assert run("fault", "rate-limit", "--retry-after", "3", "--rate", "0.5")["rate_limit"] == {"rate": 0.5, "retry_after_s": 3}
    assert run("fault", "flap", "--up", "1", "--down", "2")["flap"] == {"up_s": 1.0, "down_s": 2.0}
    assert run("fault", "up")["flap"] is None
    assert run("fault", "down")["down"] is True
    status = run("fault", "status")
    assert status["down"] is True and status["slow_ms"] == 150
    cleared = run("fault", "clear")
    assert (cleared["down"], cleared["slow_ms"], cleared["error_rate"], cleared["rate_limit"]) == (False, 0, 0.0, None)
    assert api.get(API_PATH).status_code < 500
    rotated = run("fault", "rotate-credentials", "certrail-v424")
    assert rotated["client_id"] == sim.backend.application("certrail-v424").client_id  # type: ignore[union-attr]
    assert "issued_by_application_id" in run("counters")
    bad = runner.invoke(cli_app, ["fault", "status", "--admin-url", sim.endpoints.admin_url, "--token", "wrong",
                                  "--ca-file", str(sim.data_dir / "tls-ca.pem")])
    assert bad.exit_code == 1 and "401" in bad.output


def test_serve_process_starts_and_stops_on_sigterm(tmp_path: Path) -> None:
    port, crl_port, admin_port = free_ports(3)
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    process = subprocess.Popen(
        [sys.executable, "-c", "from services.cli.emca_sim_cmd import app; app()", "serve", "--data-dir", str(tmp_path),
         "--port", str(port), "--crl-port", str(crl_port), "--admin-port", str(admin_port)],
        cwd=Path(__file__).resolve().parents[2], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: (tmp_path / "server.json").exists() or process.poll() is not None, "server.json", 30, interval_s=0.02)
        assert process.poll() is None
        server = json.loads((tmp_path / "server.json").read_text())
        assert server["api_url"] == f"https://127.0.0.1:{port}"
        assert server["public_base_url"] == f"http://127.0.0.1:{crl_port}"
        health = httpx.get(server["admin_url"] + "/admin/health", verify=trust(tmp_path / "tls-ca.pem"))
        assert health.json()["status"] == "ok"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
        assert process.returncode == 0, output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
