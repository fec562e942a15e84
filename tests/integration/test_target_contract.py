"""Every real target kind against a real system, held to the contract of tests/target_contract.py:
file (this machine's disk), nginx (Debian's nginx serving TLS on loopback, read back by a TLS
handshake), webhook (an HTTPS receiver on loopback that installs only a body with a valid,
fresh HMAC) and ssh (Debian's OpenSSH server on loopback, host key pinned). file and nginx run
with bot-held keys and with requester-held ones (no key installed; nginx reads the service's own
key), the webhook with the key withheld and sent (include_private_key), ssh with bot-held keys
(requester-held over SSH: tests/integration/test_deployer_ssh.py; each SSH session costs a key
exchange on a 2-CPU machine).

The system refuses a bundle the way a real one does: the service's reload command exits non-zero
(file, nginx, ssh), the receiver answers 422 (webhook). Storage that cannot be written is a
read-only (as root: immutable) versions directory. nginx and sshd come from
scripts/deployer_deps.sh; without them their kinds are skipped (under CI they fail)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from pathlib import Path

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.deployer.targets.base import Bundle
from services.deployer.targets.config import FileTargetConfig, NginxTargetConfig, SshTargetConfig, WebhookTargetConfig
from services.deployer.targets.files import FileTarget
from services.deployer.targets.nginx import NginxTarget
from services.deployer.targets.probe import probe_context
from services.deployer.targets.ssh import SshTarget
from services.deployer.targets.webhook import WebhookTarget
from tests.conftest import free_ports, poll_until
from tests.deployer_support import MiniCA, NginxServer, SshServer, key_pem
from tests.target_contract import (
    CERTIFICATE_ID,
    NAME,
    Installed,
    RemoteTargetContract,
    TargetContract,
    WebhookReceiver,
    serve_receiver,
    split_pem,
)

# the service's reload: refuses a version whose serial is listed in $1 (as `nginx -t` refuses a
# certificate), then runs the rest of its arguments, if any (the real reload)
REFUSING_RELOAD = """current=$(readlink "$2")
while read -r serial; do
  case "$current" in "versions/$serial-"*) echo "the service refuses $current" >&2; exit 3;; esac
done < "$1"
shift 2
if [ $# -gt 0 ]; then exec "$@"; fi
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _make_read_only(path: Path) -> Callable[[], None]:
    """No new entry can be made in ``path``, even by root (immutable); returns the undo."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    def chattr(flag: str) -> None:
        subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)  # noqa: S603, S607

    chattr("+i")
    return lambda: chattr("-i")


class DirectoryDriver:
    """The versioned directory on this machine's disk (the file kind; nginx and ssh build on it)."""

    kind = "file"
    carries_key = True
    secrets: tuple[str, ...] = ()

    def __init__(self, tmp: Path, *, bot_held: bool) -> None:
        self.tmp = tmp
        self.root = tmp / "certs"
        self.bot_held = bot_held
        self.ca = MiniCA()
        self.service_key = ec.generate_private_key(ec.SECP256R1())  # a requester-held key, kept by the service
        self.refused = tmp / "refused-serials"
        self.refused.write_text("")
        self.not_a_directory = tmp / "a-file"
        self.not_a_directory.write_text("not a directory\n")
        self.baseline: Bundle | None = None
        self._undo: list[Callable[[], None]] = []

    async def start(self) -> None:
        return None

    def stop(self) -> None:
        while self._undo:
            self._undo.pop()()

    def bundle(self) -> Bundle:
        if self.bot_held:
            return self.ca.bundle(CERTIFICATE_ID, [NAME])
        return self.ca.bundle(CERTIFICATE_ID, [NAME], with_key=False, key=self.service_key)

    def reload_command(self, *then: str) -> list[str]:
        return ["sh", "-c", REFUSING_RELOAD, "reload", str(self.refused), str(self.root / "current"), *then]

    def target(self, previous: Bundle | None, *, root: Path | None = None) -> FileTarget:
        return FileTarget("contract-file", FileTargetConfig(dir=str(root or self.root), reload_command=self.reload_command()))

    def misconfigured(self, previous: Bundle | None) -> FileTarget:
        return self.target(previous, root=self.not_a_directory / "certs")

    def refuse(self, bundle: Bundle) -> None:
        with self.refused.open("a") as handle:
            handle.write(bundle.serial + "\n")

    def fail_before_install(self, bundle: Bundle) -> None:
        self._undo.append(_make_read_only(self.root / "versions"))

    async def observed(self) -> Installed | None:
        current = self.root / "current"
        if not current.exists():
            return None
        certificate = (current / "cert.pem").read_text()
        chain = (current / "chain.pem").read_text()
        assert split_pem((current / "fullchain.pem").read_text()) == split_pem(certificate) + split_pem(chain)
        assert {_mode(current / name) for name in ("cert.pem", "chain.pem", "fullchain.pem")} == {0o644}
        key = current / "privkey.pem"
        if key.exists():
            assert _mode(key) == 0o600
        assert not list(self.root.glob("**/*.tmp")), "a temporary file was left behind"
        return Installed(certificate.strip(), split_pem(chain), key.read_bytes() if key.exists() else None)


class NginxDriver(DirectoryDriver):
    """A real nginx serving ``<dir>/current/fullchain.pem``; what it serves is read by a TLS handshake.
    It serves a certificate from before certrail (the baseline); requester-held: its key file is
    the service's own, outside the versioned directory."""

    kind = "nginx"

    def __init__(self, tmp: Path, *, bot_held: bool) -> None:
        super().__init__(tmp, bot_held=bot_held)
        key_path = None
        if not bot_held:
            key_path = tmp / "service.key"
            key_path.write_bytes(key_pem(self.service_key))
        self.server = NginxServer(tmp, self.root, NAME, key_path=None if key_path is None else str(key_path))
        self.trust = probe_context(cafile=str(self.ca.write_root(tmp / "root.pem")))

    async def start(self) -> None:
        self.baseline = self.bundle()
        await super().target(None).directory(self.baseline).install(self.baseline)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        super().stop()

    def target(self, previous: Bundle | None, *, root: Path | None = None) -> NginxTarget:  # type: ignore[override]
        server = self.server
        reload = self.reload_command(server.binary, *server.args, "-c", str(server.config), "-s", "reload")
        return NginxTarget("contract-nginx", NginxTargetConfig(
            dir=str(root or self.root), nginx_binary=server.binary, nginx_config=str(server.config), nginx_args=server.args,
            reload_command=reload, probe_port=server.port, server_name=NAME, probe_timeout_s=8.0,
        ))

    async def _served(self) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port, ssl=self.trust, server_hostname=NAME)
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()
            await writer.wait_closed()
        return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode().strip()

    async def observed(self) -> Installed | None:
        files = await super().observed()
        assert files is not None, "nginx serves from <dir>/current, which is gone"

        async def serving_the_files() -> bool:  # old workers may answer a few connections after a reload
            return await self._served() == files.certificate

        await poll_until(serving_the_files, lambda: f"nginx to serve {self.root}/current/cert.pem", 10.0)
        return Installed(await self._served(), files.chain, files.private_key)


class SshDriver(DirectoryDriver):
    """A real sshd on loopback: the "remote" directory is on this machine, read back from the disk."""

    kind = "ssh"

    def __init__(self, tmp: Path, *, bot_held: bool) -> None:
        super().__init__(tmp, bot_held=bot_held)
        self.server = SshServer(tmp)
        self.secrets = (self.server.client_key,)

    async def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        super().stop()

    def target(self, previous: Bundle | None, *, root: Path | None = None, port: int | None = None,  # type: ignore[override]
               host_key: str | None = None) -> SshTarget:
        return SshTarget("contract-ssh", SshTargetConfig(
            host="127.0.0.1", port=port or self.server.port, user=self.server.user, host_key=host_key or self.server.host_key_line,
            dir=str(root or self.root), reload_command=self.reload_command(), connect_timeout_s=5.0, command_timeout_s=20.0,
        ), self.server.client_key)

    def misconfigured(self, previous: Bundle | None) -> SshTarget:  # type: ignore[override]
        impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
        return self.target(previous, host_key=impostor)

    def unreachable(self, previous: Bundle | None) -> SshTarget:
        return self.target(previous, port=free_ports(1)[0])


WEBHOOK_SECRET = "contract-webhook-secret-" + "s" * 24


class WebhookDriver:
    kind = "webhook"
    baseline: Bundle | None = None
    secrets = (WEBHOOK_SECRET,)

    def __init__(self, tmp: Path, *, include_private_key: bool) -> None:
        self.tmp = tmp
        self.ca = MiniCA()
        self.carries_key = include_private_key
        self.receiver = WebhookReceiver(WEBHOOK_SECRET.encode())
        self.root = self.ca.write_root(tmp / "receiver-root.pem")
        self._serving = ExitStack()
        self._port: int | None = None

    async def start(self) -> None:
        self._port = self._serving.enter_context(serve_receiver(self.receiver, self.ca, self.tmp))

    def stop(self) -> None:
        self._serving.close()

    def bundle(self) -> Bundle:
        return self.ca.bundle(CERTIFICATE_ID, [NAME])  # bot-held: the key reaches the receiver only when configured

    def target(self, previous: Bundle | None, *, port: int | None = None, secret: str = WEBHOOK_SECRET) -> WebhookTarget:
        assert self._port is not None
        url = f"https://127.0.0.1:{port or self._port}/certrail"
        config = WebhookTargetConfig(url=url, ca_file=str(self.root), attempts=2, backoff_initial_s=0.01, backoff_max_s=0.02,
                                     timeout_s=5.0, include_private_key=self.carries_key)
        return WebhookTarget("contract-webhook", config, secret, previous=previous)

    def misconfigured(self, previous: Bundle | None) -> WebhookTarget:
        return self.target(previous, secret="another-secret-" + "o" * 32)

    def unreachable(self, previous: Bundle | None) -> WebhookTarget:
        return self.target(previous, port=free_ports(1)[0])

    def refuse(self, bundle: Bundle) -> None:
        self.receiver.refused_serials.add(bundle.serial)

    def fail_before_install(self, bundle: Bundle) -> None:
        self.refuse(bundle)  # a receiver that answers no installs nothing

    async def observed(self) -> Installed | None:
        body = self.receiver.installed
        if body is None:
            return None
        key = body.get("private_key")
        return Installed(body["certificate"].strip(), tuple(p.strip() for p in body["chain"]),
                         None if key is None else key.encode())


Driver = DirectoryDriver | WebhookDriver

VARIANTS: dict[str, Callable[[Path], Driver]] = {
    "file-bot-held": lambda tmp: DirectoryDriver(tmp, bot_held=True),
    "file-requester-held": lambda tmp: DirectoryDriver(tmp, bot_held=False),
    "nginx-bot-held": lambda tmp: NginxDriver(tmp, bot_held=True),
    "nginx-requester-held": lambda tmp: NginxDriver(tmp, bot_held=False),
    "webhook-key-withheld": lambda tmp: WebhookDriver(tmp, include_private_key=False),
    "webhook-key-sent": lambda tmp: WebhookDriver(tmp, include_private_key=True),
    "ssh-bot-held": lambda tmp: SshDriver(tmp, bot_held=True),
}
REMOTE = ["webhook-key-withheld", "ssh-bot-held"]


async def _running(variant: str, tmp: Path) -> AsyncIterator[Driver]:
    driver = VARIANTS[variant](tmp)  # skips the kind when its server's binary is missing
    try:
        await driver.start()
        yield driver
    finally:
        driver.stop()


class TestTargetContract(TargetContract):
    @pytest.fixture(params=list(VARIANTS))
    async def driver(self, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Driver]:
        async for driver in _running(request.param, tmp_path):
            yield driver


class TestRemoteTargetContract(RemoteTargetContract):
    @pytest.fixture(params=REMOTE)
    async def driver(self, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Driver]:
        async for driver in _running(request.param, tmp_path):
            yield driver
