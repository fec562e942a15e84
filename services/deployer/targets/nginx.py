"""The nginx target: the file target's versioned directory, then ``nginx -t`` and a
reload, then a TLS probe of the configured address until nginx serves the new
serial. Rollback swaps the previous version back, reloads and probes again
until the previous serial is served.

nginx must read ``<dir>/current/fullchain.pem`` (and ``current/privkey.pem``
for bot-held keys): ``ssl_certificate <dir>/current/fullchain.pem;``.
"""

from __future__ import annotations

from services.common.contracts.errors import ErrorCode
from services.deployer.targets.base import Bundle, TargetError, certificate_serial
from services.deployer.targets.commands import run_command
from services.deployer.targets.config import NginxTargetConfig
from services.deployer.targets.files import check_installed, remove_served_in, retire_in
from services.deployer.targets.localfs import LocalFileSystem
from services.deployer.targets.probe import probe_for_serial
from services.deployer.targets.versioned import CERT_FILE, CHAIN_FILE, FileSystem, VersionedDirectory


class NginxTarget:
    kind = "nginx"

    def __init__(self, name: str, config: NginxTargetConfig, fs: FileSystem | None = None) -> None:
        self.name = name
        self.config = config
        self.fs = fs or LocalFileSystem()

    def directory(self, bundle: Bundle) -> VersionedDirectory:
        return VersionedDirectory(self.fs, self.config.directory_for(bundle.certificate_id), **self.config.modes())

    def _nginx(self, *args: str) -> list[str]:
        return [self.config.nginx_binary, *self.config.nginx_args, "-c", self.config.nginx_config, *args]

    async def _test_and_reload(self, code: ErrorCode) -> None:
        timeout = self.config.command_timeout_s
        await run_command(self._nginx("-t", "-q"), timeout_s=timeout, what="nginx -t", code=code)
        await run_command(self.config.reload_command or self._nginx("-s", "reload"), timeout_s=timeout, what="nginx reload",
                          code=code)

    async def _probe(self, certificate_pem: str, chain_pem: str, expected: str, code: ErrorCode) -> str:
        return await probe_for_serial(
            self.config.probe_host, self.config.probe_port, server_name=self.config.server_name,
            ca_file=self.config.probe_ca_file, certificate_pem=certificate_pem, chain_pem=chain_pem, expected=expected,
            timeout_s=self.config.probe_timeout_s, code=code,
        )

    async def deploy(self, bundle: Bundle) -> None:
        await self.directory(bundle).install(bundle)
        await self._test_and_reload(ErrorCode.INSTALL_FAILED)

    async def verify(self, bundle: Bundle) -> str:
        directory = self.directory(bundle)
        await check_installed(directory, bundle)
        serial = await self._probe(bundle.certificate_pem, bundle.chain_text, bundle.serial, ErrorCode.VERIFY_FAILED)
        await directory.prune()
        return serial

    async def rollback(self, bundle: Bundle) -> bool:
        directory = self.directory(bundle)
        if await directory.roll_back(bundle.serial) is None:
            return False
        try:
            certificate = (await directory.read_current(CERT_FILE)).decode()
            chain = (await directory.read_current(CHAIN_FILE)).decode()
        except OSError as exc:
            raise TargetError(ErrorCode.ROLLBACK_FAILED, f"the previous version cannot be read: {exc.strerror or exc}") from None
        await self._test_and_reload(ErrorCode.ROLLBACK_FAILED)
        await self._probe(certificate, chain, certificate_serial(certificate), ErrorCode.ROLLBACK_FAILED)
        return True

    async def retire_key(self, certificate_id: str, serial: str, public_key_sha256: str) -> bool:
        """nginx reads only current/: removing other versions needs no reload."""
        directory = VersionedDirectory(self.fs, self.config.directory_for(certificate_id), **self.config.modes())
        return await retire_in(directory, serial, public_key_sha256)

    async def remove_served(self, certificate_id: str, serial: str) -> bool:
        """``nginx -t`` and a reload without the files: refused (and the files put back) when the
        configuration still reads them."""
        directory = VersionedDirectory(self.fs, self.config.directory_for(certificate_id), **self.config.modes())
        return await remove_served_in(directory, serial, self._test_and_reload)
