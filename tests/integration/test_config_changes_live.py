"""Every configuration change the gateway and the issuer own, through each door that offers it, on the real stack
(issue 19, decisions 0019 and 0034): the HTTP API (the console calls it with the user's token) and the CLI
(`certrail tokens`, `certrail connectors`), against a real broker, the emCA simulator, the real gateway app
(its outbox relay publishes what the CLI wrote) and the real issuer (`certrail serve issuer`: the connector
registry, its internal API and its outbox relay), with the real auditor (`certrail serve auditor`) storing the
records. Then: one admin record per change with the right actor, in the topic
and in the audit store; `certrail audit trail --connector/--actor` finds them; and no secret (connector
password, ClientID, AES key, PFX and its password, HMAC key, API token) is in any topic, the audit
store or the outbox, byte for byte (raw, base64, hex)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr
from sqlalchemy import select
from typer.testing import CliRunner

from emca_sim.server import SimServer, start_in_thread
from services.cli.audit_cmd import app as audit_cli
from services.cli.connectors_cmd import app as connectors_cli
from services.cli.tokens_cmd import app as tokens_cli
from services.common.connectors.models import EmcaVersion
from services.common.connectors.secretbox import SecretsSettings, generate_key
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import decode
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session
from services.common.db_schema import AuditRecord, GatewayAdminOutbox, IssuerAdminOutbox
from services.common.internal_api import InternalApiSettings
from services.common.kafka_config import admin_kwargs, consumer_kwargs
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.topics_admin import delete_topics, ensure_topics
from services.gateway import connector_view
from services.gateway.app import create_app
from services.gateway.config.actor import cli_actor_name
from services.gateway.settings import GatewaySettings
from tests.conftest import free_ports, poll_until
from tests.emca_sim_helpers import sim_credentials, sim_spec
from tests.integration.test_gateway_api import connector_json, profile_body

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
HMAC_SECRET = b"hmac-key-of-ci-" + bytes(range(17))
OPERATOR = "ops-oncall"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    with start_in_thread(tmp_path_factory.mktemp("emca-sim-config"), port=0, crl_port=0, admin_port=0) as server:
        yield server


def forms(secret: bytes) -> list[bytes]:
    """The spellings a leaked secret could take in JSON: raw, base64 (both alphabets), hex."""
    return [secret, base64.b64encode(secret), base64.urlsafe_b64encode(secret).rstrip(b"="), secret.hex().encode()]


async def every_record(kafka: KafkaSettings, prefix: str) -> list[tuple[str, bytes, bytes]]:
    """(topic, value, key + value + headers) of every record in every topic of ``prefix``, from the start."""
    admin = AIOKafkaAdminClient(**admin_kwargs(kafka))
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix + ".")]
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    partitions = [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]
    assert {tp.topic for tp in partitions} == set(names)
    consumer = AIOKafkaConsumer(**consumer_kwargs(kafka, f"read-{uuid.uuid4().hex[:8]}"))
    await consumer.start()
    found: list[tuple[str, bytes, bytes]] = []
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    everything = (r.key or b"") + (r.value or b"") + b"".join(v or b"" for _, v in r.headers or ())
                    found.append((tp.topic, r.value or b"", everything))
    finally:
        await consumer.stop()
    return found


def checked(client: httpx.AsyncClient, answers: list[str]) -> Callable[..., Awaitable[Any]]:
    """``await api(method, path, status, **kwargs)``: a call through ``client`` that must answer ``status``;
    its JSON (None when empty). Every answer's text is kept in ``answers`` (to look for secrets in)."""

    async def api(method: str, path: str, status: int, **kwargs: Any) -> Any:
        answer = await client.request(method, path, **kwargs)
        assert answer.status_code == status, (method, path, answer.text)
        answers.append(answer.text)
        return answer.json() if answer.content else None

    return api


def admin_events(records: list[tuple[str, bytes, bytes]], topic: str) -> list[Any]:
    return [decode(value, CATALOG) for t, value, _ in records if t == topic]


def summary(envelope: Any) -> tuple[str, str, str, str]:
    data = envelope.data
    subject = next(f"{f}:{getattr(data, f)}" for f in ("connector", "profile", "token_id", "requester") if hasattr(data, f))
    return type(data).__name__, subject, data.actor, data.outcome.value


async def test_every_change_through_every_door_is_one_admin_record_without_secrets(
        sim: SimServer, kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}.certrail")
    kafka = kafka_settings.model_copy(update={"topic_prefix": topics.prefix})
    await ensure_topics(kafka_settings, list(topics.fixed()), partitions=1)
    gateway_db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'gateway.db'}")
    audit_db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'auditor.db'}")
    upgrade(gateway_db)
    upgrade(audit_db)
    secrets_key = generate_key()
    env = {"CERTRAIL_DB_URL": gateway_db.url, "CERTRAIL_SECRETS_KEYS": secrets_key,
           "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers, "CERTRAIL_KAFKA_TOPIC_PREFIX": topics.prefix}
    runner = CliRunner()
    me = cli_actor_name()
    printed: list[str] = []

    async def cli(app: Any, *args: str, code: int = 0) -> Any:
        result = await asyncio.to_thread(runner.invoke, app, list(args), env=env)  # the CLI runs its own event loops
        assert result.exit_code == code, (args, result.output, result.stderr)
        printed.append(result.output)
        return result

    # the first admin token: only the CLI can make it (recorded before any gateway runs)
    admin_token = (await cli(tokens_cli, "create", "--role", "admin", "--identity", "root-admin", "--actor", OPERATOR)).stdout.strip()
    issuer, issuer_url = _start_issuer(kafka, gateway_db, secrets_key, tmp_path)  # the connector registry (decision 0034)
    settings = GatewaySettings(kafka=kafka, db=gateway_db, group_id=f"gw-{uuid.uuid4().hex[:8]}", scheduler_enabled=False,
                               secrets=SecretsSettings(keys=SecretStr(secrets_key)), issuer_url=issuer_url,
                               internal=InternalApiSettings(token=INTERNAL_TOKEN))
    await _issuer_answers(issuer_url, issuer)
    app, runtime = create_app(settings)
    await app.service_app.start()  # the consumers, and the relay: it publishes the CLI's record at start
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway",
                               headers={"Authorization": f"Bearer {admin_token}"})
    auditor = _start_auditor(kafka, audit_db, tmp_path)
    expected: list[tuple[str, str, str, str]] = [("TokenCreated", "", OPERATOR, "succeeded")]
    answers: list[str] = []
    try:
        api = checked(client, answers)

        # -- the HTTP API: every change, as root-admin
        await api("POST", "/v1/connectors", 201, json=connector_json(sim, EmcaVersion.V4_0_17, "ca-one"))
        password = sim_spec(sim, EmcaVersion.V4_0_17, "x").secrets.password.get_secret_value()
        edited = await api("PATCH", "/v1/connectors/ca-one", 200, json={"concurrency": 3, "password": password})
        assert edited["changed"]["concurrency"] == 3
        await api("POST", "/v1/connectors/ca-one/deactivate", 200)
        await api("POST", "/v1/connectors/ca-one/activate", 200)
        await api("POST", "/v1/profiles", 201, json=profile_body("web", "ca-one"))
        await api("PUT", "/v1/profiles/web", 200, json=profile_body("web", "ca-one", validity_days=30))
        refused = await api("POST", "/v1/profiles", 422, json=profile_body("lost", "no-such-connector"))
        assert refused["code"] == "CONNECTOR_NOT_FOUND"
        token = await api("POST", "/v1/tokens", 201, json={"identity": "ci", "role": "requester"})
        await api("DELETE", f"/v1/tokens/{token['token_id']}", 204)
        await api("POST", "/v1/requesters/ci/keys", 201,
                  json={"key_id": "k1", "secret_base64": base64.b64encode(HMAC_SECRET).decode()})
        await api("DELETE", "/v1/requesters/ci/keys/k1", 204)
        in_use = await api("DELETE", "/v1/connectors/ca-one", 409)
        assert in_use["code"] == "CONNECTOR_IN_USE"
        await api("DELETE", "/v1/profiles/web", 204)
        await api("DELETE", "/v1/connectors/ca-one", 204)
        a = "root-admin"
        expected += [("ConnectorCreated", "connector:ca-one", a, "succeeded"), ("ConnectorUpdated", "connector:ca-one", a, "succeeded"),
                     ("ConnectorDeactivated", "connector:ca-one", a, "succeeded"),
                     ("ConnectorActivated", "connector:ca-one", a, "succeeded"),
                     ("ProfileCreated", "profile:web", a, "succeeded"), ("ProfileUpdated", "profile:web", a, "succeeded"),
                     ("ProfileCreated", "profile:lost", a, "refused"),
                     ("TokenCreated", f"token_id:{token['token_id']}", a, "succeeded"),
                     ("TokenRevoked", f"token_id:{token['token_id']}", a, "succeeded"),
                     ("RequesterKeyAdded", "requester:ci", a, "succeeded"), ("RequesterKeyRevoked", "requester:ci", a, "succeeded"),
                     ("ConnectorDeleted", "connector:ca-one", a, "refused"), ("ProfileDeleted", "profile:web", a, "succeeded"),
                     ("ConnectorDeleted", "connector:ca-one", a, "succeeded")]

        # -- the CLI: the same database, no Kafka needed; as the OS user or --actor
        cli_token = (await cli(tokens_cli, "create", "--role", "auditor", "--identity", "audit-team")).stdout.strip()
        cli_token_id = cli_token.split("_")[1]
        await cli(tokens_cli, "revoke", cli_token_id, "--actor", OPERATOR)
        sim_dir = str(sim.data_dir)
        wrong_ca = await cli(connectors_cli, "create", "cli-two", "--from-sim-dir", sim_dir, "--version", "V4.2.3",
                             "--issuing-ca", "certrail sim issuing ca p-256", code=1)  # refused: the CA's name is not exact
        assert "error: ISSUING_CA_NOT_FOUND:" in wrong_ca.stderr
        view_engine = make_engine(gateway_db)

        async def gateway_sees(status: str | None) -> None:
            """The running gateway learns the CLI's change from the issuer's event (decision 0034): its own view."""
            def seen() -> bool:
                with read_session(view_engine) as session:
                    return connector_view.live_status(session, "cli-two") == status
            await poll_until(seen, lambda: f"the gateway's view to show cli-two {status}", timeout_s=60, in_thread=True)

        try:
            await cli(connectors_cli, "create", "cli-two", "--from-sim-dir", sim_dir, "--version", "V4.2.3")
            await gateway_sees("enabled")
            await cli(connectors_cli, "update", "cli-two", "--concurrency", "2", "--actor", OPERATOR)
            await cli(connectors_cli, "disable", "cli-two", "--reason", "maintenance")
            await gateway_sees("disabled")
            await cli(connectors_cli, "enable", "cli-two")
            await cli(connectors_cli, "delete", "cli-two", "--actor", OPERATOR)
            await gateway_sees(None)
        finally:
            view_engine.dispose()
        expected += [("TokenCreated", f"token_id:{cli_token_id}", me, "succeeded"),
                     ("TokenRevoked", f"token_id:{cli_token_id}", OPERATOR, "succeeded"),
                     ("ConnectorCreated", "connector:cli-two", me, "refused"),
                     ("ConnectorCreated", "connector:cli-two", me, "succeeded"),
                     ("ConnectorUpdated", "connector:cli-two", OPERATOR, "succeeded"),
                     ("ConnectorDeactivated", "connector:cli-two", me, "succeeded"),
                     ("ConnectorActivated", "connector:cli-two", me, "succeeded"),
                     ("ConnectorDeleted", "connector:cli-two", OPERATOR, "succeeded")]

        # -- one record per change on the topic, each published once (the relay publishes the CLI's)
        async def published() -> list[Any] | None:
            records = await every_record(kafka, topics.prefix)
            events = admin_events(records, topics.gateway_events) + admin_events(records, topics.issuer_events)
            return events if len(events) >= len(expected) else None

        events = await poll_until(published, lambda: "the admin events on the gateway's and the issuer's topics", timeout_s=90)
        assert isinstance(events, list)
        assert len({e.id for e in events}) == len(events) == len(expected), Counter(summary(e) for e in events)
        seen = sorted(summary(e) for e in events)
        first_token = next(s for s in seen if s[0] == "TokenCreated" and s[2] == OPERATOR)
        assert sorted((*e[:1], first_token[1] if e[1] == "" else e[1], *e[2:]) for e in expected) == seen
        engine = make_engine(gateway_db)
        try:
            with read_session(engine) as session:
                outbox = session.execute(select(GatewayAdminOutbox.value, GatewayAdminOutbox.sent_at)).all()
                issuer_outbox = session.execute(select(IssuerAdminOutbox.value, IssuerAdminOutbox.sent_at)).all()
        finally:
            engine.dispose()
        assert all(type(e.data).__name__.startswith("Connector") == (e.source == "/certrail/issuer/config") for e in events)
        assert len(issuer_outbox) == sum(1 for e in expected if e[0].startswith("Connector"))
        outbox = [*outbox, *issuer_outbox]
        assert len(outbox) == len(expected) and all(sent_at is not None for _, sent_at in outbox)

        # -- the auditor stores them like every other record; the trail finds them by connector and actor
        ids = {e.id for e in events}
        audit_engine = make_engine(audit_db)

        def stored() -> list[AuditRecord] | None:
            with read_session(audit_engine) as session:
                rows = list(session.scalars(select(AuditRecord)))
                session.expunge_all()
            return rows if ids <= {r.event_id for r in rows} else None

        try:
            rows = await poll_until(stored, lambda: "the auditor storing every admin event", timeout_s=90, in_thread=True)
        finally:
            audit_engine.dispose()
        assert isinstance(rows, list)
        trail_env = {**env, "CERTRAIL_DB_URL": audit_db.url}
        by_connector = runner.invoke(audit_cli, ["trail", "--connector", "cli-two", "--json"], env=trail_env)
        assert by_connector.exit_code == 0, by_connector.output
        lines = [json.loads(line) for line in by_connector.stdout.splitlines()]
        assert [(x["event_type"].split(".")[3], x["actor"], x["outcome"]) for x in lines] == [
            ("connector_created", me, "refused"), ("connector_created", me, "succeeded"),
            ("connector_updated", OPERATOR, "succeeded"), ("connector_deactivated", me, "succeeded"),
            ("connector_activated", me, "succeeded"), ("connector_deleted", OPERATOR, "succeeded")]
        by_actor = runner.invoke(audit_cli, ["trail", "--actor", OPERATOR, "--json"], env=trail_env)
        assert by_actor.exit_code == 0, by_actor.output
        assert len(by_actor.stdout.splitlines()) == sum(1 for e in expected if e[2] == OPERATOR) == 4
        none = runner.invoke(audit_cli, ["trail", "--profile", "never-was"], env=trail_env)
        assert none.exit_code == 1

        # -- no secret anywhere: every topic, the audit store, the outbox
        v4017 = sim_spec(sim, EmcaVersion.V4_0_17, "x").secrets
        v423 = sim_credentials(sim, EmcaVersion.V4_2_3)
        secret_values = [v4017.password.get_secret_value().encode(), v4017.pfx.get_secret_value(),  # type: ignore[union-attr]
                         v4017.aes_key.get_secret_value().encode(), v4017.pfx_password.get_secret_value().encode(),  # type: ignore[union-attr]
                         str(v423["password"]).encode(), str(v423["client_id"]).encode(), HMAC_SECRET,
                         admin_token.encode(), token["token"].encode(), cli_token.encode()]
        assert all(len(s) >= 8 for s in secret_values)
        haystacks = [everything for _, _, everything in await every_record(kafka, topics.prefix)]
        haystacks += [(r.key or b"") + (r.value or b"") + (r.headers or "").encode() for r in rows]
        haystacks += [value.encode() for value, _ in outbox]
        for secret in secret_values:
            for form in forms(secret):
                assert not any(form in haystack for haystack in haystacks), f"a secret ({len(secret)} bytes) leaked"
        assert sum(token["token"] in text for text in answers) == 1  # answered once, by POST /v1/tokens
    finally:
        await client.aclose()
        await app.service_app.stop()
        _stop(auditor)
        _stop(issuer)
        await delete_topics(kafka_settings, [*topics.fixed(), topics.commands("ca-one"), topics.commands("cli-two")])


def _start_auditor(kafka: KafkaSettings, db: DatabaseSettings, tmp_path: Path) -> subprocess.Popen[bytes]:
    (port,) = free_ports(1)
    env = {**os.environ, "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "CERTRAIL_KAFKA_TOPIC_PREFIX": kafka.topic_prefix, "CERTRAIL_DB_URL": db.url,
           "CERTRAIL_AUDITOR_HTTP_PORT": str(port), "CERTRAIL_AUDITOR_GROUP_ID": f"auditor-{uuid.uuid4().hex[:8]}",
           "CERTRAIL_AUDITOR_SIGNING_KEY_FILE": str(tmp_path / "keys" / "checkpoint.pem"),
           "CERTRAIL_AUDITOR_TOPIC_REFRESH_INTERVAL_MS": "1000"}
    with (tmp_path / "auditor.log").open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "services.cli.main", "serve", "auditor"],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


INTERNAL_TOKEN = SecretStr("internal-live-token-" + "y" * 24)


def _start_issuer(kafka: KafkaSettings, db: DatabaseSettings, secrets_key: str,
                  tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`certrail serve issuer` over the same database and secrets key; its internal API's base URL."""
    (port,) = free_ports(1)
    env = {**os.environ, "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "CERTRAIL_KAFKA_TOPIC_PREFIX": kafka.topic_prefix, "CERTRAIL_DB_URL": db.url, "CERTRAIL_SECRETS_KEYS": secrets_key,
           "CERTRAIL_ISSUER_HTTP_PORT": str(port), "CERTRAIL_ISSUER_GROUP_ID": f"issuer-{uuid.uuid4().hex[:8]}",
           "CERTRAIL_INTERNAL_TOKEN": INTERNAL_TOKEN.get_secret_value()}
    with (tmp_path / "issuer.log").open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "services.cli.main", "serve", "issuer"],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return process, f"http://127.0.0.1:{port}"


async def _issuer_answers(base_url: str, process: subprocess.Popen[bytes]) -> None:
    """Wait until the issuer's internal API answers (the issuer process still running)."""
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {INTERNAL_TOKEN.get_secret_value()}"},
                                 timeout=2.0) as client:
        async def answers() -> bool:
            assert process.poll() is None, "the issuer exited"
            try:
                return (await client.get("/internal/v1/connectors")).status_code == 200
            except httpx.HTTPError:
                return False

        await poll_until(answers, lambda: "the issuer's internal API to answer", timeout_s=60)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

