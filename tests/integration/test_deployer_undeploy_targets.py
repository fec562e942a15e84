"""A revoked certificate taken off real targets (issue 20, decision 0028): Debian's sshd on loopback (host key
pinned) and a real nginx serving TLS. Over ssh, a serial the target no longer serves is left alone, a failing
remote reload puts ``current`` back, and the served serial's files and key leave. nginx, whose configuration
reads ``current/fullchain.pem``, refuses ``nginx -t`` without it: the files are put back and it keeps serving."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.contracts.errors import ErrorCode
from services.deployer.runner import RetryPolicy, deploy_with_rollback
from services.deployer.targets.base import TargetError
from services.deployer.targets.config import SshTargetConfig
from services.deployer.targets.ssh import SshTarget
from tests.deployer_support import MiniCA, NginxServer, SshServer
from tests.integration.test_deployer_key_copies import CERT_ID, _bundle, _no_sleep, _versions
from tests.integration.test_deployer_nginx import CERT_ID as NGINX_CERT_ID
from tests.integration.test_deployer_nginx import NAME, _serving, _target

pytestmark = [pytest.mark.integration]


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    server = SshServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _ssh(sshd: SshServer, remote: Path, reload: list[str]) -> SshTarget:
    return SshTarget("web-ssh", SshTargetConfig(host="127.0.0.1", port=sshd.port, user=sshd.user, host_key=sshd.host_key_line,
                                                dir=str(remote), connect_timeout_s=10.0, reload_command=reload),
                     sshd.client_key)


async def test_ssh_takes_the_served_serial_off_and_leaves_another(sshd: SshServer, tmp_path: Path) -> None:
    remote, ca = tmp_path / "remote", MiniCA()
    target = _ssh(sshd, remote, ["true"])
    (old, _), (new, _) = _bundle(ca, CERT_ID, 0x61), _bundle(ca, CERT_ID, 0x62)
    for bundle in (old, new):
        result = await deploy_with_rollback(target, bundle, RetryPolicy(1), sleep=_no_sleep)
        assert result.ok, result.error

    assert await target.remove_served(CERT_ID, "61") is False  # not served: nothing touched
    assert _versions(remote) == ["61", "62"] and os.readlink(remote / "current").startswith("versions/62-")

    with pytest.raises(TargetError, match="put back"):
        await _ssh(sshd, remote, ["false"]).remove_served(CERT_ID, "62")
    assert os.readlink(remote / "current").startswith("versions/62-") and (remote / "current" / "privkey.pem").exists()

    assert await target.remove_served(CERT_ID, "62") is True
    assert not (remote / "current").is_symlink() and _versions(remote) == ["61"]
    assert await target.remove_served(CERT_ID, "62") is False  # again: nothing served, not an error

    sshd.stop()
    with pytest.raises(TargetError) as stopped:
        await target.remove_served(CERT_ID, "61")
    assert stopped.value.code is ErrorCode.TARGET_UNREACHABLE


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[NginxServer]:
    server = NginxServer(tmp_path, tmp_path / "certs", NAME)
    yield server
    server.stop()


async def test_nginx_that_reads_the_files_refuses_and_keeps_serving(nginx: NginxServer, tmp_path: Path) -> None:
    ca = MiniCA()
    target = _target(nginx, nginx.cert_dir)
    served = ca.bundle(NGINX_CERT_ID, [NAME])
    await target.directory(served).install(served)
    nginx.start()
    assert await _serving(nginx, ca, tmp_path) == served.serial

    with pytest.raises(TargetError) as refused:
        await target.remove_served(NGINX_CERT_ID, served.serial)
    assert refused.value.code is ErrorCode.INSTALL_FAILED and "put back" in refused.value.message
    assert (nginx.cert_dir / "current" / "fullchain.pem").exists()
    assert await _serving(nginx, ca, tmp_path) == served.serial
