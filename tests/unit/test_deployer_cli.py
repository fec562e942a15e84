"""`certrail targets ...` against a migrated SQLite database: add (validated), bind, list,
show (secrets never shown), remove refused while bound, clear error codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli.main import app
from services.common.connectors.secretbox import generate_key
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from tests.tls_listener import tls_listener


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    url = f"sqlite:///{tmp_path / 'certrail.db'}"
    upgrade(DatabaseSettings(url=url))
    monkeypatch.setenv("CERTRAIL_DB_URL", url)
    monkeypatch.setenv("CERTRAIL_DEPLOYER_KEYS", generate_key())
    return CliRunner()


def test_targets_add_bind_list_show_remove(cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "hook-secret-" + "z" * 40
    monkeypatch.setenv("HOOK_SECRET", secret)
    ok = cli.invoke(app, ["targets", "add", "files", "--kind", "file", "--config", json.dumps({"dir": str(tmp_path / "certs")})])
    assert ok.exit_code == 0, ok.output
    with tls_listener(tmp_path) as (port, ca_file):  # the target is probed before it is stored
        hook_config = {"url": f"https://localhost:{port}/in", "ca_file": str(ca_file)}
        hook = cli.invoke(app, ["targets", "add", "hook", "--kind", "webhook", "--config", json.dumps(hook_config),
                                "--secret-env", "hmac_secret=HOOK_SECRET"])
    assert hook.exit_code == 0, hook.output
    assert cli.invoke(app, ["targets", "bind", "web", "files"]).exit_code == 0
    listed = cli.invoke(app, ["targets", "list"]).output
    assert "files\tfile\tprofiles: web" in listed and "hook\twebhook\tprofiles: -" in listed
    shown = cli.invoke(app, ["targets", "show", "hook"])
    assert secret not in shown.output and json.loads(shown.output)["config"]["url"] == hook_config["url"]

    refused = cli.invoke(app, ["targets", "remove", "files"])
    assert refused.exit_code == 2 and "unbind it first" in refused.output
    assert cli.invoke(app, ["targets", "unbind", "web", "files"]).exit_code == 0
    assert cli.invoke(app, ["targets", "remove", "files"]).exit_code == 0
    missing = cli.invoke(app, ["targets", "show", "files"])
    assert missing.exit_code == 1 and "TARGET_NOT_FOUND" in missing.output


def test_invalid_targets_are_refused_with_a_code(cli: CliRunner) -> None:
    relative = cli.invoke(app, ["targets", "add", "bad", "--kind", "file", "--config", '{"dir": "certs"}'])
    assert relative.exit_code == 2 and "INVALID_INPUT" in relative.output and "absolute" in relative.output
    shared_key = cli.invoke(app, ["targets", "add", "bad", "--kind", "file", "--config", '{"dir": "/srv/x", "key_mode": "0644"}'])
    assert shared_key.exit_code == 2 and "key_mode" in shared_key.output
    no_secret = cli.invoke(app, ["targets", "add", "bad", "--kind", "webhook", "--config", '{"url": "https://h.test/"}'])
    assert no_secret.exit_code == 2 and "hmac_secret" in no_secret.output
    unbound = cli.invoke(app, ["targets", "bind", "web", "nothing"])
    assert unbound.exit_code == 1 and "TARGET_NOT_FOUND" in unbound.output
