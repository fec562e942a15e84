"""The local disk's installs (targets/localfs.py): the new versions queued together go to a worker thread in one
hop (a hop costs 125-190 µs of CPU on a small VM) and are flushed together, in the order an atomic install needs:
every version's files durable (one syncfs per filesystem), then its ``previous`` and ``current`` links, flushed once
more. A failure is only its own certificate's. With ``FileSync.FSYNC`` every file and directory is fsynced on its own."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.deployer.settings import DeployerSettings
from services.deployer.targets import localfs
from services.deployer.targets.base import Bundle
from services.deployer.targets.localfs import FileSync, LocalFileSystem
from services.deployer.targets.versioned import CURRENT, PREVIOUS, VersionedDirectory

needs_syncfs = pytest.mark.skipif(not localfs.syncfs_available(), reason="syncfs(2) is Linux's")


def _bundle(serial: str) -> Bundle:
    return Bundle("web.example.test", serial, f"cert {serial}\n", (f"chain {serial}\n",), None)


def _count_hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    hops: list[str] = []
    real = asyncio.to_thread

    async def counted(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__name__", type(fn).__name__))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr("services.common.runtime.writer.asyncio.to_thread", counted)
    monkeypatch.setattr(localfs.asyncio, "to_thread", counted)
    return hops


def _link(path: Path) -> str | None:
    return os.readlink(path) if path.is_symlink() else None


@needs_syncfs
def test_the_installs_queued_together_are_one_hop_files_flushed_before_any_link_moves(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hops = _count_hops(monkeypatch)
    fs = LocalFileSystem()
    assert fs.sync is FileSync.SYNCFS
    roots = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    directories = [VersionedDirectory(fs, str(root)) for root in roots]
    asyncio.run(directories[0].install(_bundle("01")))  # so that "a" has a previous version to keep
    hops.clear()
    seen: list[tuple[str, list[bool], list[str | None]]] = []
    real_syncfs = localfs.syncfs

    def watched(path: str) -> None:
        # what a flush covers: every version's files are there (and, at the second, every link swapped)
        files = [any((root / "versions").glob(f"{serial}-*/fullchain.pem")) for root, serial in zip(roots, ["02", "01", "01"], strict=True)]
        seen.append((path, files, [_link(root / CURRENT) for root in roots]))
        real_syncfs(path)
    monkeypatch.setattr(localfs, "syncfs", watched)

    async def three() -> list[str]:
        return list(await asyncio.gather(directories[0].install(_bundle("02")), directories[1].install(_bundle("01")),
                                         directories[2].install(_bundle("01"))))
    versions = asyncio.run(three())

    assert hops == ["_run_group"]  # one worker-thread hop for the three
    assert len(seen) == 2  # one flush for the files of all three, one for their links (one filesystem)
    (_, files, links), (_, files_after, links_after) = seen
    assert files == [True, True, True] and files_after == [True, True, True]
    assert links[1:] == [None, None] and links[0] is not None and not links[0].startswith("versions/02-")
    assert links_after == versions
    assert _link(roots[0] / PREVIOUS) is not None and _link(roots[0] / PREVIOUS).startswith("versions/01-")  # type: ignore[union-attr]
    assert (roots[0] / CURRENT / "fullchain.pem").read_text() == "cert 02\nchain 02\n"


@needs_syncfs
def test_a_failed_write_fails_only_its_own_install(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    web = VersionedDirectory(fs, str(tmp_path / "web"))
    first = asyncio.run(web.install(_bundle("01")))
    taken = tmp_path / "web" / "versions" / "02-taken"
    taken.mkdir()
    (taken / "cert.pem").write_text("someone else's")  # O_EXCL: the write fails on it
    other = VersionedDirectory(fs, str(tmp_path / "other"))

    async def both() -> list[Any]:
        return list(await asyncio.gather(
            fs.install_files(str(taken), 0o755, [("cert.pem", b"new", 0o644)], [(str(tmp_path / "web" / CURRENT), "versions/02-taken")]),
            other.install(_bundle("07")), return_exceptions=True))
    failed, installed = asyncio.run(both())

    assert isinstance(failed, FileExistsError)
    assert os.readlink(tmp_path / "web" / CURRENT) == first  # nothing swapped for the failed one
    assert (tmp_path / "web" / "versions" / "02-taken" / "cert.pem").read_text() == "someone else's"
    assert os.readlink(tmp_path / "other" / CURRENT) == installed  # the other one is installed
    assert (tmp_path / "other" / CURRENT / "cert.pem").read_text() == "cert 07\n"


@needs_syncfs
def test_a_failed_flush_fails_every_install_it_covered_and_moves_no_link(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fs = LocalFileSystem()
    web = VersionedDirectory(fs, str(tmp_path / "web"))
    first = asyncio.run(web.install(_bundle("01")))

    def broken(path: str) -> None:
        raise OSError(5, "Input/output error", path)
    monkeypatch.setattr(localfs, "syncfs", broken)
    other = VersionedDirectory(fs, str(tmp_path / "other"))

    async def both() -> list[Any]:
        return list(await asyncio.gather(web.install(_bundle("02")), other.install(_bundle("07")), return_exceptions=True))
    results = asyncio.run(both())

    assert [type(result).__name__ for result in results] == ["TargetError", "TargetError"]
    assert "Input/output error" in str(results[0])
    assert os.readlink(tmp_path / "web" / CURRENT) == first  # not durable: never pointed at
    assert not (tmp_path / "other" / CURRENT).exists()


def test_fsync_mode_syncs_each_file_and_directory_on_its_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hops = _count_hops(monkeypatch)
    calls: list[int] = []
    real_fsync = os.fsync

    def counted(descriptor: int) -> None:
        calls.append(descriptor)
        real_fsync(descriptor)
    monkeypatch.setattr(localfs.os, "fsync", counted)

    def refused(path: str) -> None:
        raise AssertionError("no syncfs in fsync mode")
    monkeypatch.setattr(localfs, "syncfs", refused)
    fs = LocalFileSystem(FileSync.FSYNC)
    assert fs.sync is FileSync.FSYNC
    directory = VersionedDirectory(fs, str(tmp_path / "web"))

    first = asyncio.run(directory.install(_bundle("01")))
    assert hops == ["_Install"]  # a hop each: the fsyncs of the certificates in flight wait side by side
    assert len(calls) == 3 + 2 + 1  # three files, the version directory and versions/, then the link's directory
    second = asyncio.run(directory.install(_bundle("02")))
    assert os.readlink(tmp_path / "web" / CURRENT) == second
    assert os.readlink(tmp_path / "web" / PREVIOUS) == first
    assert (tmp_path / "web" / CURRENT / "fullchain.pem").read_text() == "cert 02\nchain 02\n"


def test_the_setting_chooses_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DeployerSettings().file_sync is FileSync.SYNCFS
    monkeypatch.setenv("CERTRAIL_DEPLOYER_FILE_SYNC", "fsync")
    assert DeployerSettings().file_sync is FileSync.FSYNC
    monkeypatch.setenv("CERTRAIL_DEPLOYER_FILE_SYNC", "never")
    with pytest.raises(ValueError, match="syncfs"):
        DeployerSettings()
