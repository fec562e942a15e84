"""A retired key's copies on the targets (issue 20, decision 0026): the versioned directory of a real ssh
target (Debian's sshd on loopback, host key pinned) and of a local file target shared by two certificates.
The retired serial's versions leave (``previous`` with them), the version the service serves stays and is
reported in use, another certificate's version with the same serial is not touched, a second retirement
finds nothing to do, and an unreachable host is a TargetError, not a crash."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.common.contracts.errors import ErrorCode
from services.deployer.runner import RetryPolicy, deploy_with_rollback
from services.deployer.targets.base import Bundle, TargetError, public_key_sha256
from services.deployer.targets.config import FileTargetConfig, SshTargetConfig
from services.deployer.targets.files import FileTarget
from services.deployer.targets.ssh import SshTarget
from tests.deployer_support import MiniCA, SshServer, key_pem

pytestmark = [pytest.mark.integration]
CERT_ID = "web/keys.deploy.test"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    server = SshServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def _no_sleep(_: float) -> None:
    return None


def _bundle(ca: MiniCA, certificate_id: str, serial: int) -> tuple[Bundle, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate, _ = ca.leaf(["keys.deploy.test"], key, serial=serial)
    bundle = Bundle(certificate_id, format(serial, "x"), certificate, ca.chain, key_pem(key))
    return bundle, public_key_sha256(key_pem(key))


def _versions(root: Path) -> list[str]:
    return sorted(p.name.rsplit("-", 1)[0] for p in (root / "versions").iterdir())


async def test_ssh_target_removes_the_retired_serial_and_keeps_the_served_one(sshd: SshServer, tmp_path: Path) -> None:
    remote, ca = tmp_path / "remote", MiniCA()
    target = SshTarget("web-ssh", SshTargetConfig(host="127.0.0.1", port=sshd.port, user=sshd.user,
                                                  host_key=sshd.host_key_line, dir=str(remote), connect_timeout_s=10.0),
                       sshd.client_key)
    (old, old_hash), (new, new_hash) = _bundle(ca, CERT_ID, 0x51), _bundle(ca, CERT_ID, 0x52)
    for bundle in (old, new):
        result = await deploy_with_rollback(target, bundle, RetryPolicy(1), sleep=_no_sleep)
        assert result.ok, result.error
    assert _versions(remote) == ["51", "52"] and os.readlink(remote / "previous").startswith("versions/51-")

    assert await target.retire_key(CERT_ID, "51", old_hash) is True
    assert _versions(remote) == ["52"] and not (remote / "previous").is_symlink()
    assert (remote / "current" / "privkey.pem").read_bytes() == new.private_key_pem
    assert await target.retire_key(CERT_ID, "51", old_hash) is True  # again: nothing left, not an error
    assert await target.retire_key(CERT_ID, "52", new_hash) is False  # served now: in use, untouched
    assert _versions(remote) == ["52"] and (remote / "current" / "privkey.pem").exists()

    sshd.stop()
    with pytest.raises(TargetError) as stopped:
        await target.retire_key(CERT_ID, "52", new_hash)
    assert stopped.value.code is ErrorCode.TARGET_UNREACHABLE


async def test_a_shared_file_directory_keeps_another_certificates_version_of_the_same_serial(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    target = FileTarget("files", FileTargetConfig(dir=str(shared)))
    (mine, mine_hash), (theirs, _) = _bundle(MiniCA(), "web-a", 0x77), _bundle(MiniCA(), "web-b", 0x77)  # two CAs, one serial
    (newer, _) = _bundle(MiniCA(), "web-b", 0x78)
    for bundle in (mine, theirs, newer):
        result = await deploy_with_rollback(target, bundle, RetryPolicy(1), sleep=_no_sleep)
        assert result.ok, result.error
    # the last install pruned all but current (78) and previous (theirs, 77): put mine back beside them
    await target.directory(mine).fs.install_files(str(shared / "versions" / "77-mine0000"), 0o755, [
        ("cert.pem", mine.certificate_pem.encode(), 0o644), ("privkey.pem", mine.private_key_pem or b"", 0o600)], [])
    assert await target.retire_key("web-a", "77", mine_hash) is True
    assert not (shared / "versions" / "77-mine0000").exists()
    assert _versions(shared) == ["77", "78"]  # theirs (previous) and the served one stay
    assert os.readlink(shared / "previous").startswith("versions/77-")
