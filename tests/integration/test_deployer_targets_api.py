"""The deployer's targets and bindings through its one path (issue 19), on the real stack: the real
deployer app (create_app; its outbox relay publishes) over a real broker, its internal API (decision 0020)
and `certrail targets` (typer's CliRunner) writing the same database. Then: the internal API refuses
callers without the token (401) and writes without an actor (400); a target whose probe fails is refused
and audited; every change is one admin event on ``<prefix>.events.deployer`` with the right actor; and no
secret (the webhook HMAC key, the ssh client key) is in any topic, any answer, or the outbox, byte for byte."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from typer.testing import CliRunner

from services.cli.targets_cmd import app as targets_cli
from services.common.connectors.secretbox import generate_key
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import decode
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session
from services.common.db_schema import DeployerAdminOutbox
from services.common.internal_api import InternalApiSettings
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.topics_admin import ensure_topics
from services.deployer.app import create_app
from services.deployer.settings import DeployerSettings
from services.gateway.config.actor import cli_actor_name
from tests.conftest import free_ports, poll_until
from tests.integration.test_config_changes_live import checked, every_record, forms
from tests.tls_listener import tls_listener

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "internal-token-" + "t" * 40
HMAC = "hook-hmac-key-of-the-targets-api-test-0123456789"
OPERATOR = "console:alice"


def summary(value: bytes) -> tuple[str, str, str | None, str, str]:
    data = decode(value, CATALOG).data
    return type(data).__name__, data.target, getattr(data, "profile", None), data.actor, data.outcome.value


async def test_targets_and_bindings_through_the_internal_api_and_the_cli(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}.certrail")
    kafka = kafka_settings.model_copy(update={"topic_prefix": topics.prefix})
    await ensure_topics(kafka_settings, list(topics.fixed()), partitions=1)
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'deployer.db'}")
    upgrade(db)
    key = generate_key()
    ssh_key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    settings = DeployerSettings(kafka=kafka, db=db, http_port=0, group_id=f"dep-{uuid.uuid4().hex[:8]}",
                                keys=SecretStr(key), request_key=SecretStr("r" * 32), keys_file=tmp_path / "k",
                                request_key_file=tmp_path / "rk")
    app, _runtime = create_app(settings, InternalApiSettings(token=SecretStr(TOKEN)))
    await app.service_app.start()  # the consumers and the outbox relay
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://deployer",
                               headers={"Authorization": f"Bearer {TOKEN}", "X-Certrail-Actor": OPERATOR})
    answers: list[str] = []
    (closed_port,) = free_ports(1)
    try:
        api = checked(client, answers)

        # -- the token and the actor
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer " + "w" * 40}):
            refused = await client.get("/internal/v1/targets", headers=headers)
            assert refused.status_code == 401 and refused.json()["code"] == "UNAUTHENTICATED"
        no_actor = await client.put("/internal/v1/profiles/web/targets/files", headers={"X-Certrail-Actor": ""})
        assert no_actor.status_code == 400 and no_actor.json()["code"] == "ACTOR_REQUIRED"

        # -- probes that fail: refused with their code, and audited
        hook = {"kind": "webhook", "config": {"url": f"https://localhost:{closed_port}/in"}, "secrets": {"hmac_secret": HMAC}}
        down = await api("PUT", "/internal/v1/targets/hook", 422, json=hook)
        assert down["code"] == "TARGET_UNREACHABLE"
        ssh = {"kind": "ssh", "secrets": {"client_key": ssh_key},
               "config": {"host": "127.0.0.1", "port": closed_port, "user": "deploy", "dir": "/srv/certs", "connect_timeout_s": 3,
                          "host_key": asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()}}
        assert (await api("PUT", "/internal/v1/targets/web1", 422, json=ssh))["code"] == "TARGET_UNREACHABLE"

        # -- targets that answer: stored, shown without secret values
        with tls_listener(tmp_path) as (port, ca_file):
            hook["config"] = {"url": f"https://localhost:{port}/in", "ca_file": str(ca_file)}
            added = await api("PUT", "/internal/v1/targets/hook", 201, json=hook)
            assert added["secrets"] == ["hmac_secret"] and added["kind"] == "webhook"
            assert (await api("POST", "/internal/v1/targets/hook/probe", 200))["reachable"] is True
        gone = await api("POST", "/internal/v1/targets/hook/probe", 200)
        assert gone["reachable"] is False and gone["code"] == "TARGET_UNREACHABLE"
        files = {"kind": "file", "config": {"dir": str(tmp_path / "certs")}}
        await api("PUT", "/internal/v1/targets/files", 201, json=files)
        await api("PUT", "/internal/v1/targets/files", 200, json={**files, "config": {"dir": str(tmp_path / "certs2")}})
        invalid = await api("PUT", "/internal/v1/targets/bad", 422, json={"kind": "file", "config": {"dir": "relative"}})
        assert invalid["code"] == "INVALID_INPUT"
        assert [t["name"] for t in (await api("GET", "/internal/v1/targets", 200))["targets"]] == ["files", "hook"]
        await api("PUT", "/internal/v1/profiles/web/targets/files", 201)
        await api("PUT", "/internal/v1/profiles/web/targets/files", 200)  # already bound: nothing recorded
        assert (await api("GET", "/internal/v1/bindings?profile=web", 200))["bindings"] == [{"profile": "web", "target": "files"}]
        assert (await api("GET", "/internal/v1/targets/files", 200))["profiles"] == ["web"]
        assert (await api("DELETE", "/internal/v1/targets/files", 409))["code"] == "TARGET_IN_USE"
        await api("DELETE", "/internal/v1/profiles/web/targets/files", 204)
        assert (await api("DELETE", "/internal/v1/profiles/web/targets/files", 404))["code"] == "BINDING_NOT_FOUND"
        await api("DELETE", "/internal/v1/targets/files", 204)
        assert (await api("GET", "/internal/v1/targets/files", 404))["code"] == "TARGET_NOT_FOUND"

        # -- the CLI: the same path on the same database; the running deployer publishes its events
        runner = CliRunner()
        env = {"CERTRAIL_DB_URL": db.url, "CERTRAIL_DEPLOYER_KEYS": key}

        async def cli(*args: str, code: int = 0) -> Any:
            result = await asyncio.to_thread(runner.invoke, targets_cli, list(args), env=env)  # it runs its own loop
            assert result.exit_code == code, (args, result.output)
            answers.append(result.output)
            return result

        await cli("add", "cli-files", "--kind", "file", "--config", json.dumps({"dir": str(tmp_path / "cli")}), "--actor", "ops")
        await cli("bind", "api", "cli-files")
        refused_remove = await cli("remove", "cli-files", code=2)
        assert "TARGET_IN_USE" in refused_remove.output and "unbind it first" in refused_remove.output
        await cli("unbind", "api", "cli-files")
        await cli("remove", "cli-files", "--actor", "ops")

        me, a = cli_actor_name(), OPERATOR
        expected = [("TargetCreated", "hook", None, a, "refused"), ("TargetCreated", "web1", None, a, "refused"),
                    ("TargetCreated", "hook", None, a, "succeeded"), ("TargetCreated", "files", None, a, "succeeded"),
                    ("TargetUpdated", "files", None, a, "succeeded"), ("TargetCreated", "bad", None, a, "refused"),
                    ("TargetBound", "files", "web", a, "succeeded"), ("TargetDeleted", "files", None, a, "refused"),
                    ("TargetUnbound", "files", "web", a, "succeeded"), ("TargetDeleted", "files", None, a, "succeeded"),
                    ("TargetCreated", "cli-files", None, "ops", "succeeded"), ("TargetBound", "cli-files", "api", me, "succeeded"),
                    ("TargetDeleted", "cli-files", None, me, "refused"), ("TargetUnbound", "cli-files", "api", me, "succeeded"),
                    ("TargetDeleted", "cli-files", None, "ops", "succeeded")]

        async def published() -> list[tuple[str, str, str | None, str, str]] | None:
            found = [summary(v) for t, v, _ in await every_record(kafka, topics.prefix) if t == topics.deployer_events]
            return found if len(found) >= len(expected) else None

        events = await poll_until(published, lambda: "every admin event on events.deployer", 60, interval_s=0.5)
        assert events == expected
        refusal = next(decode(v, CATALOG).data for t, v, _ in await every_record(kafka, topics.prefix)
                       if t == topics.deployer_events)
        assert refusal.error.code == "TARGET_UNREACHABLE"
    finally:
        await client.aclose()
        await app.service_app.stop()

    # -- no secret anywhere: topics, answers, the outbox (which the relay marked sent)
    engine = make_engine(db)
    try:
        with read_session(engine) as session:
            rows = session.scalars(select(DeployerAdminOutbox)).all()
            assert len(rows) == len(expected) and all(r.sent_at is not None for r in rows)
            stored = "".join(r.value for r in rows).encode()
    finally:
        engine.dispose()
    records = await every_record(kafka, topics.prefix)
    key_body = "".join(ssh_key.splitlines()[1:-1]).encode()  # the base64 body of the OpenSSH key
    for secret in (*forms(HMAC.encode()), key_body, ssh_key.encode()):
        assert not any(secret in everything for _, _, everything in records)
        assert secret not in stored
        assert not any(secret in text.encode() for text in answers)
