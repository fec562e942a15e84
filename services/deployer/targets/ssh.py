"""The ssh target: the file target's versioned directory on a remote host, over SSH.

1. Connect with asyncssh, **host key checked** against the configured ``host_key``
   (one OpenSSH public key line, pinned) or ``known_hosts`` file; client key
   authentication with the target's ``client_key`` secret (stored encrypted). No
   agent, no ``~/.ssh/config``, no default keys: only what the target says.
2. deploy: upload ``versions/<serial>-<token>/{cert,chain,fullchain,privkey}.pem`` over
   SFTP with their modes set remotely, swap ``current`` atomically (``ln -sfn`` +
   ``mv -T`` on the remote side, ``previous`` kept), then run ``reload_command``
   (argv, sent shell-quoted with ``shlex.join``).
3. verify: read ``current/cert.pem`` (and the key, the modes) back over SFTP and parse
   them here; then, when ``probe_port`` is set, a TLS probe until the new serial is served.
4. rollback: if this bundle's version is current, point ``current`` back at
   ``previous``, reload, read the serial back (and probe) until it is the previous one.

Errors: no answer, refused connection, timeouts, a lost connection →
``TARGET_UNREACHABLE`` (transient: retried); a host key that does not match →
``INSTALL_FAILED`` ("host key mismatch", never retried), as are a refused client key,
a failed upload or a failing remote command; ``VERIFY_FAILED``; ``ROLLBACK_FAILED``.
The remote side needs SFTP, a POSIX shell, ``ln`` and GNU coreutils' ``mv -T``.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncssh

from services.common.contracts.errors import ErrorCode
from services.deployer.targets.base import Bundle, TargetError, certificate_serial
from services.deployer.targets.config import SshTargetConfig
from services.deployer.targets.files import check_installed, remove_served_in, retire_in
from services.deployer.targets.probe import probe_for_serial
from services.deployer.targets.sshfs import SftpFileSystem, quoted, unreachable
from services.deployer.targets.versioned import CERT_FILE, CHAIN_FILE, VersionedDirectory


@dataclass
class _Session:
    connection: asyncssh.SSHClientConnection
    directory: VersionedDirectory


class SshTarget:
    kind = "ssh"

    def __init__(self, name: str, config: SshTargetConfig, client_key: str) -> None:
        self.name = name
        self.config = config
        self._client_key = client_key
        self._uploading: set[str] = set()  # serials whose upload started (only those can need a rollback)

    @property
    def address(self) -> str:
        return f"{self.config.user}@{self.config.host}:{self.config.port}"

    # -- connection -----------------------------------------------------------------

    def _trusted_host_keys(self, code: ErrorCode) -> Any:
        if self.config.host_key is not None:
            return [asyncssh.import_public_key(self.config.host_key.strip())], [], []
        try:
            return asyncssh.read_known_hosts(self.config.known_hosts)  # type: ignore[arg-type]
        except (OSError, ValueError) as exc:
            raise TargetError(code, f"cannot read known_hosts {self.config.known_hosts}: {exc}") from None

    async def _connect(self, code: ErrorCode) -> asyncssh.SSHClientConnection:
        trusted = self._trusted_host_keys(code)
        try:
            key = asyncssh.import_private_key(self._client_key)
        except (asyncssh.KeyImportError, ValueError):
            raise TargetError(code, "the target's client_key secret is not a usable private key") from None
        try:
            return await asyncssh.connect(
                self.config.host, self.config.port, username=self.config.user, known_hosts=trusted,
                client_keys=[key], agent_path=None, config=[], password=None, preferred_auth="publickey",
                x509_trusted_certs=None, x509_trusted_cert_paths=[], connect_timeout=self.config.connect_timeout_s,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            pinned = "the pinned host_key" if self.config.host_key is not None else f"known_hosts {self.config.known_hosts}"
            raise TargetError(code, f"host key mismatch: {self.config.host}:{self.config.port} presented a host key that "
                                    f"does not match {pinned} ({exc.reason}); nothing was changed on the host. If its key "
                                    "changed legitimately, update the target's host key") from None
        except asyncssh.PermissionDenied as exc:
            raise TargetError(code, f"{self.address} refused the client key ({exc.reason})") from None
        except asyncssh.KeyExchangeFailed as exc:
            raise TargetError(code, f"SSH key exchange with {self.config.host}:{self.config.port} failed: {exc.reason} "
                                    "(does the host have a host key of the pinned type?)") from None
        except (OSError, asyncssh.Error) as exc:  # refused, no route, timeout, connection lost, not an SSH server
            detail = f"no answer within {self.config.connect_timeout_s:g}s" if isinstance(exc, TimeoutError) else \
                f"{type(exc).__name__}: {exc}"
            raise TargetError(ErrorCode.TARGET_UNREACHABLE, f"cannot connect to {self.address} ({detail})",
                              transient=True) from None

    @contextlib.asynccontextmanager
    async def _session(self, bundle: Bundle, code: ErrorCode) -> AsyncIterator[_Session]:
        connection = await self._connect(code)
        try:
            try:
                sftp = await connection.start_sftp_client()
            except (asyncssh.ChannelOpenError, asyncssh.SFTPError) as exc:
                raise TargetError(code, f"{self.address} offers no SFTP subsystem ({exc})") from None
            except (asyncssh.Error, OSError) as exc:
                raise unreachable(f"opening SFTP on {self.address}", exc) from None
            try:
                async def run(argv: Sequence[str], what: str) -> str:
                    return await self._run(connection, argv, what, None)

                fs = SftpFileSystem(sftp, run)
                root = self.config.directory_for(bundle.certificate_id)
                yield _Session(connection, VersionedDirectory(fs, root, **self.config.modes()))
            finally:
                sftp.exit()
        finally:
            connection.close()
            with contextlib.suppress(asyncssh.Error, OSError):
                await asyncio.wait_for(connection.wait_closed(), 5)

    async def _run(self, connection: asyncssh.SSHClientConnection, argv: Sequence[str], what: str,
                   code: ErrorCode | None) -> str:
        """Run ``argv`` remotely (shell-quoted). Failures: TargetError(``code``), or OSError when
        ``code`` is None (for the file operations); a lost connection is TARGET_UNREACHABLE."""
        timeout = self.config.command_timeout_s
        try:
            result = await connection.run(quoted(argv), check=False, timeout=timeout, stdin=asyncssh.DEVNULL)
        except asyncssh.TimeoutError:
            problem = f"{what}: {argv[0]!r} did not finish within {timeout:g}s on {self.config.host}"
        except asyncssh.ChannelOpenError as exc:
            problem = f"{what}: {self.config.host} refused to run a command ({exc.reason})"
        except (asyncssh.Error, OSError) as exc:
            raise unreachable(f"{what} on {self.config.host}", exc) from None
        else:
            if result.exit_status == 0:
                return str(result.stdout or "").strip()[-800:]
            output = (str(result.stderr or "") + str(result.stdout or "")).strip()[-800:]
            status = f"exited with {result.exit_status}" if result.exit_signal is None else f"was killed ({result.exit_signal[0]})"
            problem = f"{what}: {argv[0]!r} {status} on {self.config.host}: {output or '(no output)'}"
        if code is None:
            raise OSError(problem)
        raise TargetError(code, problem)

    async def _reload(self, session: _Session, code: ErrorCode) -> None:
        if self.config.reload_command:
            await self._run(session.connection, self.config.reload_command, "remote reload", code)

    async def _probe(self, certificate_pem: str, chain_pem: str, expected: str, code: ErrorCode) -> None:
        if self.config.probe_port is None:
            return
        await probe_for_serial(
            self.config.probe_host or self.config.host, self.config.probe_port, server_name=self.config.server_name,
            ca_file=self.config.probe_ca_file, certificate_pem=certificate_pem, chain_pem=chain_pem, expected=expected,
            timeout_s=self.config.probe_timeout_s, code=code,
        )

    # -- the interface ----------------------------------------------------------------

    async def deploy(self, bundle: Bundle) -> None:
        async with self._session(bundle, ErrorCode.INSTALL_FAILED) as session:
            self._uploading.add(bundle.serial)
            try:
                async with asyncio.timeout(self.config.command_timeout_s):
                    await session.directory.install(bundle)
            except TimeoutError:
                raise TargetError(ErrorCode.TARGET_UNREACHABLE, f"the upload to {self.address} did not finish within "
                                  f"{self.config.command_timeout_s:g}s", transient=True) from None
            await self._reload(session, ErrorCode.INSTALL_FAILED)

    async def verify(self, bundle: Bundle) -> str:
        async with self._session(bundle, ErrorCode.VERIFY_FAILED) as session:
            serial = await check_installed(session.directory, bundle)
            await self._probe(bundle.certificate_pem, bundle.chain_text, bundle.serial, ErrorCode.VERIFY_FAILED)
            await session.directory.prune()
        return serial

    async def rollback(self, bundle: Bundle) -> bool:
        if bundle.serial not in self._uploading:
            return False  # deploy never got to the host: nothing of this bundle is there
        async with self._session(bundle, ErrorCode.ROLLBACK_FAILED) as session:
            directory = session.directory
            current = await self._read(directory.current_version())
            previous = await self._read(directory.previous_version())
            if current is None or not posixpath.basename(current).startswith(f"{bundle.serial}-"):
                return False  # the swap never happened: what was current still is
            if previous is None or previous == current:
                return False
            certificate = (await self._read(directory.fs.read_file(directory.path(previous, CERT_FILE)))).decode()
            chain = (await self._read(directory.fs.read_file(directory.path(previous, CHAIN_FILE)))).decode()
            try:
                expected = certificate_serial(certificate)
            except ValueError as exc:
                raise TargetError(ErrorCode.ROLLBACK_FAILED, f"the previous certificate ({previous}) cannot be read: {exc}") \
                    from None
            await directory.roll_back()
            await self._reload(session, ErrorCode.ROLLBACK_FAILED)
            served = certificate_serial(await self._read(directory.read_current(CERT_FILE)))
            if served != expected:
                raise TargetError(ErrorCode.ROLLBACK_FAILED, f"after the rollback {directory.root}/current holds serial "
                                                             f"{served}, not the previous {expected}")
            await self._probe(certificate, chain, expected, ErrorCode.ROLLBACK_FAILED)
        return True

    async def retire_key(self, certificate_id: str, serial: str, public_key_sha256: str) -> bool:
        async with self._session(Bundle(certificate_id, serial, ""), ErrorCode.INSTALL_FAILED) as session:
            return await retire_in(session.directory, serial, public_key_sha256)

    async def remove_served(self, certificate_id: str, serial: str) -> bool:
        async with self._session(Bundle(certificate_id, serial, ""), ErrorCode.INSTALL_FAILED) as session:
            async def reload(code: ErrorCode) -> None:
                await self._reload(session, code)
            return await remove_served_in(session.directory, serial, reload)

    async def _read(self, operation: Any) -> Any:
        try:
            return await operation
        except OSError as exc:
            raise TargetError(ErrorCode.ROLLBACK_FAILED, f"reading the remote versions failed: {exc.strerror or exc}") from None
