"""`FileSystem` on an SSH host: files over SFTP, the symlink swap as a remote command.

- ``write_file``: a temporary name opened with the final mode, the mode set again
  (``fchmod`` over SFTP, so the remote umask cannot widen or narrow it), written,
  ``fsync@openssh.com``, then renamed over the final name with
  ``posix-rename@openssh.com`` (atomic; plain SFTP rename refuses to replace).
- ``replace_symlink``: ``ln -sfn TARGET TMP && mv -T TMP PATH`` on the remote side
  (rename(2) of a new symlink over the old one: atomic; needs GNU coreutils' ``mv -T``).

SFTP errors become ``OSError`` (what `VersionedDirectory` and `check_installed` expect);
a lost connection becomes ``TargetError(TARGET_UNREACHABLE, transient=True)``.
"""

from __future__ import annotations

import errno
import posixpath
import shlex
import stat
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import asyncssh

from services.common.contracts.errors import ErrorCode
from services.deployer.targets.base import TargetError

T = TypeVar("T")

#: runs a remote argv (shell-quoted); raises OSError when it fails
RemoteRunner = Callable[[Sequence[str], str], Awaitable[str]]


def _os_error(exc: asyncssh.SFTPError, path: str) -> OSError:
    if isinstance(exc, asyncssh.SFTPNoSuchFile):
        return FileNotFoundError(errno.ENOENT, f"{exc.reason or 'no such file'} ({path})")
    if isinstance(exc, asyncssh.SFTPPermissionDenied):
        return PermissionError(errno.EACCES, f"{exc.reason or 'permission denied'} ({path})")
    return OSError(errno.EIO, f"{exc.reason or type(exc).__name__} ({path})")


def unreachable(what: str, exc: BaseException) -> TargetError:
    return TargetError(ErrorCode.TARGET_UNREACHABLE, f"{what}: the SSH connection was lost ({type(exc).__name__}: {exc})",
                       transient=True)


class SftpFileSystem:
    """The file operations of `VersionedDirectory` on one open SSH connection."""

    def __init__(self, sftp: asyncssh.SFTPClient, run: RemoteRunner) -> None:
        self._sftp = sftp
        self._run = run

    async def _call(self, path: str, operation: Awaitable[T]) -> T:
        try:
            return await operation
        except asyncssh.SFTPConnectionLost as exc:
            raise unreachable(f"SFTP on {path}", exc) from None
        except asyncssh.SFTPError as exc:
            raise _os_error(exc, path) from None
        except (asyncssh.DisconnectError, asyncssh.ChannelOpenError, ConnectionError) as exc:
            raise unreachable(f"SFTP on {path}", exc) from None

    async def makedirs(self, path: str, mode: int) -> None:
        await self._call(path, self._sftp.makedirs(path, asyncssh.SFTPAttrs(permissions=mode), exist_ok=True))
        await self._call(path, self._sftp.chmod(path, mode))  # the remote umask filters the mode at creation

    async def install_files(self, directory: str, dir_mode: int, files: Sequence[tuple[str, bytes, int]],
                            links: Sequence[tuple[str, str]]) -> None:
        await self.makedirs(directory, dir_mode)
        for name, data, mode in files:
            await self.write_file(posixpath.join(directory, name), data, mode)
        for path, target in links:
            await self.replace_symlink(path, target)

    async def write_file(self, path: str, data: bytes, mode: int) -> None:
        temporary = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")

        async def write() -> None:
            handle = await self._sftp.open(temporary, "xb", asyncssh.SFTPAttrs(permissions=mode), encoding=None)
            try:
                await handle.chmod(mode)
                await handle.write(data)
                await handle.fsync()
            finally:
                await handle.close()
            await self._sftp.posix_rename(temporary, path)

        try:
            await self._call(temporary, write())
        except OSError:
            await self._discard(temporary)
            raise

    async def _discard(self, temporary: str) -> None:
        """Best effort: remove a temporary file left by a failed write or swap."""
        try:
            await self._sftp.remove(temporary)
        except (asyncssh.Error, OSError):
            pass

    async def read_file(self, path: str) -> bytes:
        async def read() -> bytes:
            async with self._sftp.open(path, "rb", encoding=None) as handle:
                return await handle.read()

        return await self._call(path, read())

    async def readlink(self, path: str) -> str | None:
        try:
            return await self._call(path, self._sftp.readlink(path))
        except FileNotFoundError:
            return None

    async def replace_symlink(self, path: str, target: str) -> None:
        temporary = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        await self._run(["ln", "-sfn", target, temporary], f"symlink {path}")
        try:
            await self._run(["mv", "-T", temporary, path], f"swap {path}")
        except OSError:
            await self._discard(temporary)
            raise

    async def listdir(self, path: str) -> list[str]:
        try:
            names = await self._call(path, self._sftp.listdir(path))
        except FileNotFoundError:
            return []
        return sorted(name for name in names if name not in (".", ".."))

    async def remove_tree(self, path: str) -> None:
        await self._call(path, self._sftp.rmtree(path))

    async def remove_link(self, path: str) -> None:
        try:
            await self._call(path, self._sftp.remove(path))
        except FileNotFoundError:
            return

    async def file_mode(self, path: str) -> int:
        attrs = await self._call(path, self._sftp.stat(path))
        return stat.S_IMODE(attrs.permissions or 0)


def quoted(argv: Sequence[str]) -> str:
    """The remote command line: the SSH server runs it through the user's shell, so every
    argument is quoted (no word splitting, globbing or expansion of what the config says)."""
    return shlex.join(argv)
