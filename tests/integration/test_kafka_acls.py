"""The authenticated broker (what `certrail up` runs): SCRAM principals, the StandardAuthorizer and
certrail's ACL table. Each principal can do exactly what docs/decisions/0012 says and no more; no
listener (client, SASL_SSL, controller) takes an anonymous client, an unknown user or a wrong password.

The expectations are written out here by hand, not derived from `acl_bindings`, so that a change of
the table that widens a principal's rights fails this test."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)
from pydantic import SecretStr
from typer.testing import CliRunner

from services.cli.main import app as cli_app
from services.common.contracts.topics import Topics
from services.common.kafka_acls import (
    ALL_PRINCIPALS,
    KafkaAclError,
    ServiceGroups,
    acl_bindings,
    apply_acls,
    describe_acls,
    superseded_bindings,
)
from services.common.kafka_config import admin_kwargs, consumer_kwargs, producer_kwargs
from services.common.kafka_local import LocalKafka
from services.common.settings import KafkaSettings
from services.common.topics_admin import TopicAdminError, ensure_topics
from services.issuer.registry.registry import KafkaTopicCreator
from tests.conftest import (
    BROKER_START_TIMEOUT_S,
    KAFKA_CACHE_DIR,
    free_ports,
    local_kafka_for_tests,
    make_kafka_settings,
    wait_until,
)

pytestmark = pytest.mark.integration

TOPICS = Topics("certrail")
COMMANDS = TOPICS.commands("emca-acl")
#: the old single events topic (decision 0016) exists on an upgraded cluster: no one may write it
LEGACY = TOPICS.legacy_events
ALL_TOPICS = [*TOPICS.fixed(), LEGACY, COMMANDS]
R, P, D, C = TOPICS.requests, TOPICS.provisioning, TOPICS.deadletter, TOPICS.audit_checkpoints
EG, EI, ED = TOPICS.gateway_events, TOPICS.issuer_events, TOPICS.deployer_events
WRITES = {
    "gateway": {COMMANDS, P, EG, D},
    "issuer": {EI, D},
    "deployer": {ED, R, D},
    "auditor": {C},
    "requester": {R},
}
READS = {
    "gateway": {R, EI},  # requests, and the issuer's events for its projection of issued certificates
    "issuer": {COMMANDS},
    "deployer": {P, EG, EI},
    "auditor": set(ALL_TOPICS),
    "requester": set(),
}
GROUPS = ServiceGroups()
OWN_GROUP = {"gateway": GROUPS.gateway, "issuer": GROUPS.issuer, "deployer": GROUPS.deployer, "auditor": GROUPS.auditor}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    kafka = local_kafka_for_tests(tmp_path_factory.mktemp("kafka-acl"), sasl_ssl=True, authentication=True)
    try:
        status = kafka.start(wait_timeout=BROKER_START_TIMEOUT_S)
        assert status.authentication
        admin = as_principal(kafka, "admin")

        async def prepare() -> None:
            await apply_acls(admin, acl_bindings(TOPICS, GROUPS))
            await ensure_topics(admin, ALL_TOPICS, partitions=1)
            producer = AIOKafkaProducer(**producer_kwargs(admin))
            await producer.start()
            try:
                for topic in ALL_TOPICS:
                    await producer.send_and_wait(topic, b"seed", key=b"seed")
            finally:
                await producer.stop()

        asyncio.run(prepare())
        yield kafka
    finally:
        kafka.stop()


def as_principal(kafka: LocalKafka, name: str, password: str | None = None, **overrides: object) -> KafkaSettings:
    secret = password if password is not None else kafka.principal_credentials(name).password.get_secret_value()
    values: dict[str, object] = {
        "topic_prefix": "certrail",
        "client_id": f"acl-test-{name}",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": name,
        "sasl_password": SecretStr(secret),
        "request_timeout_ms": 5_000,
    }
    values.update(overrides)
    return make_kafka_settings(kafka.bootstrap_servers, **values)


async def _writable(settings: KafkaSettings) -> set[str]:
    producer = AIOKafkaProducer(**producer_kwargs(settings))
    await producer.start()
    allowed = set()
    try:
        for topic in ALL_TOPICS:
            try:
                await asyncio.wait_for(producer.send_and_wait(topic, b"probe", key=b"probe"), 20)
            except TopicAuthorizationFailedError:
                continue
            allowed.add(topic)
    finally:
        await producer.stop()
    return allowed


async def _readable(settings: KafkaSettings) -> set[str]:
    """Topics whose records this principal can fetch: a topic it cannot even describe is not
    readable (its metadata is refused, so a consumer would wait for a leader forever); one it can
    describe is fetched, which the broker refuses without Read."""
    admin = AIOKafkaAdminClient(**admin_kwargs(settings))
    await admin.start()
    try:
        described = {t["topic"]: t["error_code"] for t in await admin.describe_topics(ALL_TOPICS)}
    finally:
        await admin.close()
    allowed = set()
    for topic in (t for t in ALL_TOPICS if described[t] == 0):
        consumer = AIOKafkaConsumer(**{**consumer_kwargs(settings, "unused"), "group_id": None})
        await consumer.start()
        try:
            partition = TopicPartition(topic, 0)
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            record = await asyncio.wait_for(consumer.getone(), 20)
            assert record.value in (b"seed", b"probe")
            allowed.add(topic)
        except TopicAuthorizationFailedError:
            pass
        finally:
            await consumer.stop()
    return allowed


@pytest.mark.parametrize("name", sorted(WRITES))
def test_each_principal_writes_exactly_what_it_produces(secured: LocalKafka, name: str) -> None:
    assert asyncio.run(_writable(as_principal(secured, name))) == WRITES[name]


@pytest.mark.parametrize("name", sorted(READS))
def test_each_principal_reads_exactly_what_it_consumes(secured: LocalKafka, name: str) -> None:
    assert asyncio.run(_readable(as_principal(secured, name))) == READS[name]


@pytest.mark.parametrize("name", sorted(OWN_GROUP))
def test_each_service_commits_in_its_own_group_only(secured: LocalKafka, name: str) -> None:
    topic = next(iter(sorted(READS[name])))
    settings = as_principal(secured, name)

    async def commit(group: str) -> None:
        consumer = AIOKafkaConsumer(**consumer_kwargs(settings, group))
        await consumer.start()
        try:
            partition = TopicPartition(topic, 0)
            consumer.assign([partition])
            await consumer.commit({partition: 1})
            assert await consumer.committed(partition) == 1
        finally:
            await consumer.stop()

    asyncio.run(commit(OWN_GROUP[name]))
    other = next(group for service, group in OWN_GROUP.items() if service != name)
    with pytest.raises(GroupAuthorizationFailedError):
        asyncio.run(commit(other))


def test_the_issuer_creates_connector_topics_and_nothing_else(secured: LocalKafka) -> None:
    """The issuer owns the connector registry (decision 0034); the gateway creates no topic any more."""
    issuer = as_principal(secured, "issuer")
    assert asyncio.run(KafkaTopicCreator(issuer, partitions=1).ensure_command_topic("emca-new")) == TOPICS.commands(
        "emca-new"
    )
    with pytest.raises((TopicAdminError, KafkaError)):
        asyncio.run(ensure_topics(issuer, ["certrail.not-a-command-topic"], partitions=1))
    with pytest.raises((TopicAdminError, KafkaError)):
        asyncio.run(KafkaTopicCreator(as_principal(secured, "gateway"), partitions=1).ensure_command_topic("emca-gw"))
    requester = as_principal(secured, "requester")
    with pytest.raises((TopicAdminError, KafkaError)):
        asyncio.run(KafkaTopicCreator(requester, partitions=1).ensure_command_topic("emca-forged"))


def test_the_cluster_holds_exactly_certrails_acl_table(secured: LocalKafka) -> None:
    admin = as_principal(secured, "admin")
    asyncio.run(apply_acls(admin, acl_bindings(TOPICS, GROUPS)))  # applying twice changes nothing
    assert asyncio.run(describe_acls(admin)) == acl_bindings(TOPICS, GROUPS)
    with pytest.raises(KafkaAclError, match="ClusterAuthorizationFailedError"):  # only a super user may
        asyncio.run(apply_acls(as_principal(secured, "deployer"), acl_bindings(Topics("evil"))))


def test_applying_removes_the_grants_on_the_old_single_events_topic(secured: LocalKafka) -> None:
    """An installation upgraded from decision 0012's table: its services could write certrail.events;
    applying the table again removes that (decision 0016), and only that."""
    admin = as_principal(secured, "admin")
    old = superseded_bindings(TOPICS)
    asyncio.run(apply_acls(admin, old))
    assert set(old) <= set(asyncio.run(describe_acls(admin)))
    asyncio.run(apply_acls(admin, acl_bindings(TOPICS, GROUPS), old))
    assert asyncio.run(describe_acls(admin)) == acl_bindings(TOPICS, GROUPS)
    wait_until(lambda: LEGACY not in asyncio.run(_writable(as_principal(secured, "deployer"))),  # the authorizer caught up
               "the deployer to lose its write on the old events topic", 30, interval_s=0.5)
    asyncio.run(apply_acls(admin, acl_bindings(TOPICS, GROUPS), old))  # nothing left to remove: fine


async def _connects(settings: KafkaSettings) -> None:
    admin = AIOKafkaAdminClient(**admin_kwargs(settings))
    try:
        await admin.start()
        await admin.list_topics()
    finally:
        await admin.close()


@pytest.mark.parametrize(
    "who",
    ["unknown user", "wrong password", "anonymous on the client listener", "anonymous on the controller listener",
     "PLAIN on the client listener"],
)
def test_nobody_else_gets_in(secured: LocalKafka, who: str) -> None:
    settings = {
        "unknown user": lambda: as_principal(secured, "mallory", password="guess"),
        "wrong password": lambda: as_principal(secured, "requester", password="not-the-password"),
        "anonymous on the client listener": lambda: make_kafka_settings(secured.bootstrap_servers, request_timeout_ms=5_000),
        "anonymous on the controller listener": lambda: make_kafka_settings(
            f"127.0.0.1:{secured.controller_port}", request_timeout_ms=5_000),
        "PLAIN on the client listener": lambda: as_principal(secured, "broker", sasl_mechanism="PLAIN"),
    }[who]()
    with pytest.raises((KafkaConnectionError, KafkaError, asyncio.TimeoutError)):
        asyncio.run(asyncio.wait_for(_connects(settings), 30))


def test_the_sasl_ssl_listener_takes_principals_and_no_anonymous_tls(secured: LocalKafka) -> None:
    assert secured.sasl_ssl_bootstrap_servers is not None
    tls = {"ssl_cafile": secured.ssl_cafile}
    requester = as_principal(secured, "requester", security_protocol="SASL_SSL", **tls)
    requester = requester.model_copy(update={"bootstrap_servers": secured.sasl_ssl_bootstrap_servers})
    assert asyncio.run(_writable(requester)) == {TOPICS.requests}
    anonymous = make_kafka_settings(secured.sasl_ssl_bootstrap_servers, security_protocol="SSL",
                                    request_timeout_ms=5_000, **tls)
    with pytest.raises((KafkaConnectionError, KafkaError, asyncio.TimeoutError)):
        asyncio.run(asyncio.wait_for(_connects(anonymous), 30))


def test_principal_passwords_are_private_and_distinct(secured: LocalKafka) -> None:
    assert secured.principals_file.stat().st_mode & 0o077 == 0
    passwords = {secured.principal_credentials(name).password.get_secret_value() for name in ALL_PRINCIPALS}
    assert len(passwords) == len(ALL_PRINCIPALS)
    for name in ("admin", "requester"):
        env_file = secured.env_file(name)
        assert env_file.stat().st_mode & 0o077 == 0
        assert f"CERTRAIL_KAFKA_SASL_USERNAME={name}" in env_file.read_text()
    log = secured.log_file.read_text() + secured.stdout_file.read_text()
    assert not any(password in log for password in passwords), "a principal's password reached the broker's log"


def test_the_cli_shows_and_applies_the_table_as_admin(secured: LocalKafka, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in secured.client_env("admin").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CERTRAIL_KAFKA_TOPIC_PREFIX", "certrail")
    runner = CliRunner()
    applied = runner.invoke(cli_app, ["kafka", "acls", "apply"])
    assert applied.exit_code == 0, applied.output
    assert re.search(r"^allow User:requester +WRITE +topic certrail.requests$", applied.output, re.M)
    shown = runner.invoke(cli_app, ["kafka", "acls", "show"])
    assert shown.exit_code == 0, shown.output
    assert f"{len(acl_bindings(TOPICS, GROUPS))} ACLs" in shown.output
    assert secured.principal_credentials("admin").password.get_secret_value() not in applied.output + shown.output
    monkeypatch.setenv("CERTRAIL_KAFKA_SASL_USERNAME", "requester")
    monkeypatch.setenv("CERTRAIL_KAFKA_SASL_PASSWORD", secured.principal_credentials("requester").password.get_secret_value())
    refused = runner.invoke(cli_app, ["kafka", "acls", "apply"])
    assert refused.exit_code == 1 and "ClusterAuthorizationFailedError" in refused.output


def test_certrail_kafka_start_applies_the_acls_and_writes_the_cli_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, controller_port = free_ports(2)
    data_dir = tmp_path_factory.mktemp("kafka-cli")
    for key in [k for k in os.environ if k.startswith(("CERTRAIL_KAFKA", "CERTRAIL_GATEWAY_GROUP"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CERTRAIL_GATEWAY_GROUP_ID", "gateways-eu")
    runner = CliRunner()
    options = ["--port", str(port), "--controller-port", str(controller_port), "--data-dir", str(data_dir)]
    try:
        started = runner.invoke(cli_app, ["kafka", "start", *options, "--cache-dir", str(KAFKA_CACHE_DIR),
                                          "--wait-timeout", str(BROKER_START_TIMEOUT_S)])
        assert started.exit_code == 0, started.output
        assert "SASL_PLAINTEXT, SCRAM-SHA-512, ACLs" in started.output
        kafka = LocalKafka(cache_dir=KAFKA_CACHE_DIR, data_dir=data_dir, port=port, controller_port=controller_port)
        for line in (data_dir / "admin.env").read_text().splitlines():
            if line and not line.startswith("#"):
                key, value = line.split("=", 1)
                monkeypatch.setenv(key, value)
        assert asyncio.run(describe_acls(KafkaSettings())) == acl_bindings(TOPICS, ServiceGroups(gateway="gateways-eu"))
        assert kafka.principal_credentials("admin").password.get_secret_value() not in started.output
    finally:
        stopped = runner.invoke(cli_app, ["kafka", "stop", *options])
        assert stopped.exit_code == 0, stopped.output
