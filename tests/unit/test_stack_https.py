"""`certrail up --https` without starting anything: which gateway instance listens on which HTTPS port, when the
deployed certificate counts as usable (services/cli/demo.py ``usable_gateway_tls``), and what is printed: the HTTPS
ACME directory and the trust bundle once the gateway serves certrail's own certificate, the HTTP one before."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from rich.console import Console

from services.cli import stack_cmd
from services.cli.demo import gateway_tls_files, usable_gateway_tls
from services.common.stack import Stack, StackError
from tests.unit.test_stack_endpoints import _Kafka

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _deploy(var_dir: Path, not_after: datetime) -> None:
    """A self-signed stand-in for the deployed gateway certificate, its key and the trust bundle."""
    files = gateway_tls_files(var_dir)
    files.cert_file.parent.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_after - timedelta(days=90))
            .not_valid_after(not_after).sign(key, hashes.SHA256()))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    files.trust_bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _printed(stack: Stack) -> str:
    console = Console(record=True, width=400)
    stack_cmd._print_endpoints(console, stack, _Kafka(stack.var_dir))  # type: ignore[arg-type]
    return console.export_text()


def test_each_gateway_instance_gets_its_https_port_and_the_port_is_checked(tmp_path: Path) -> None:
    stack = Stack(var_dir=tmp_path, instances=2, gateway_https_port=9446)
    gateways = stack.instances_of("gateway")
    assert [g.https_port for g in gateways] == [9446, 9456]
    assert gateways[0].ports() == [8080, 9446]
    assert all(s.https_port is None for s in stack.services if s.name != "gateway")
    assert all(g.https_url is None for g in gateways), "no certificate configured yet: HTTP only"
    assert Stack(var_dir=tmp_path).instances_of("gateway")[0].ports() == [8080]


def test_a_deployed_certificate_is_usable_until_a_day_before_it_expires(tmp_path: Path) -> None:
    assert usable_gateway_tls(tmp_path, NOW) is None
    _deploy(tmp_path, NOW + timedelta(days=30))
    assert usable_gateway_tls(tmp_path, NOW) == gateway_tls_files(tmp_path)
    assert usable_gateway_tls(tmp_path, NOW + timedelta(days=29, hours=1)) is None
    gateway_tls_files(tmp_path).trust_bundle.unlink()
    assert usable_gateway_tls(tmp_path, NOW) is None, "no trust bundle to print"


def test_the_https_acme_directory_and_the_bundle_are_printed_once_served(tmp_path: Path) -> None:
    before = _printed(Stack(var_dir=tmp_path, gateway_https_port=9446))
    assert "ACME directory: http://127.0.0.1:8080/acme/directory" in before and "trust bundle" not in before

    _deploy(tmp_path, datetime.now(UTC) + timedelta(days=30))
    files = gateway_tls_files(tmp_path)
    stack = Stack(var_dir=tmp_path, gateway_https_port=9446,
                  service_env={"gateway": stack_cmd.gateway_tls_env(files)})
    printed = _printed(stack)
    assert "ACME directory: https://127.0.0.1:9446/acme/directory" in printed
    assert f"ACME trust bundle: {files.trust_bundle}" in printed
    assert "HTTP API: http://127.0.0.1:8080/v1" in printed


class _Answers(http.server.BaseHTTPRequestHandler):
    codes: list[int] = []  # answered in turn; the last one thereafter

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        code = self.codes.pop(0) if len(self.codes) > 1 else self.codes[0]
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass


@contextmanager
def _https_server(tmp_path: Path, codes: list[int]) -> Iterator[tuple[str, Path]]:
    """A loopback HTTPS server with the stand-in certificate, answering ``codes`` in turn; its URL and bundle."""
    _deploy(tmp_path, NOW + timedelta(days=30))
    files = gateway_tls_files(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert_file, files.key_file)
    handler = type("Handler", (_Answers,), {"codes": list(codes)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}/acme/directory", files.trust_bundle
    finally:
        server.shutdown()
        server.server_close()


def test_the_https_wait_returns_once_the_directory_answers_and_names_the_last_problem_at_its_deadline(
        tmp_path: Path) -> None:
    with _https_server(tmp_path / "up", [503, 503, 200]) as (url, bundle):
        stack_cmd._wait_https(url, bundle, timeout_s=10)  # two refusals, then the directory
    with _https_server(tmp_path / "down", [503]) as (url, bundle), pytest.raises(StackError) as refused:
        stack_cmd._wait_https(url, bundle, timeout_s=0.5)
    assert str(refused.value) == f"{url} does not answer over HTTPS verified against {bundle}: HTTP 503"
