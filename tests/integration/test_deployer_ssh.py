"""The ssh target against a real OpenSSH server from Debian's packages (sshd, started by
the test on a free loopback port with its own host key), host-key checking on: the
versioned layout with its modes and the `current` swap, verify reading the serial back,
a failing remote reload rolled back to the previous serial, a wrong pinned host key
refused before anything is uploaded, and a stopped sshd reported as unreachable."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from services.common.contracts.errors import ErrorCode
from services.deployer.runner import RetryPolicy, deploy_with_rollback
from services.deployer.targets.base import TargetError, certificate_serial
from services.deployer.targets.config import SshTargetConfig
from services.deployer.targets.probe import probe_context, served_serial
from services.deployer.targets.ssh import SshTarget
from tests.deployer_support import MiniCA, NginxServer, SshServer

NAME = "app.deploy.test"
CERT_ID = "web/app.deploy.test"


@pytest.fixture
def ca() -> MiniCA:
    return MiniCA()


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    server = SshServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _target(server: SshServer, remote_dir: Path, client_key: str | None = None, **overrides: object) -> SshTarget:
    values: dict[str, object] = dict(host="127.0.0.1", port=server.port, user=server.user, host_key=server.host_key_line,
                                     dir=str(remote_dir), connect_timeout_s=10.0, command_timeout_s=20.0)
    values.update(overrides)
    return SshTarget("web-ssh", SshTargetConfig(**values), client_key or server.client_key)  # type: ignore[arg-type]


async def _no_sleep(_: float) -> None:
    return None


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_deploy_uploads_a_versioned_set_with_modes_and_swaps_current(sshd: SshServer, ca: MiniCA, tmp_path: Path) -> None:
    remote = tmp_path / "remote" / "certs"
    reloads = tmp_path / "reloads.log"
    target = _target(sshd, remote, reload_command=["sh", "-c", f'readlink "$1" >> {reloads}', "reload", str(remote / "current")])
    first = ca.bundle(CERT_ID, [NAME])
    await target.deploy(first)
    assert await target.verify(first) == first.serial

    second = ca.bundle(CERT_ID, [NAME])
    await target.deploy(second)
    assert await target.verify(second) == second.serial

    current, previous = os.readlink(remote / "current"), os.readlink(remote / "previous")
    assert current.startswith(f"versions/{second.serial}-") and previous.startswith(f"versions/{first.serial}-")
    version = remote / current
    assert sorted(p.name for p in version.iterdir()) == ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"]
    assert {name: _mode(version / name) for name in ("cert.pem", "chain.pem", "fullchain.pem")} == dict.fromkeys(
        ("cert.pem", "chain.pem", "fullchain.pem"), 0o644)
    assert _mode(version / "privkey.pem") == 0o600
    assert (remote / "current" / "privkey.pem").read_bytes() == second.private_key_pem
    assert certificate_serial((remote / "current" / "cert.pem").read_text()) == second.serial
    assert (remote / "current" / "fullchain.pem").read_text() == second.fullchain_pem
    assert not list(remote.glob("**/*.tmp")) and not list(remote.glob(".*"))
    # the reload ran after each swap, and saw the new version already current
    assert reloads.read_text().split() == [previous, current]
    assert sorted(os.listdir(remote / "versions")) == sorted([current.split("/")[1], previous.split("/")[1]])

    # the same host through a known_hosts file instead of a pinned key line
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_line())
    by_file = _target(sshd, remote, host_key=None, known_hosts=str(known_hosts))
    assert await by_file.verify(second) == second.serial

    # a requester-held key: no privkey.pem in the new version
    third = ca.bundle(CERT_ID, [NAME], with_key=False)
    await by_file.deploy(third)
    assert await by_file.verify(third) == third.serial
    assert not (remote / "current" / "privkey.pem").exists()


async def test_a_failing_remote_reload_rolls_back_to_the_previous_serial(sshd: SshServer, ca: MiniCA, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    good = ca.bundle(CERT_ID, [NAME])
    bad = ca.bundle(CERT_ID, [NAME])
    # a reload that refuses the bad certificate (as `nginx -t` would), so the rollback's reload succeeds
    refuse = f'case "$(readlink "$1")" in versions/{bad.serial}-*) echo "refusing $1" >&2; exit 3;; esac'
    target = _target(sshd, remote, reload_command=["sh", "-c", refuse, "reload", str(remote / "current")])
    ok = await deploy_with_rollback(target, good, RetryPolicy(attempts=3), sleep=_no_sleep)
    assert ok.ok and ok.verified_serial == good.serial

    failed = await deploy_with_rollback(target, bad, RetryPolicy(attempts=3), sleep=_no_sleep)
    assert failed.error is not None and failed.error.code is ErrorCode.INSTALL_FAILED, failed
    assert "exited with 3" in failed.error.message and "refusing" in failed.error.message
    assert failed.rolled_back is True and failed.attempts == 1  # a refusal is not retried
    assert certificate_serial((remote / "current" / "cert.pem").read_text()) == good.serial
    assert (remote / "current" / "privkey.pem").read_bytes() == good.private_key_pem
    assert await target.verify(good) == good.serial  # the previous one reads back as installed


async def test_verify_failure_rolls_back_and_a_fresh_host_has_nothing_to_restore(sshd: SshServer, ca: MiniCA,
                                                                                tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    target = _target(sshd, remote, key_mode="0640")
    first = ca.bundle(CERT_ID, [NAME])
    await target.deploy(first)
    (remote / "current" / "privkey.pem").chmod(0o644)  # someone widened it: verify must notice
    with pytest.raises(TargetError) as failed:
        await target.verify(first)
    assert failed.value.code is ErrorCode.VERIFY_FAILED and "mode 0644" in failed.value.message
    assert await target.rollback(first) is False  # first install: no previous version to put back


async def test_a_wrong_pinned_host_key_is_refused_before_anything_is_uploaded(sshd: SshServer, ca: MiniCA,
                                                                            tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    target = _target(sshd, remote, host_key=impostor)
    result = await deploy_with_rollback(target, ca.bundle(CERT_ID, [NAME]), RetryPolicy(attempts=3), sleep=_no_sleep)
    assert result.error is not None and result.error.code is ErrorCode.INSTALL_FAILED
    assert "host key mismatch" in result.error.message and f"127.0.0.1:{sshd.port}" in result.error.message
    assert result.attempts == 1 and result.rolled_back is False and not result.error.transient
    assert not remote.exists()

    # a known_hosts file without this host: refused the same way
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {impostor}\n")
    with pytest.raises(TargetError) as refused:
        await _target(sshd, remote, host_key=None, known_hosts=str(known_hosts)).deploy(ca.bundle(CERT_ID, [NAME]))
    assert refused.value.code is ErrorCode.INSTALL_FAILED and "host key mismatch" in refused.value.message
    assert not remote.exists()


async def test_a_client_key_the_server_does_not_accept_is_install_failed(sshd: SshServer, ca: MiniCA, tmp_path: Path) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    target = _target(sshd, tmp_path / "remote", client_key=stranger)
    with pytest.raises(TargetError) as refused:
        await target.deploy(ca.bundle(CERT_ID, [NAME]))
    assert refused.value.code is ErrorCode.INSTALL_FAILED and "refused the client key" in refused.value.message
    assert not refused.value.transient and not (tmp_path / "remote").exists()


async def test_a_stopped_sshd_is_target_unreachable_and_retried(sshd: SshServer, ca: MiniCA, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    target = _target(sshd, remote, connect_timeout_s=3.0)
    first = ca.bundle(CERT_ID, [NAME])
    assert (await deploy_with_rollback(target, first, RetryPolicy(attempts=3), sleep=_no_sleep)).ok
    sshd.stop()

    second = ca.bundle(CERT_ID, [NAME])
    with pytest.raises(TargetError) as down:
        await target.deploy(second)
    assert down.value.code is ErrorCode.TARGET_UNREACHABLE and down.value.transient
    result = await deploy_with_rollback(target, second, RetryPolicy(attempts=3), sleep=_no_sleep)
    assert result.error is not None and result.error.code is ErrorCode.TARGET_UNREACHABLE
    assert result.attempts == 3 and result.rolled_back is False
    assert certificate_serial((remote / "current" / "cert.pem").read_text()) == first.serial


async def test_reload_over_ssh_then_the_tls_probe_sees_the_new_serial_and_the_old_one_after_rollback(
    sshd: SshServer, ca: MiniCA, tmp_path: Path
) -> None:
    # the "remote host" serves TLS with a real nginx reading <dir>/current/ (both on loopback)
    remote = tmp_path / "remote"
    nginx = NginxServer(tmp_path, remote, NAME)
    first = ca.bundle(CERT_ID, [NAME])
    await _target(sshd, remote).deploy(first)
    try:
        nginx.start()
        target = _target(sshd, remote, reload_command=[nginx.binary, *nginx.args, "-c", str(nginx.config), "-s", "reload"],
                         probe_port=nginx.port, server_name=NAME, probe_timeout_s=8.0)
        context = probe_context(cafile=str(ca.write_root(tmp_path / "root.pem")))

        second = ca.bundle(CERT_ID, [NAME])
        await target.deploy(second)
        assert await target.verify(second) == second.serial
        assert await served_serial("127.0.0.1", nginx.port, NAME, context) == second.serial

        # served, but for a name the probe does not accept: VERIFY_FAILED, rollback proven by the probe
        wrong_name = ca.bundle(CERT_ID, ["other.deploy.test"])
        result = await deploy_with_rollback(target, wrong_name, RetryPolicy(attempts=3), sleep=_no_sleep)
        assert result.error is not None and result.error.code is ErrorCode.VERIFY_FAILED and result.rolled_back, result
        assert await served_serial("127.0.0.1", nginx.port, NAME, context) == second.serial
    finally:
        nginx.stop()
