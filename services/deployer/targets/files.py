"""The file target: certificate, chain and (bot-held) key in a versioned directory
(targets/versioned.py) with safe modes, the previous version kept for rollback,
and an optional reload command."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from cryptography import x509

from services.common.contracts.errors import ErrorCode
from services.deployer.targets.base import Bundle, TargetError, certificate_serial, public_key_sha256
from services.deployer.targets.commands import run_command
from services.deployer.targets.config import FileTargetConfig
from services.deployer.targets.localfs import LocalFileSystem
from services.deployer.targets.versioned import CERT_FILE, CHAIN_FILE, FULLCHAIN_FILE, KEY_FILE, FileSystem, VersionedDirectory


async def check_installed(directory: VersionedDirectory, bundle: Bundle) -> str:
    """Read the current version back: the leaf has the bundle's serial, the key (if any)
    matches it, and every file has its configured mode. Returns the serial read."""
    try:
        pem = await directory.read_current(CERT_FILE)
        serial = certificate_serial(pem)
        fs = directory.fs
        for name in (CERT_FILE, CHAIN_FILE, FULLCHAIN_FILE):
            mode = await fs.file_mode(directory.path("current", name))
            if mode != directory.cert_mode:
                raise TargetError(ErrorCode.VERIFY_FAILED, f"{name} has mode {mode:04o}, not {directory.cert_mode:04o}")
        if bundle.private_key_pem is not None:
            mode = await fs.file_mode(directory.path("current", KEY_FILE))
            if mode != directory.key_mode:
                raise TargetError(ErrorCode.VERIFY_FAILED, f"{KEY_FILE} has mode {mode:04o}, not {directory.key_mode:04o}")
            key = await directory.read_current(KEY_FILE)
            if public_key_sha256(key) != public_key_sha256(x509.load_pem_x509_certificate(pem)):
                raise TargetError(ErrorCode.VERIFY_FAILED, "the installed private key does not match the installed certificate")
    except OSError as exc:
        raise TargetError(ErrorCode.VERIFY_FAILED, f"reading back {directory.root}/current failed: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise TargetError(ErrorCode.VERIFY_FAILED, f"the installed certificate cannot be read: {exc}") from None
    if serial != bundle.serial:
        raise TargetError(ErrorCode.VERIFY_FAILED, f"the installed certificate has serial {serial}, not {bundle.serial}")
    return serial


async def retire_in(directory: VersionedDirectory, serial: str, public_key_sha256: str) -> bool:
    """`VersionedDirectory.retire` with its OSError as a TargetError (KeyRetiring)."""
    try:
        return await directory.retire(serial, public_key_sha256)
    except OSError as exc:
        raise TargetError(ErrorCode.INSTALL_FAILED, f"removing retired versions under {directory.root} failed: "
                                                    f"{exc.strerror or exc}") from None


async def remove_served_in(directory: VersionedDirectory, serial: str,
                           reload: Callable[[ErrorCode], Awaitable[None]]) -> bool:
    """`ServedRemoving` on a versioned directory: unlink ``current`` when it is a version of ``serial``, run
    ``reload`` (the service lets go of the files), then delete every version of the serial (key included).
    False, touching nothing, when ``current`` is another serial. A failed reload puts ``current`` back and
    raises: the service keeps a consistent set of files (an nginx whose configuration needs them refuses
    ``nginx -t`` and keeps serving)."""
    try:
        version = await directory.unserve(serial)
    except OSError as exc:
        raise TargetError(ErrorCode.INSTALL_FAILED, f"unlinking {directory.root}/current failed: {exc.strerror or exc}") from None
    if version is None:
        return False
    try:
        await reload(ErrorCode.INSTALL_FAILED)
    except TargetError as exc:
        try:
            await directory.serve_again(version)
        except OSError as again:
            raise TargetError(exc.code, f"{exc.message}; putting {directory.root}/current back failed too: "
                                        f"{again.strerror or again}") from None
        raise TargetError(exc.code, f"{exc.message}; {directory.root}/current was put back, the serial is still served",
                          transient=exc.transient) from None
    try:
        await directory.purge(serial)
    except OSError as exc:
        raise TargetError(ErrorCode.INSTALL_FAILED, f"the service no longer reads serial {serial}, but deleting its "
                                                    f"files under {directory.root} failed: {exc.strerror or exc}") from None
    return True


class FileTarget:
    kind = "file"

    def __init__(self, name: str, config: FileTargetConfig, fs: FileSystem | None = None) -> None:
        self.name = name
        self.config = config
        self.fs = fs or LocalFileSystem()

    def directory(self, bundle: Bundle) -> VersionedDirectory:
        return VersionedDirectory(self.fs, self.config.directory_for(bundle.certificate_id), **self.config.modes())

    async def _reload(self, code: ErrorCode) -> None:
        if self.config.reload_command:
            await run_command(self.config.reload_command, timeout_s=self.config.command_timeout_s, what="reload", code=code)

    async def deploy(self, bundle: Bundle) -> None:
        await self.directory(bundle).install(bundle)
        await self._reload(ErrorCode.INSTALL_FAILED)

    async def verify(self, bundle: Bundle) -> str:
        directory = self.directory(bundle)
        serial = await check_installed(directory, bundle)
        await directory.prune()
        return serial

    async def rollback(self, bundle: Bundle) -> bool:
        if await self.directory(bundle).roll_back(bundle.serial) is None:
            return False
        await self._reload(ErrorCode.ROLLBACK_FAILED)
        return True

    async def retire_key(self, certificate_id: str, serial: str, public_key_sha256: str) -> bool:
        directory = VersionedDirectory(self.fs, self.config.directory_for(certificate_id), **self.config.modes())
        return await retire_in(directory, serial, public_key_sha256)

    async def remove_served(self, certificate_id: str, serial: str) -> bool:
        directory = VersionedDirectory(self.fs, self.config.directory_for(certificate_id), **self.config.modes())
        return await remove_served_in(directory, serial, self._reload)
