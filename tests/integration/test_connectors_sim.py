"""The emCA client and the connector registry against the real simulator, for all three dialects:
the shared contract (issue, revoke + CRL over HTTP, manual approval, faults), every validation
failure produced for real, creation pinning the CA and creating the command topic on a real
Kafka, and the `certrail connectors` CLI end to end."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import Engine
from typer.testing import CliRunner

from emca_sim.server import SimServer, start_in_thread
from services.cli.connectors_cmd import app as connectors_cli
from services.common import migrate
from services.common.connectors.models import ConnectorEdit, ConnectorError, ConnectorStatus
from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.contracts.errors import ErrorCode
from services.common.contracts.topics import Topics
from services.common.emca.client import connect
from services.common.emca.support import certificate_sha256
from services.common.emca.types import EmcaConnection, EmcaVersion, HttpOptions, TransientError
from services.common.kafka_config import admin_kwargs
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.topics_admin import delete_topics
from services.issuer.registry.registry import ConnectorRegistry, KafkaTopicCreator
from tests.conftest import free_ports
from tests.emca_contract import EmcaConnectionContract
from tests.emca_sim_helpers import USERS, VERSIONS, SimDriver, sim_credentials, sim_endpoint, sim_spec


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    with start_in_thread(tmp_path_factory.mktemp("emca-sim-connectors"), port=0, crl_port=0, admin_port=0) as server:
        yield server


@pytest.fixture(scope="module")
def admin(sim: SimServer) -> Iterator[httpx.Client]:
    trust = ssl.create_default_context(cafile=str(sim.data_dir / "tls-ca.pem"))
    with httpx.Client(base_url=sim.endpoints.admin_url, verify=trust, timeout=10,
                      headers={"Authorization": f"Bearer {sim.admin_token}"}) as client:
        yield client


class TestSimEmcaConnection(EmcaConnectionContract):
    """The real httpx client against the simulator, every dialect."""

    @pytest.fixture(params=list(EmcaVersion), ids=str)
    def version(self, request: pytest.FixtureRequest) -> EmcaVersion:
        return EmcaVersion(request.param)

    @pytest.fixture
    def driver(self, admin: httpx.Client, version: EmcaVersion) -> SimDriver:
        return SimDriver(admin, USERS[version])

    @pytest.fixture
    async def connection(self, sim: SimServer, version: EmcaVersion) -> AsyncIterator[EmcaConnection]:
        connection = connect(sim_endpoint(sim, version), HttpOptions.for_concurrency(4))
        yield connection
        await connection.aclose()

    async def test_a_slow_emca_times_out_as_transient(self, sim: SimServer, driver: SimDriver, version: EmcaVersion) -> None:
        slow = connect(sim_endpoint(sim, version), HttpOptions(read_timeout=0.3))
        try:
            driver.admin.post("/admin/faults", json={"slow_ms": 1500}).raise_for_status()
            with pytest.raises(TransientError) as info:
                await slow.check_connection()
            assert info.value.detail == "timeout"
        finally:
            driver.clear_faults()
            await slow.aclose()

    async def test_v4_2_4_reuses_its_token(self, sim: SimServer, admin: httpx.Client) -> None:
        before = admin.get("/admin/counters").json()["requests_by_method"].get("token", 0)
        connection = connect(sim_endpoint(sim, EmcaVersion.V4_2_4))
        try:
            for _ in range(3):
                await connection.check_connection()
        finally:
            await connection.aclose()
        assert admin.get("/admin/counters").json()["requests_by_method"].get("token", 0) == before + 1


# -- the registry against the simulator ------------------------------------------------------------


class RecordingTopics:
    def __init__(self) -> None:
        self.created: list[str] = []

    async def ensure_command_topic(self, connector: str) -> str:
        self.created.append(connector)
        return f"recorded.{connector}"


class NoTopics:
    """A TopicCreator for refusals: nothing may be created."""

    async def ensure_command_topic(self, connector: str) -> str:
        raise AssertionError(f"a refused connector must not create a topic ({connector})")



def registry(engine: Engine, topics: Any) -> ConnectorRegistry:
    return ConnectorRegistry(engine, SecretBox([generate_key()]), connect=connect, topics=topics)


@pytest.fixture
async def kafka_prefix(kafka_settings: KafkaSettings) -> AsyncIterator[KafkaSettings]:
    settings = kafka_settings.model_copy(update={"topic_prefix": f"test-conn-{uuid.uuid4().hex[:10]}"})
    yield settings
    admin = AIOKafkaAdminClient(**admin_kwargs(settings))
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix + ".")]
    finally:
        await admin.close()
    if ours:
        await delete_topics(settings, ours)


async def topic_exists(settings: KafkaSettings, topic: str) -> bool:
    admin = AIOKafkaAdminClient(**admin_kwargs(settings))
    await admin.start()
    try:
        return topic in await admin.list_topics()
    finally:
        await admin.close()


@pytest.mark.integration
@VERSIONS
async def test_create_validates_pins_the_issuing_ca_and_creates_the_topic(
    sim: SimServer, engine: Engine, kafka_prefix: KafkaSettings, version: EmcaVersion
) -> None:
    name = f"sim-{version.value.replace('.', '').replace('+', 'p').lower()}"
    change = await registry(engine, KafkaTopicCreator(kafka_prefix, partitions=1)).create(sim_spec(sim, version, name))
    ca_pem = (sim.data_dir / "cas" / "certrail-sim-issuing-ca-p-256.crt.pem").read_text()
    assert change.connector_after is not None
    assert change.connector_after.status is ConnectorStatus.ENABLED
    assert change.change["pinned_ca_sha256"] == certificate_sha256(ca_pem) == change.connector_after.pinned_ca_sha256
    assert change.change["password"] == "***"
    assert sim_credentials(sim, version)["password"] not in json.dumps(change.change)
    topic = Topics(kafka_prefix.topic_prefix).commands(name)
    assert change.change["command_topic"] == topic and await topic_exists(kafka_prefix, topic)
    assert change.connector_after.last_test is not None and change.connector_after.last_test.ok


FAILURES: list[tuple[str, dict[str, Any], ErrorCode, str]] = [
    ("unreachable", {"base_url": "PORT"}, ErrorCode.CA_UNREACHABLE, "unreachable"),
    ("tls-untrusted", {"ca_bundle_pem": None}, ErrorCode.CA_TLS_UNTRUSTED, "not trusted"),
    ("wrong-password", {"password": "not-the-password"}, ErrorCode.CA_AUTH_FAILED, "emCA"),
    ("ca-wrong-case", {"issuing_ca": "certrail Sim Issuing CA p-256"}, ErrorCode.ISSUING_CA_NOT_FOUND,
     "Did you mean 'certrail Sim Issuing CA P-256'?"),
    ("unknown-subscriber", {"subscriber_id": "SUB-9999"}, ErrorCode.SUBSCRIBER_INVALID, "ubscriber"),
    ("unknown-profile", {"default_profile": "TLS Servers"}, ErrorCode.CA_PROFILE_NOT_FOUND, "'TLS Server'"),
]


@pytest.mark.parametrize(("case", "overrides", "code", "text"), FAILURES, ids=[f[0] for f in FAILURES])
@VERSIONS
async def test_each_validation_failure_for_real(
    sim: SimServer, engine: Engine, version: EmcaVersion, case: str, overrides: dict[str, Any], code: ErrorCode, text: str
) -> None:
    if overrides.get("base_url") == "PORT":
        overrides = {"base_url": f"https://127.0.0.1:{free_ports(1)[0]}"}
    reg = registry(engine, NoTopics())
    with pytest.raises(ConnectorError) as info:
        await reg.create(sim_spec(sim, version, f"bad-{case}", **overrides))
    assert info.value.code is code, info.value.message
    assert text in info.value.message
    assert info.value.change is not None and info.value.change.outcome == "refused"
    assert reg.list() == []  # nothing invalid is stored


@VERSIONS
async def test_rotation_at_emca_then_test_and_update(
    sim: SimServer, admin: httpx.Client, engine: Engine, version: EmcaVersion
) -> None:
    reg = registry(engine, RecordingTopics())
    await reg.create(sim_spec(sim, version, "rotating"))
    SimDriver(admin, USERS[version]).rotate_credentials()
    connector, report = await reg.test("rotating")
    assert (connector.status, report.failure and report.failure.code) == (ConnectorStatus.MISCONFIGURED, ErrorCode.CA_AUTH_FAILED)
    fresh = sim_spec(sim, version, "rotating")
    edit = ConnectorEdit(password=fresh.secrets.password, client_id=fresh.secrets.client_id)
    change = await reg.update("rotating", edit)
    assert change.change == {"password": "***", **({"client_id": "***"} if fresh.secrets.client_id else {}), "status": "enabled"}
    assert reg.get("rotating").status is ConnectorStatus.ENABLED


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_cli_round_trip(sim: SimServer, tmp_path: Path, kafka_settings: KafkaSettings) -> None:
    db_url = f"sqlite:///{tmp_path / 'cli.db'}"
    migrate.upgrade(DatabaseSettings(url=db_url))
    old_key, new_key = generate_key(), generate_key()
    prefix = f"test-cli-{uuid.uuid4().hex[:10]}"
    env = {"CERTRAIL_DB_URL": db_url, "CERTRAIL_SECRETS_KEYS": old_key,
           "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers, "CERTRAIL_KAFKA_TOPIC_PREFIX": prefix}
    runner = CliRunner()
    password = sim_credentials(sim, EmcaVersion.V4_2_3)["password"]

    def run(*args: str, code: int = 0, **extra_env: str) -> Any:
        result = runner.invoke(connectors_cli, list(args), env={**env, **extra_env})
        assert result.exit_code == code, (args, result.output, result.stderr)
        assert password not in result.output + result.stderr
        return result

    try:
        bad = run("create", "cli-bad", "--from-sim-dir", str(sim.data_dir), "--version", "V4.2.3",
                  "--issuing-ca", "certrail sim issuing ca p-256", code=1)
        assert "error: ISSUING_CA_NOT_FOUND:" in bad.stderr and "'certrail Sim Issuing CA P-256'" in bad.stderr
        run("create", "no-secrets", "--version", "V4.2.3", "--base-url", "http://x", code=1)  # prompt: no input
        created = run("create", "cli-v423", "--from-sim-dir", str(sim.data_dir), "--version", "V4.2.3", "--concurrency", "4")
        assert "created connector cli-v423: enabled" in created.output
        assert "cli-v423" in run("list").output
        shown = json.loads(run("show", "cli-v423", "--json").output)
        assert shown["password"] == shown["client_id"] == "***" and shown["status"] == "enabled" and shown["concurrency"] == 4
        assert "ok   subscriber" in run("test", "cli-v423").output
        run("disable", "cli-v423")
        assert json.loads(run("show", "cli-v423", "--json").output)["status"] == "disabled"
        run("enable", "cli-v423")
        run("update", "cli-v423", "--set-password", code=1, CERTRAIL_CONNECTOR_PASSWORD="wrong-password")
        rotated = run("rotate-secrets", CERTRAIL_SECRETS_KEYS=f"{new_key},{old_key}")
        assert "rotated 1, already current 0, failed 0" in rotated.output
        run("show", "cli-v423", CERTRAIL_SECRETS_KEYS=new_key)
        run("test", "cli-v423", CERTRAIL_SECRETS_KEYS=new_key)  # decrypts under the new key alone
        failed = run("test", "cli-v423", code=1)  # the old key alone no longer opens it
        assert "SECRETS_UNAVAILABLE" in failed.stderr
        run("delete", "cli-v423", CERTRAIL_SECRETS_KEYS=new_key)
        assert "no connectors" in run("list").output
        run("show", "cli-v423", code=1)
        assert len(run("generate-key").output.strip()) == 44
    finally:
        asyncio.run(delete_topics(kafka_settings, [Topics(prefix).commands("cli-v423")]))
