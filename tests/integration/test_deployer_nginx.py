"""The nginx target against a real nginx from Debian's packages serving TLS on loopback:
the probe sees the new serial after a deployment, and the old one after a forced rollback
(nginx -t refusing a certificate for another key; a certificate the probe cannot verify)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.contracts.errors import ErrorCode
from services.deployer.targets.base import TargetError
from services.deployer.targets.config import NginxTargetConfig
from services.deployer.targets.nginx import NginxTarget
from services.deployer.targets.probe import probe_context, served_serial
from tests.deployer_support import MiniCA, NginxServer

NAME = "www.deploy.test"
CERT_ID = "web/www.deploy.test"


@pytest.fixture
def ca() -> MiniCA:
    return MiniCA()


def _target(server: NginxServer, cert_dir: Path, **overrides: object) -> NginxTarget:
    values: dict[str, object] = dict(
        dir=str(cert_dir), nginx_binary=server.binary, nginx_config=str(server.config), nginx_args=server.args,
        probe_port=server.port, probe_timeout_s=8.0, server_name=NAME,
    )
    values.update(overrides)
    return NginxTarget("edge-nginx", NginxTargetConfig(**values))  # type: ignore[arg-type]


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[NginxServer]:
    server = NginxServer(tmp_path, tmp_path / "certs", NAME)
    yield server
    server.stop()


async def _serving(server: NginxServer, ca: MiniCA, tmp_path: Path) -> str:
    context = probe_context(cafile=str(ca.write_root(tmp_path / "root.pem")))
    return await served_serial("127.0.0.1", server.port, NAME, context)


async def test_deploy_then_forced_rollbacks_keep_nginx_serving_a_verified_serial(
    nginx: NginxServer, ca: MiniCA, tmp_path: Path
) -> None:
    target = _target(nginx, nginx.cert_dir)
    first = ca.bundle(CERT_ID, [NAME])
    await target.directory(first).install(first)  # what was there before certrail
    nginx.start()
    assert await _serving(nginx, ca, tmp_path) == first.serial

    second = ca.bundle(CERT_ID, [NAME])
    await target.deploy(second)
    assert await target.verify(second) == second.serial
    assert await _serving(nginx, ca, tmp_path) == second.serial
    current = nginx.cert_dir / "current"
    assert stat.S_IMODE((current / "privkey.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((current / "fullchain.pem").stat().st_mode) == 0o644

    # a certificate for a name the probe does not accept: nginx serves it, verification fails, rollback
    wrong_name = ca.bundle(CERT_ID, ["other.deploy.test"])
    await target.deploy(wrong_name)
    with pytest.raises(TargetError) as failed:
        await target.verify(wrong_name)
    assert failed.value.code is ErrorCode.VERIFY_FAILED
    assert await target.rollback(wrong_name) is True
    assert await _serving(nginx, ca, tmp_path) == second.serial

    # a certificate whose key does not match: nginx -t refuses it, rollback restores the last good one
    broken = ca.bundle(CERT_ID, [NAME])
    broken = type(broken)(broken.certificate_id, broken.serial, broken.certificate_pem, broken.chain_pem, first.private_key_pem)
    with pytest.raises(TargetError) as refused:
        await target.deploy(broken)
    assert refused.value.code is ErrorCode.INSTALL_FAILED and "nginx -t" in refused.value.message
    assert await target.rollback(broken) is True
    assert await _serving(nginx, ca, tmp_path) == second.serial
    assert (current / "cert.pem").read_text() == second.certificate_pem


async def test_verify_fails_when_nginx_keeps_serving_the_old_certificate(nginx: NginxServer, ca: MiniCA, tmp_path: Path) -> None:
    # the reload command does nothing: nginx keeps the old certificate in memory; the probe must notice
    target = _target(nginx, nginx.cert_dir, reload_command=["/bin/true"], probe_timeout_s=1.0)
    first = ca.bundle(CERT_ID, [NAME])
    await target.directory(first).install(first)
    nginx.start()
    second = ca.bundle(CERT_ID, [NAME])
    await target.deploy(second)
    with pytest.raises(TargetError) as failed:
        await target.verify(second)
    assert failed.value.code is ErrorCode.VERIFY_FAILED
    assert f"serial {first.serial}" in failed.value.message
