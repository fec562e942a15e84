"""The HTTPS listener beside a service's HTTP port (services/common/tls_listener.py, services/common/runner.py): the
runner's own two uvicorn servers on free loopback ports, a real TLS handshake with verification on (the ssl module,
trusting a throwaway CA), the served certificate read again when its files are replaced, a broken pair at reload
keeping the previous certificate (a warning), and the startup errors naming the file, never its content."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.common.runner import https_server, run_service, serve_beside
from services.common.service_app import ServiceSettings
from services.common.tls_listener import ServingCertificate, TlsFileError, TlsListenerSettings
from tests.conftest import free_ports, wait_until

pytestmark = pytest.mark.integration


@dataclass
class Ca:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    pem: Path

    def issue(self, directory: Path, *, name: str = "127.0.0.1") -> tuple[bytes, bytes, int]:
        """A server certificate for 127.0.0.1 and localhost: (chain PEM, key PEM, serial)."""
        now = datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self.certificate.subject).public_key(key.public_key()).serial_number(serial)
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                            x509.DNSName("localhost")]), critical=False)
                .sign(self.key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return leaf.public_bytes(serialization.Encoding.PEM), key_pem, serial


def make_ca(directory: Path) -> Ca:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certrail test TLS CA")])
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                   .not_valid_after(now + timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .sign(key, hashes.SHA256()))
    pem = directory / "ca.pem"
    pem.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return Ca(key, certificate, pem)


def replace(path: Path, content: bytes) -> None:
    """Write ``content`` beside ``path`` and rename it over (as a deployer does): a new inode."""
    staged = path.with_suffix(".new")
    staged.write_bytes(content)
    os.replace(staged, path)


def deploy(ca: Ca, cert_file: Path, key_file: Path) -> int:
    chain, key, serial = ca.issue(cert_file.parent)
    replace(key_file, key)
    replace(cert_file, chain)
    return serial


def served_serial(port: int, ca: Ca, *, maximum: ssl.TLSVersion | None = None) -> int:
    """The serial of the certificate a new TLS connection to ``port`` is served, verified against ``ca``."""
    context = ssl.create_default_context(cafile=str(ca.pem))
    if maximum is not None:
        context.maximum_version = maximum
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def where(request: Request) -> JSONResponse:
    server = request.scope.get("server")
    return JSONResponse({"scheme": request.url.scheme, "port": server[1] if server else None})


@dataclass
class Served:
    http_port: int
    https_port: int
    ca: Ca
    cert_file: Path
    key_file: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A small ASGI app served by the runner's two servers: HTTP on one free port, HTTPS on another."""
    ca = make_ca(tmp_path / "ca")
    cert_file, key_file = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    cert_file.parent.mkdir()
    deploy(ca, cert_file, key_file)
    http_port, https_port = free_ports(2)
    app = Starlette(routes=[Route("/where", where)])
    settings = ServiceSettings(http_port=http_port, log_level="WARNING")
    tls = TlsListenerSettings(cert_file=cert_file, key_file=key_file, port=https_port)
    main = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=http_port, log_level="warning", lifespan="off"))
    beside = https_server(app, settings, tls)  # type: ignore[arg-type]  # any ASGI app serves
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete,
                              args=(serve_beside(main, beside, beside.config.bind_socket()),), daemon=True)
    thread.start()
    try:
        wait_until(lambda: beside.started, "the HTTPS listener started", 20, interval_s=0.05)
        yield Served(http_port, https_port, ca, cert_file, key_file)
    finally:
        main.should_exit = True
        thread.join(20)
        loop.close()


def test_the_same_app_answers_over_http_and_over_verified_https(served: Served) -> None:
    plain = httpx.get(f"http://127.0.0.1:{served.http_port}/where", timeout=10)
    assert plain.json() == {"scheme": "http", "port": served.http_port}
    context = ssl.create_default_context(cafile=str(served.ca.pem))
    for host in ("127.0.0.1", "localhost"):
        secure = httpx.get(f"https://{host}:{served.https_port}/where", timeout=10, verify=context)
        assert secure.json() == {"scheme": "https", "port": served.https_port}
    with pytest.raises(httpx.ConnectError):  # verification stays on: not trusted without the CA
        httpx.get(f"https://127.0.0.1:{served.https_port}/where", timeout=10)


def test_tls_1_2_is_the_floor(served: Served) -> None:
    served_serial(served.https_port, served.ca, maximum=ssl.TLSVersion.TLSv1_2)  # a TLS 1.2 client is served
    certificate = ServingCertificate(served.cert_file, served.key_file)
    assert certificate.listening.minimum_version == ssl.TLSVersion.TLSv1_2
    assert certificate.current.minimum_version == ssl.TLSVersion.TLSv1_2


def test_a_replaced_certificate_is_served_to_new_connections_without_a_restart(served: Served,
                                                                                 caplog: pytest.LogCaptureFixture) -> None:
    first = served_serial(served.https_port, served.ca)
    with socket.create_connection(("127.0.0.1", served.https_port), timeout=10) as raw, \
            ssl.create_default_context(cafile=str(served.ca.pem)).wrap_socket(raw, server_hostname="127.0.0.1"):
        renewed = deploy(served.ca, served.cert_file, served.key_file)  # while a connection is open
        assert renewed != first
        assert served_serial(served.https_port, served.ca) == renewed

    # a broken pair (the key of another certificate) keeps the renewed one, with one warning naming the files
    caplog.set_level(logging.WARNING, logger="services.common.tls_listener")
    _, other_key, _ = served.ca.issue(served.cert_file.parent)
    replace(served.key_file, other_key)
    assert served_serial(served.https_port, served.ca) == renewed
    assert served_serial(served.https_port, served.ca) == renewed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(served.key_file) in warnings[0] and "PRIVATE KEY" not in warnings[0]

    # a file gone (mid-replacement) keeps it too; the next good pair is served
    served.cert_file.unlink()
    assert served_serial(served.https_port, served.ca) == renewed
    third = deploy(served.ca, served.cert_file, served.key_file)
    assert served_serial(served.https_port, served.ca) == third


def test_a_certificate_rewritten_in_place_is_served_too(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    chain, key, _ = ca.issue(tmp_path)
    cert_file.write_bytes(chain)
    key_file.write_bytes(key)
    certificate = ServingCertificate(cert_file, key_file)
    before = certificate.current
    assert certificate.current is before  # unchanged files: the same context
    chain, key, serial = ca.issue(tmp_path)
    key_file.write_bytes(key)  # same inode, new content
    cert_file.write_bytes(chain)
    os.utime(cert_file, ns=(os.stat(cert_file).st_atime_ns, os.stat(cert_file).st_mtime_ns + 1_000_000))
    assert certificate.current is not before


def test_unusable_files_at_start_are_errors_naming_the_file_not_its_content(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    chain, key, _ = ca.issue(tmp_path)
    _, other_key, _ = ca.issue(tmp_path)
    cert_file, key_file, wrong_key, junk = (tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "other.pem",
                                           tmp_path / "junk.pem")
    cert_file.write_bytes(chain)
    key_file.write_bytes(key)
    wrong_key.write_bytes(other_key)
    junk.write_bytes(b"not a certificate\n")
    cases = {
        "missing certificate": (tmp_path / "absent.pem", key_file, "absent.pem"),
        "missing key": (cert_file, tmp_path / "absent.key", "absent.key"),
        "not a certificate": (junk, key_file, "junk.pem"),
        "not a key": (cert_file, cert_file, "cert.pem"),
        "a key of another certificate": (cert_file, wrong_key, "other.pem"),
    }
    for case, (cert, private, named) in cases.items():
        with pytest.raises(TlsFileError) as raised:
            ServingCertificate(cert, private)
        message = str(raised.value)
        assert named in message, case
        assert "BEGIN" not in message and key.decode().splitlines()[1] not in message, case


def test_settings_need_both_files_or_neither(tmp_path: Path) -> None:
    assert not TlsListenerSettings().enabled
    assert TlsListenerSettings(cert_file=tmp_path / "c", key_file=tmp_path / "k").enabled
    with pytest.raises(ValueError, match="both"):
        TlsListenerSettings(cert_file=tmp_path / "c")


def test_the_service_does_not_start_with_an_unusable_certificate_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "cert.pem"
    tls = TlsListenerSettings(cert_file=missing, key_file=tmp_path / "key.pem", port=free_ports(1)[0])
    app = Starlette(routes=[Route("/where", where)])
    with pytest.raises(SystemExit) as stopped:
        run_service(app, ServiceSettings(http_port=free_ports(1)[0], log_level="WARNING"), tls)  # type: ignore[arg-type]
    assert str(missing) in str(stopped.value.code) and "cannot start the HTTPS listener" in str(stopped.value.code)
