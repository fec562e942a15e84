"""The ssh target without a server: its configuration (host key always checked, argv
reload), its client_key secret, `certrail targets add --kind ssh`, the factory, and the
behaviour when nothing answers (the real sshd tests are in tests/integration)."""

from __future__ import annotations

import json
from pathlib import Path

import asyncssh
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from services.cli.main import app
from services.common.connectors.secretbox import generate_key
from services.common.contracts.errors import ErrorCode
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.deployer.store import TargetSpec
from services.deployer.targets.base import Bundle, TargetError
from services.deployer.targets.config import SshTargetConfig, TargetKind, validate_secrets
from services.deployer.targets.factory import build_target
from services.deployer.targets.ssh import SshTarget
from services.deployer.targets.sshfs import quoted
from tests.conftest import free_ports

HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
CLIENT_KEY = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
BASE = {"host": "web1.example.test", "user": "deploy", "dir": "/etc/ssl/certrail", "host_key": HOST_KEY}


@pytest.mark.parametrize(
    ("name", "changes", "problem"),
    [
        ("neither host key nor known_hosts", {"host_key": None}, "exactly one of known_hosts and host_key"),
        ("both", {"known_hosts": "/etc/ssh/ssh_known_hosts"}, "exactly one of known_hosts and host_key"),
        ("relative known_hosts", {"host_key": None, "known_hosts": "known_hosts"}, "absolute"),
        ("not a key", {"host_key": "ssh-ed25519 AAAAnope"}, "not an OpenSSH public key line"),
        ("reload as a shell string", {"reload_command": "systemctl reload nginx"}, "list"),
        ("relative dir", {"dir": "certs"}, "absolute"),
    ],
)
def test_invalid_ssh_configs_are_refused(name: str, changes: dict[str, object], problem: str) -> None:
    values = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    with pytest.raises(ValidationError, match=problem):
        SshTargetConfig.model_validate(values)


def test_a_valid_config_keeps_the_reload_argv_and_quotes_it_for_the_remote_shell() -> None:
    config = SshTargetConfig.model_validate({**BASE, "reload_command": ["systemctl", "reload", "nginx; rm -rf /"]})
    assert config.port == 22 and config.probe_port is None
    assert quoted(config.reload_command or []) == "systemctl reload 'nginx; rm -rf /'"


def test_the_client_key_secret_must_be_an_unencrypted_private_key() -> None:
    assert validate_secrets(TargetKind.SSH, {"client_key": CLIENT_KEY.strip()})
    with pytest.raises(ValueError, match="client_key") as refused:
        validate_secrets(TargetKind.SSH, {"client_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nsecretbytes\n"})
    assert "secretbytes" not in str(refused.value)
    with pytest.raises(ValueError, match="needs the secret client_key"):
        validate_secrets(TargetKind.SSH, {})


def test_the_factory_builds_an_ssh_target() -> None:
    spec = TargetSpec("web1", TargetKind.SSH, SshTargetConfig.model_validate(BASE), ("client_key",), {"client_key": CLIENT_KEY})
    target = build_target(spec)
    assert isinstance(target, SshTarget) and target.kind == "ssh" and target.name == "web1"


def _bundle() -> Bundle:
    return Bundle("web/x", "1a2b", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")


async def test_nothing_listening_is_target_unreachable_and_there_is_nothing_to_roll_back() -> None:
    port = free_ports(1)[0]
    target = SshTarget("web1", SshTargetConfig.model_validate({**BASE, "host": "127.0.0.1", "port": port,
                                                               "connect_timeout_s": 3}), CLIENT_KEY)
    with pytest.raises(TargetError) as down:
        await target.deploy(_bundle())
    assert down.value.code is ErrorCode.TARGET_UNREACHABLE and down.value.transient
    assert f"127.0.0.1:{port}" in down.value.message
    assert await target.rollback(_bundle()) is False  # never reached the host: no second connection attempt


def test_targets_add_kind_ssh_is_validated_and_probed_before_it_is_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'certrail.db'}"
    upgrade(DatabaseSettings(url=url))
    monkeypatch.setenv("CERTRAIL_DB_URL", url)
    monkeypatch.setenv("CERTRAIL_DEPLOYER_KEYS", generate_key())
    key_file = tmp_path / "id_ed25519"
    key_file.write_text(CLIENT_KEY)
    cli = CliRunner()
    config = {**BASE, "reload_command": ["systemctl", "reload", "nginx"]}
    added = cli.invoke(app, ["targets", "add", "web1", "--kind", "ssh", "--config", json.dumps(config),
                             "--secret-file", f"client_key={key_file}"])
    # valid, but probed before it is stored (services/deployer/config/): the host does not exist
    assert added.exit_code == 1 and "TARGET_UNREACHABLE" in added.output and "PRIVATE KEY" not in added.output
    assert cli.invoke(app, ["targets", "show", "web1"]).exit_code == 1  # not stored

    no_key = cli.invoke(app, ["targets", "add", "web2", "--kind", "ssh", "--config", json.dumps(BASE)])
    assert no_key.exit_code == 2 and "client_key" in no_key.output
    unchecked = cli.invoke(app, ["targets", "add", "web2", "--kind", "ssh", "--config",
                                 json.dumps({**BASE, "host_key": None}), "--secret-file", f"client_key={key_file}"])
    assert unchecked.exit_code == 2 and "host key is always checked" in unchecked.output
