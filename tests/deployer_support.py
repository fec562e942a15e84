"""Test helpers for the deployer: a small two-level CA (cryptography), and real nginx and
OpenSSH servers started on free loopback ports from temporary configs (non-daemon
processes, stopped by the tests). nginx and sshd come from Debian's packages
(scripts/deployer_deps.sh); without them a test is skipped, except under CI, where
it fails."""

from __future__ import annotations

import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.deployer.targets.base import Bundle
from tests.conftest import free_ports, wait_until

NGINX = "/usr/sbin/nginx"
SSHD = "/usr/sbin/sshd"


def require_binary(path: str, package: str) -> str:
    found = path if os.access(path, os.X_OK) else shutil.which(os.path.basename(path))
    if found:
        return found
    message = f"{path} is missing: run `sudo bash scripts/deployer_deps.sh` (installs {package} from Debian's packages)"
    if os.environ.get("CI"):
        pytest.fail(message + " -- CI must run these tests")
    pytest.skip(message)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class MiniCA:
    """A root and an issuing CA; issues leaf certificates with chosen serials."""

    root_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    issuing_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        now = datetime.now(UTC) - timedelta(minutes=5)
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certrail test root")])
        self.root = (
            x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(self.root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.root_key, hashes.SHA256())
        )
        issuing_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certrail test issuing CA")])
        self.issuing = (
            x509.CertificateBuilder().subject_name(issuing_name).issuer_name(root_name)
            .public_key(self.issuing_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.root_key, hashes.SHA256())
        )
        self._next_serial = 0x1000

    @property
    def chain(self) -> tuple[str, ...]:
        return (pem(self.issuing),)

    def leaf(self, names: list[str], key: ec.EllipticCurvePrivateKey | None = None, serial: int | None = None,
             ips: tuple[str, ...] = ()) -> tuple[str, ec.EllipticCurvePrivateKey]:
        key = key or ec.generate_private_key(ec.SECP256R1())
        if serial is None:
            self._next_serial += 1
            serial = self._next_serial
        now = datetime.now(UTC) - timedelta(minutes=5)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.issuing.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now).not_valid_after(now + timedelta(days=10))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.issuing_key, hashes.SHA256())
        )
        return pem(cert), key

    def bundle(self, certificate_id: str, names: list[str], *, with_key: bool = True,
               key: ec.EllipticCurvePrivateKey | None = None) -> Bundle:
        certificate, key = self.leaf(names, key)
        serial = format(x509.load_pem_x509_certificate(certificate.encode()).serial_number, "x")
        return Bundle(certificate_id, serial, certificate, self.chain, key_pem(key) if with_key else None)

    def write_root(self, path: Path) -> Path:
        path.write_text(pem(self.root))
        return path


def wait_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path, timeout_s: float = 20.0) -> None:
    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(listening, f"{what} to listen on {port}", timeout_s, interval_s=0.05)


def stop_process(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(15)


@dataclass
class NginxServer:
    """A real nginx (foreground master) serving TLS on a free loopback port with the
    certificate from ``<cert_dir>/current/fullchain.pem``."""

    tmp: Path
    cert_dir: Path
    server_name: str
    key_path: str | None = None  # None: <cert_dir>/current/privkey.pem (bot-held)
    port: int = field(default_factory=lambda: free_ports(1)[0])
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.binary = require_binary(NGINX, "nginx-light")
        self.prefix = self.tmp / "nginx"
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.config = self.prefix / "nginx.conf"
        self.log = self.prefix / "error.log"
        key = self.key_path or f"{self.cert_dir}/current/privkey.pem"
        temp_paths = "\n".join(f"    {name}_temp_path {self.prefix}/{name};" for name in
                               ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        self.config.write_text(f"""
worker_processes 1;
pid {self.prefix}/nginx.pid;
error_log {self.log} info;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp_paths}
    server {{
        listen 127.0.0.1:{self.port} ssl;
        server_name {self.server_name};
        ssl_certificate {self.cert_dir}/current/fullchain.pem;
        ssl_certificate_key {key};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")

    @property
    def args(self) -> list[str]:
        return ["-p", str(self.prefix), "-e", str(self.log)]

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - the test's own nginx and config
                [self.binary, *self.args, "-c", str(self.config), "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT
            )
        wait_port(self.port, self.process, "nginx", self.log)

    def stop(self) -> None:
        stop_process(self.process, signal.SIGQUIT)


@dataclass
class SshServer:
    """A real OpenSSH server (``sshd -D -e``, not a daemon) on a free loopback port, with its
    own host key and an ``authorized_keys`` holding a client key, both generated here. Only
    the current user may log in (as root: ``PermitRootLogin prohibit-password``), by key."""

    tmp: Path
    port: int = field(default_factory=lambda: free_ports(1)[0])
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        import asyncssh  # only the ssh tests need it

        self.binary = require_binary(SSHD, "openssh-server")
        self.dir = self.tmp / "sshd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.user = pwd.getpwuid(os.getuid()).pw_name
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.host_key_path = self.dir / "ssh_host_ed25519_key"
        self.host_key_path.write_bytes(host_key.export_private_key())
        self.host_key_path.chmod(0o600)
        #: the server's public host key, one OpenSSH line (what a target pins)
        self.host_key_line = host_key.export_public_key().decode().strip()
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        #: the client's private key (OpenSSH format): the target's client_key secret
        self.client_key = client_key.export_private_key().decode()
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_bytes(client_key.export_public_key())
        self.authorized_keys.chmod(0o600)
        self.log = self.dir / "sshd.log"
        self.config = self.dir / "sshd_config"
        self.config.write_text(f"""
Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key_path}
PidFile {self.dir / "sshd.pid"}
AuthorizedKeysFile {self.authorized_keys}
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {self.user}
UseDNS no
PrintMotd no
LogLevel VERBOSE
Subsystem sftp internal-sftp
""")

    def known_hosts_line(self) -> str:
        """The host key as a known_hosts line for this address (non-default port: ``[host]:port``)."""
        return f"[127.0.0.1]:{self.port} {self.host_key_line}\n"

    def start(self) -> None:
        if os.geteuid() == 0:
            # sshd started by root chroots its unprivileged children into this (compiled-in) empty
            # directory; Debian's service unit creates it at boot, and no service runs here
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - the test's own sshd and config
                [self.binary, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_port(self.port, self.process, "sshd", self.log)

    def stop(self) -> None:
        stop_process(self.process)
