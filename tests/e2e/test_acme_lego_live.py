"""The ACME door end to end with lego (issue 22): the stack of tests/e2e/acme_support.py (the four services as
processes, the emCA simulator as the CA, the gateway's http-01 policy set by env) and lego's ACME client, the Go module
github.com/go-acme/lego/v5 built with the machine's Go toolchain by scripts/lego.sh. lego registers with External
Account Binding (a key from ``certrail acme eab create``), answers http-01 with its own server on a loopback port,
obtains a certificate (``run``), renews it (a new order, a new serial) and revokes it (signed by the account).

What runs is lego's library behind tests/e2e/lego_driver (the lego CLI's flags and actions): the lego CLI package
imports a module the Go module proxy here refuses, see scripts/lego.sh. Each certificate is checked with
``cryptography`` (the leaf signed by the issuer lego saved, the name), the requester of each finalize is the ACME
account's (the EAB key's requester), the certificate is in the auditor's inventory, and the revoked serial is in the
gateway's projection and on the CA's CRL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from emca_sim.server import SimServer
from services.common.settings import KafkaSettings
from tests.conftest import free_ports, wait_until
from tests.e2e.acme_support import NAME, PROFILE, REQUESTER, ChallengeServer, acme_stack, eab_key, on_crl
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


class TlsTerminator:
    """HTTPS on a loopback port in front of the gateway's HTTP port, as a TLS-terminating proxy stands in front of it
    in production (lego speaks ACME over HTTPS only, RFC 8555 6.1): TLS is ended here and the bytes are piped to the
    gateway unchanged; the gateway's ``ACME__EXTERNAL_URL`` is this port's https URL."""

    def __init__(self, port: int, upstream_port: int, certfile: Path, keyfile: Path) -> None:
        self.port, self.upstream_port = port, upstream_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certfile, keyfile)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tls-terminator", daemon=True)
        self.server: asyncio.Server | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            writer.close()
            up_writer.close()

    def __enter__(self) -> TlsTerminator:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", self.port, ssl=self.context), self.loop).result(10)
        return self

    async def _close(self) -> None:
        if self.server is not None:
            self.server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def live_https(kafka_settings: KafkaSettings, tmp_path: Path,
               ) -> Iterator[tuple[ProcessStack, ChallengeServer, SimServer, str, Path]]:
    """The ACME stack behind HTTPS: (stack, the http-01 answering server, the simulator, the directory URL, the CA
    that signed the HTTPS certificate)."""
    [https_port] = free_ports(1)
    ca, certfile, keyfile = _tls_files(tmp_path / "https")
    external = f"https://127.0.0.1:{https_port}"
    with acme_stack(kafka_settings, tmp_path, {"CERTRAIL_GATEWAY_ACME__EXTERNAL_URL": external}) as (stack, answering, sim), \
            TlsTerminator(https_port, stack.ports["gateway"], certfile, keyfile):
        yield stack, answering, sim, f"{external}/acme/directory", ca


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


def _lego(binary: Path, args: list[str], action: str, ca: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(binary), *args, action], capture_output=True, text=True, timeout=240, check=False,
                          env={**os.environ, "LEGO_CA_CERTIFICATES": str(ca)})
    assert done.returncode == 0, f"lego {action}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done


def _certificate(path: Path) -> x509.Certificate:
    """The leaf lego saved, checked: signed by the issuer lego saved beside it, for NAME only."""
    leaf, *chain = x509.load_pem_x509_certificates((path / "certificates" / f"{NAME}.crt").read_bytes())
    [issuer, *_] = x509.load_pem_x509_certificates((path / "certificates" / f"{NAME}.issuer.crt").read_bytes())
    assert chain and chain[0] == issuer, "the bundle carries the issuer after the leaf"
    leaf.verify_directly_issued_by(issuer)
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [NAME]
    return leaf


def _finalized(stack: ProcessStack) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = stack.rows(
        "SELECT request_id, requester FROM gateway_requests WHERE request_id LIKE 'acme-finalize-%' ORDER BY request_id")
    return rows


def _in_inventory(stack: ProcessStack, order_request_id: str, leaf: x509.Certificate) -> None:
    certificate_id = "acme-" + order_request_id.removeprefix("acme-finalize-")
    inventory = wait_until(lambda: stack.rows("SELECT serial, requester, profile FROM certificate_inventory "
                                              "WHERE certificate_id = ?", certificate_id),
                           "the certificate in the auditor's inventory", 60, interval_s=0.5)
    assert inventory == [(format(leaf.serial_number, "x"), REQUESTER, PROFILE)]


@pytest.mark.timeout(600)
def test_lego_obtains_renews_and_revokes_a_certificate(
        live_https: tuple[ProcessStack, ChallengeServer, SimServer, str, Path], lego: Path, tmp_path: Path) -> None:
    stack, answering, _, directory, ca = live_https
    port = answering.httpd.server_address[1]
    answering.__exit__()  # lego's own http-01 server answers on that port now
    created = eab_key(stack)
    path = tmp_path / "lego"
    args = ["--server", directory, "--email", "ops@acme.certrail.test", "--accept-tos",
            "--eab", "--eab.kid", created["key_id"], "--eab.hmac", created["hmac_key"], "--domains", NAME,
            "--http", "--http.address", f"127.0.0.1:{port}", "--path", str(path)]

    _lego(lego, args, "run", ca)
    first = _certificate(path)
    [(first_request, requester)] = _finalized(stack)
    assert requester == REQUESTER, "the finalize is the ACME account's request (the EAB key's requester)"
    _in_inventory(stack, first_request, first)

    # renewal: a new order and a new certificate with a new serial, by the same account
    _lego(lego, args, "renew", ca)
    second = _certificate(path)
    assert second.serial_number != first.serial_number
    finalized = _finalized(stack)
    assert len(finalized) == 2 and {r for _, r in finalized} == {REQUESTER}
    [(second_request, _)] = [row for row in finalized if row[0] != first_request]
    _in_inventory(stack, second_request, second)

    _lego(lego, args, "revoke", ca)
    serial = format(second.serial_number, "x")
    wait_until(lambda: stack.rows("SELECT status FROM gateway_issued_serials WHERE serial = ?", serial) == [("revoked",)],
               "the renewed certificate revoked in the gateway's projection", 90, interval_s=0.5)
    assert isinstance(wait_until(lambda: on_crl(second), "the serial on the CA's CRL", 60, interval_s=1),
                      x509.RevokedCertificate)
    assert on_crl(first) is None, "only the revoked certificate is on the CRL"
