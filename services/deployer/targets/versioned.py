"""Versioned certificate directories, swapped atomically by a symlink.

Layout of a target directory (local for file/nginx targets, remote for ssh)::

    <dir>/versions/<serial>-<token>/cert.pem        the leaf       (cert_mode, default 0644)
                                   /chain.pem       the CA chain   (cert_mode)
                                   /fullchain.pem   leaf + chain   (cert_mode)
                                   /privkey.pem     bot-held key   (key_mode, default 0600)
    <dir>/current  -> versions/<...>    what the service reads (configure it to read current/...)
    <dir>/previous -> versions/<...>    what rollback puts back

Installing writes a new version directory (each file written to a temporary
name, synced, then renamed), then points ``previous`` at the old ``current``
and swaps ``current`` with one rename of a new symlink over it: a reader sees
the old set of files or the new set, never a mix. Rollback swaps ``current``
back to ``previous``. Versions other than current and previous are pruned
after a successful install. The file operations go through `FileSystem`, so
the same logic runs locally and over SFTP.
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Sequence
from typing import Protocol

from cryptography import x509

from services.common.contracts.errors import ErrorCode
from services.deployer.targets.base import Bundle, TargetError, public_key_sha256

CERT_FILE = "cert.pem"
CHAIN_FILE = "chain.pem"
FULLCHAIN_FILE = "fullchain.pem"
KEY_FILE = "privkey.pem"
VERSIONS = "versions"
CURRENT = "current"
PREVIOUS = "previous"


class FileSystem(Protocol):
    """The few file operations a versioned directory needs (paths are POSIX strings)."""

    async def makedirs(self, path: str, mode: int) -> None: ...

    async def write_file(self, path: str, data: bytes, mode: int) -> None:
        """Atomically: the file is either absent/old or complete with ``mode``."""
        ...

    async def install_files(self, directory: str, dir_mode: int, files: Sequence[tuple[str, bytes, int]],
                            links: Sequence[tuple[str, str]]) -> None:
        """Create ``directory`` (``dir_mode``) and write each (name, data, mode) into it, all durable (fsynced);
        then make each (path, target) of ``links``, in order, as `replace_symlink` does: a new version and its swap
        in one call (a local disk does it in one worker-thread hop)."""
        ...

    async def read_file(self, path: str) -> bytes: ...

    async def readlink(self, path: str) -> str | None:
        """The symlink's target, or None when ``path`` does not exist."""
        ...

    async def replace_symlink(self, path: str, target: str) -> None:
        """Atomically make ``path`` a symlink to ``target`` (replacing what is there)."""
        ...

    async def listdir(self, path: str) -> list[str]: ...

    async def remove_tree(self, path: str) -> None: ...

    async def remove_link(self, path: str) -> None:
        """Remove the symlink ``path`` (not what it points at); absent: nothing to do."""
        ...

    async def file_mode(self, path: str) -> int: ...


class VersionedDirectory:
    """A target directory holding versions of one certificate (see the module docstring)."""

    def __init__(self, fs: FileSystem, root: str, *, cert_mode: int = 0o644, key_mode: int = 0o600,
                 dir_mode: int = 0o755) -> None:
        self.fs = fs
        self.root = root
        self.cert_mode = cert_mode
        self.key_mode = key_mode
        self.dir_mode = dir_mode

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    async def current_version(self) -> str | None:
        return await self.fs.readlink(self.path(CURRENT))

    async def previous_version(self) -> str | None:
        return await self.fs.readlink(self.path(PREVIOUS))

    async def install(self, bundle: Bundle) -> str:
        """Write ``bundle`` as a new version and make it current. Returns the version's relative path."""
        version = posixpath.join(VERSIONS, f"{bundle.serial}-{uuid.uuid4().hex[:8]}")
        directory = self.path(version)
        try:
            files = [(CERT_FILE, bundle.certificate_pem.encode(), self.cert_mode),
                     (CHAIN_FILE, bundle.chain_text.encode(), self.cert_mode),
                     (FULLCHAIN_FILE, bundle.fullchain_pem.encode(), self.cert_mode)]
            if bundle.private_key_pem is not None:
                files.append((KEY_FILE, bundle.private_key_pem, self.key_mode))
            # read before the new files are written: a deployment to this place holds its lock (target_place)
            old = await self.current_version()
            links = [(self.path(PREVIOUS), old)] if old is not None else []
            links.append((self.path(CURRENT), version))
            await self.fs.install_files(directory, self.dir_mode, files, links)
        except OSError as exc:
            raise TargetError(ErrorCode.INSTALL_FAILED, f"writing {directory} failed: {exc.strerror or exc}") from None
        return version

    async def roll_back(self, serial: str | None = None) -> str | None:
        """Point ``current`` back at ``previous``; None when there is no previous version, or when
        ``serial`` is given and ``current`` is not a version of it (its install failed before the
        swap: what is current is the last good version and stays)."""
        if serial is not None:
            current = await self.current_version()
            if current is None or not posixpath.basename(current).startswith(f"{serial}-"):
                return None
        previous = await self.previous_version()
        if previous is None:
            return None
        try:
            await self.fs.replace_symlink(self.path(CURRENT), previous)
        except OSError as exc:
            raise TargetError(ErrorCode.ROLLBACK_FAILED, f"restoring {self.path(previous)} failed: {exc.strerror or exc}") from None
        return previous

    async def read_current(self, name: str = CERT_FILE) -> bytes:
        return await self.fs.read_file(self.path(CURRENT, name))

    async def prune(self) -> list[str]:
        """Remove versions that are neither current nor previous. Returns what was removed."""
        keep = {await self.current_version(), await self.previous_version()}
        removed = []
        for entry in await self.fs.listdir(self.path(VERSIONS)):
            relative = posixpath.join(VERSIONS, entry)
            if relative not in keep:
                await self._remove_version(relative)
                removed.append(relative)
        return removed

    async def _remove_version(self, relative: str) -> None:
        """Remove a version directory; one already gone is not an error (another deployer instance's key
        retirement, or its prune, may have removed it first)."""
        try:
            await self.fs.remove_tree(self.path(relative))
        except FileNotFoundError:
            pass

    async def retire(self, serial: str, key_sha256: str) -> bool:
        """Remove every version of ``serial`` whose certificate has the key ``key_sha256``, except the
        current one (what the service serves is never touched); ``previous`` goes with the version it points
        at (a superseded serial is not rolled back to). True when no copy is left; False when ``current``
        is such a version (it stays). Raises OSError."""
        current = await self.current_version()
        in_use = False
        for entry in await self.fs.listdir(self.path(VERSIONS)):
            relative = posixpath.join(VERSIONS, entry)
            if not entry.startswith(f"{serial}-") or not await self._has_key(relative, key_sha256):
                continue
            if relative == current:
                in_use = True
                continue
            if await self.previous_version() == relative:
                await self.fs.remove_link(self.path(PREVIOUS))
            await self._remove_version(relative)
        return not in_use

    async def unserve(self, serial: str) -> str | None:
        """Stop serving ``serial``: when ``current`` is a version of it, remove the ``current`` link and return
        that version (for `serve_again`); None, touching nothing, when ``current`` is another serial or absent
        (a newer serial already deployed stays). Raises OSError."""
        current = await self.current_version()
        if current is None or not posixpath.basename(current).startswith(f"{serial}-"):
            return None
        await self.fs.remove_link(self.path(CURRENT))
        return current

    async def serve_again(self, version: str) -> None:
        """Undo `unserve` (the service refused to run without the files). Raises OSError."""
        await self.fs.replace_symlink(self.path(CURRENT), version)

    async def purge(self, serial: str) -> None:
        """Remove every version of ``serial`` (its key file with it) and ``previous`` when it points at one;
        never the current version. Raises OSError."""
        current = await self.current_version()
        previous = await self.previous_version()
        for entry in await self.fs.listdir(self.path(VERSIONS)):
            relative = posixpath.join(VERSIONS, entry)
            if not entry.startswith(f"{serial}-") or relative == current:
                continue
            if previous == relative:
                await self.fs.remove_link(self.path(PREVIOUS))
            await self._remove_version(relative)

    async def _has_key(self, version: str, key_sha256: str) -> bool:
        """Whether the certificate of ``version`` is of that key (a shared directory may hold another
        certificate's version with the same serial from another CA)."""
        try:
            pem = await self.fs.read_file(self.path(version, CERT_FILE))
        except FileNotFoundError:
            return True  # an install that failed before its certificate was written: the key file may be there
        try:
            return public_key_sha256(x509.load_pem_x509_certificate(pem)) == key_sha256
        except ValueError:
            return False
