"""Probing a target before it is stored: can the deployer reach it at all? Per kind, without changing
anything on the target:

- file: the directory exists (or the nearest existing parent does) and the deployer may write there;
- nginx: the same, and the nginx binary and its configuration file exist;
- webhook: a TLS handshake with the receiver, verified (the configured ``ca_file`` or system trust);
- ssh: an SSH login with the pinned host key and the client key (the ssh target's own connection).

A failure is a `TargetError`: TARGET_UNREACHABLE (no answer), INSTALL_FAILED (it answered no)."""

from __future__ import annotations

import asyncio
import os
import ssl
from urllib.parse import urlsplit

from services.common.contracts.errors import ErrorCode
from services.deployer.store import TargetSpec
from services.deployer.targets.base import TargetError
from services.deployer.targets.config import TargetKind
from services.deployer.targets.ssh import SshTarget


def _writable_directory(path: str) -> None:
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise TargetError(ErrorCode.INSTALL_FAILED, f"{existing} is not a directory (target dir {path})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TargetError(ErrorCode.INSTALL_FAILED, f"the deployer may not write in {existing} (target dir {path})")


def _file(path: str, what: str, executable: bool = False) -> None:
    if not os.path.isfile(path) or (executable and not os.access(path, os.X_OK)):
        raise TargetError(ErrorCode.INSTALL_FAILED, f"{what} {path} is not {'an executable' if executable else 'a'} file")


async def _tls_handshake(url: str, ca_file: str | None, timeout_s: float) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except OSError as exc:
        raise TargetError(ErrorCode.INSTALL_FAILED, f"cannot read ca_file {ca_file}: {exc.strerror}") from None
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context, server_hostname=host), timeout_s)
    except ssl.SSLCertVerificationError as exc:
        raise TargetError(ErrorCode.INSTALL_FAILED, f"{host}:{port} presents a certificate that does not verify "
                                                    f"({exc.verify_message})") from None
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        raise TargetError(ErrorCode.TARGET_UNREACHABLE, f"no TLS answer from {host}:{port} ({type(exc).__name__})",
                          transient=True) from None
    writer.close()
    try:
        await writer.wait_closed()
    except (OSError, ssl.SSLError):
        pass


async def probe_target(spec: TargetSpec) -> None:
    """Raise `TargetError` unless ``spec`` (validated, secrets included) is reachable."""
    config = spec.config
    if spec.kind is TargetKind.FILE:
        _writable_directory(config.dir)
    elif spec.kind is TargetKind.NGINX:
        _writable_directory(config.dir)
        _file(config.nginx_binary, "nginx_binary", executable=True)
        _file(config.nginx_config, "nginx_config")
    elif spec.kind is TargetKind.WEBHOOK:
        await _tls_handshake(config.url, config.ca_file, config.timeout_s)
    elif spec.kind is TargetKind.SSH:
        target = SshTarget(spec.name, config, spec.secrets["client_key"])
        connection = await target._connect(ErrorCode.INSTALL_FAILED)  # the target's own checked login
        connection.close()
        await connection.wait_closed()
