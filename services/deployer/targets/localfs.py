"""`FileSystem` on the local disk: atomic writes (temporary file, fsync, rename, fsync of the directory).

The calls that write (and fsync) or remove run in a worker thread (``asyncio.to_thread``): an
fsync must not stop the event loop, which handles the other certificates of the batch. Reading a
small file, a link, a directory listing or a mode is a cached system call and stays on the loop
(a thread hop for each would cost more than the call under a busy CPU)."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import uuid
from collections.abc import Sequence


def _fsync_dir(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class LocalFileSystem:
    def _makedirs(self, path: str, mode: int) -> None:
        os.makedirs(path, mode=mode, exist_ok=True)
        os.chmod(path, mode)  # makedirs' mode is filtered by the umask

    def _write_file(self, path: str, data: bytes, mode: int) -> None:
        directory = os.path.dirname(path)
        temporary = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
        # created with its final mode (never world-readable, even for a moment, when mode says so)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(descriptor, mode)  # the umask may have narrowed it
            view = memoryview(data)
            while view:
                written = os.write(descriptor, view)
                view = view[written:]
            os.fsync(descriptor)
        except BaseException:
            os.close(descriptor)
            os.unlink(temporary)
            raise
        os.close(descriptor)
        os.replace(temporary, path)
        _fsync_dir(directory)

    def _write_files(self, directory: str, dir_mode: int, files: Sequence[tuple[str, bytes, int]]) -> None:
        """A new version's files: written straight under their names (the directory is new and nothing
        points at it until the caller's symlink swap), each fsynced, then the directory and its parent."""
        self._makedirs(directory, dir_mode)
        for name, data, mode in files:
            descriptor = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            try:
                os.fchmod(descriptor, mode)  # the umask may have narrowed it
                view = memoryview(data)
                while view:
                    written = os.write(descriptor, view)
                    view = view[written:]
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        _fsync_dir(directory)
        _fsync_dir(os.path.dirname(directory.rstrip("/")) or ".")

    def _install_files(self, directory: str, dir_mode: int, files: Sequence[tuple[str, bytes, int]],
                       links: Sequence[tuple[str, str]]) -> None:
        self._write_files(directory, dir_mode, files)
        for path, target in links:
            self._replace_symlink(path, target)

    async def install_files(self, directory: str, dir_mode: int, files: Sequence[tuple[str, bytes, int]],
                            links: Sequence[tuple[str, str]]) -> None:
        """The files, then the links, in one worker-thread hop (a hop costs 125-190 µs of CPU on a small VM)."""
        await asyncio.to_thread(self._install_files, directory, dir_mode, files, links)

    async def read_file(self, path: str) -> bytes:
        with open(path, "rb") as handle:
            return handle.read()

    async def readlink(self, path: str) -> str | None:
        try:
            return os.readlink(path)
        except (FileNotFoundError, NotADirectoryError):  # absent, or a parent is a file: no link
            return None

    def _replace_symlink(self, path: str, target: str) -> None:
        temporary = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        os.symlink(target, temporary)
        try:
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
        _fsync_dir(os.path.dirname(path) or ".")

    async def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    async def file_mode(self, path: str) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    async def makedirs(self, path: str, mode: int) -> None:
        await asyncio.to_thread(self._makedirs, path, mode)

    async def write_file(self, path: str, data: bytes, mode: int) -> None:
        await asyncio.to_thread(self._write_file, path, data, mode)

    async def replace_symlink(self, path: str, target: str) -> None:
        await asyncio.to_thread(self._replace_symlink, path, target)

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

