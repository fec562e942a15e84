"""`FileSystem` on the local disk: atomic writes (temporary file, fsync, rename, fsync of the directory).

The calls that write (and fsync) or remove run in a worker thread (``asyncio.to_thread``): an
fsync must not stop the event loop, which handles the other certificates of the batch. Reading a
small file, a link, a directory listing or a mode is a cached system call and stays on the loop
(a thread hop for each would cost more than the call under a busy CPU).

**A batch's installs are written, then flushed together** (`FileSync.SYNCFS`, the default). The new
versions queued while the previous group ran (the certificates of a batch, deployed concurrently) go to
the worker thread in one hop: every version's files are written, then each filesystem they are on is
flushed once (Linux's ``syncfs(2)``: its dirty data and metadata written and its journal committed),
then every version's ``previous`` and ``current`` links are swapped, then flushed once more. A link
therefore never points at files that are not durable, as with an fsync per file, and a failure (a write,
a swap, a flush) is only the calling certificate's (a flush's: of every version it covered). On this
project's VM disk an fsync costs 200-600 µs of kernel time; the six of one installation were the deployer's
largest cost, and with syncfs a group of 25 costs 2 flushes of about 0.8 ms (docs/benchmarks.md). ``syncfs`` also flushes whatever else is dirty on that filesystem:
where the targets share a filesystem with heavy unrelated writes, `FileSync.FSYNC` (each file and
directory fsynced on its own, as before) may cost less (``CERTRAIL_DEPLOYER_FILE_SYNC``). Without
``syncfs`` (not Linux), FSYNC is used.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import stat
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

from services.common.runtime.writer import ThreadGroups

if TYPE_CHECKING:
    from services.common.runtime.writer import _Step


class FileSync(StrEnum):
    """How a new version is made durable (``CERTRAIL_DEPLOYER_FILE_SYNC``)."""

    SYNCFS = "syncfs"  # the versions of a group written, then one syncfs per filesystem; the links, then one more
    FSYNC = "fsync"  # every file and directory fsynced on its own


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int]
    call.restype = ctypes.c_int
    return cast(Callable[[int], int], call)


_SYNCFS = _load_syncfs()


def syncfs_available() -> bool:
    return _SYNCFS is not None


def syncfs(path: str) -> None:
    """Flush the filesystem that holds the directory ``path`` (syncfs(2); since Linux 5.8 it reports the
    writeback errors of that filesystem). Raises OSError."""
    if _SYNCFS is None:
        raise OSError(f"syncfs(2) is not available on {sys.platform}")
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(descriptor) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), path)
    finally:
        os.close(descriptor)


def _fsync_dir(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fill(descriptor: int, data: bytes, mode: int) -> None:
    """A new file's ``mode`` (the umask may have narrowed what it was created with) and its whole content."""
    os.fchmod(descriptor, mode)
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


def _makedirs(path: str, mode: int) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)
    os.chmod(path, mode)  # makedirs' mode is filtered by the umask


def _replace_symlink(path: str, target: str, *, durable: bool = True) -> None:
    temporary = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    os.symlink(target, temporary)
    try:
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    if durable:
        _fsync_dir(os.path.dirname(path) or ".")


@dataclass(frozen=True)
class _Install:
    """One new version: its directory and files, then its links (`LocalFileSystem.install_files`)."""

    directory: str
    dir_mode: int
    files: Sequence[tuple[str, bytes, int]]
    links: Sequence[tuple[str, str]]

    def __call__(self) -> None:
        """On its own, each file and directory fsynced (`FileSync.FSYNC`)."""
        self.write(durable=True)
        self.swap(durable=True)

    def write(self, *, durable: bool) -> None:
        """The files, written straight under their names (the directory is new and nothing points at it until
        the swap); ``durable``: each fsynced, then the directory and its parent."""
        _makedirs(self.directory, self.dir_mode)
        for name, data, mode in self.files:
            descriptor = os.open(os.path.join(self.directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            try:
                _fill(descriptor, data, mode)
                if durable:
                    os.fsync(descriptor)
            finally:
                os.close(descriptor)
        if durable:
            _fsync_dir(self.directory)
            _fsync_dir(os.path.dirname(self.directory.rstrip("/")) or ".")

    def swap(self, *, durable: bool) -> None:
        for path, target in self.links:
            _replace_symlink(path, target, durable=durable)

    def link_directory(self) -> str:
        """Where the links are (all in the target directory)."""
        if not self.links:
            return self.directory
        return os.path.dirname(self.links[0][0]) or "."


class _InstallGroups(ThreadGroups):
    """The installs queued meanwhile in one worker-thread hop, flushed together (the module docstring)."""

    def __init__(self) -> None:
        super().__init__(name="deployer-installs")

    async def install(self, install: _Install) -> None:
        await self._enqueue(install)

    def _run_group(self, group: list[_Step]) -> list[tuple[bool, Any]]:
        installs = [cast(_Install, step.call) for step in group]
        failures: list[BaseException | None] = [None] * len(installs)
        self._phase(installs, failures, lambda install: install.write(durable=False), lambda install: install.directory)
        self._phase(installs, failures, lambda install: install.swap(durable=False), _Install.link_directory)
        return [(failure is None, failure) for failure in failures]

    def _phase(self, installs: list[_Install], failures: list[BaseException | None], act: Callable[[_Install], None],
               where: Callable[[_Install], str]) -> None:
        """``act`` on every install not failed yet, then one syncfs per filesystem of what it touched; a failure
        is the install's (a flush's: of every install it covered)."""
        by_device: dict[int, tuple[str, list[int]]] = {}
        for index, install in enumerate(installs):
            if failures[index] is not None:
                continue
            try:
                act(install)
                path = where(install)
                by_device.setdefault(os.stat(path).st_dev, (path, []))[1].append(index)
            except Exception as exc:  # noqa: BLE001 - handed to this install's caller
                failures[index] = exc
        for path, indexes in by_device.values():
            try:
                syncfs(path)
            except OSError as exc:
                for index in indexes:
                    failures[index] = exc


class LocalFileSystem:
    """The local disk. Share one instance between the targets of a process (the deployer's app does) so that
    the installs of a batch are grouped (the module docstring)."""

    def __init__(self, sync: FileSync = FileSync.SYNCFS) -> None:
        #: what is in effect (FSYNC where syncfs(2) is not available)
        self.sync = sync if syncfs_available() else FileSync.FSYNC
        self._installs = _InstallGroups()

    def _write_file(self, path: str, data: bytes, mode: int) -> None:
        directory = os.path.dirname(path)
        temporary = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
        # created with its final mode (never world-readable, even for a moment, when mode says so)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            _fill(descriptor, data, mode)
            os.fsync(descriptor)
        except BaseException:
            os.close(descriptor)
            os.unlink(temporary)
            raise
        os.close(descriptor)
        os.replace(temporary, path)
        _fsync_dir(directory)

    async def install_files(self, directory: str, dir_mode: int, files: Sequence[tuple[str, bytes, int]],
                            links: Sequence[tuple[str, str]]) -> None:
        """The files, durable, then the links, in order; in one worker-thread hop with the other installs queued
        meanwhile (a hop costs 125-190 µs of CPU on a small VM), flushed together (the module docstring)."""
        install = _Install(directory, dir_mode, tuple(files), tuple(links))
        if self.sync is FileSync.FSYNC:  # a hop each: the fsyncs of the certificates in flight wait side by side
            await asyncio.to_thread(install)
        else:
            await self._installs.install(install)

    async def read_file(self, path: str) -> bytes:
        with open(path, "rb") as handle:
            return handle.read()

    async def readlink(self, path: str) -> str | None:
        try:
            return os.readlink(path)
        except (FileNotFoundError, NotADirectoryError):  # absent, or a parent is a file: no link
            return None

    async def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    async def file_mode(self, path: str) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    async def makedirs(self, path: str, mode: int) -> None:
        await asyncio.to_thread(_makedirs, path, mode)

    async def write_file(self, path: str, data: bytes, mode: int) -> None:
        await asyncio.to_thread(self._write_file, path, data, mode)

    async def replace_symlink(self, path: str, target: str) -> None:
        await asyncio.to_thread(_replace_symlink, path, target)

    async def remove_tree(self, path: str) -> None:
        await asyncio.to_thread(shutil.rmtree, path)

    def _remove_link(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        _fsync_dir(os.path.dirname(path) or ".")

    async def remove_link(self, path: str) -> None:
        await asyncio.to_thread(self._remove_link, path)

