"""The local single-node Kafka broker: fetch once, start, start again, stop, restart."""

from __future__ import annotations

import base64
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from services.common.kafka_config import admin_kwargs, consumer_kwargs, producer_kwargs
from services.common.kafka_local import LocalKafka, LocalKafkaError, find_java, kafka_random_uuid
from services.common.settings import KafkaSettings
from services.common.topics_admin import ensure_topics

MakeLocalKafka = Callable[..., LocalKafka]
MakeSettings = Callable[..., KafkaSettings]


def _process_exists(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _same_broker(kafka: LocalKafka, **changes: object) -> LocalKafka:
    """Another LocalKafka object for the same data dir (what a second CLI call builds)."""
    values: dict[str, object] = {
        "version": kafka.version,
        "cache_dir": kafka.cache_dir,
        "data_dir": kafka.data_dir,
        "host": kafka.host,
        "port": kafka.port,
        "controller_port": kafka.controller_port,
        "sasl_ssl_port": kafka.sasl_ssl_port,
        "authentication": kafka.authentication,
    }
    values.update(changes)
    return LocalKafka(**values)  # type: ignore[arg-type]


@pytest.mark.integration
def test_start_twice_is_harmless_and_stop_twice_too(local_kafka_factory: MakeLocalKafka) -> None:
    kafka = local_kafka_factory()
    assert not kafka.status().running

    first = kafka.start(wait_timeout=90)
    assert first.running and not first.already_running and first.pid is not None
    assert first.bootstrap_servers == f"127.0.0.1:{kafka.port}"
    assert f"PLAINTEXT://127.0.0.1:{kafka.port}" in first.listeners
    assert kafka.pid_file.read_text().strip() == str(first.pid)

    again = kafka.start(wait_timeout=30)
    assert again.already_running and again.pid == first.pid
    # a second object for the same data dir (as a second `certrail kafka status` builds) sees it too
    assert _same_broker(kafka).status().pid == first.pid

    assert kafka.stop() is True
    assert not _process_exists(first.pid)
    assert not kafka.pid_file.exists()
    assert kafka.status().running is False
    assert kafka.stop() is False
    assert "[BrokerServer id=1] shut down completed" in kafka.log_file.read_text(), "not a clean shutdown"


@pytest.mark.integration
async def test_restart_keeps_records_and_formats_storage_once(
    local_kafka_factory: MakeLocalKafka, kafka_settings_factory: MakeSettings
) -> None:
    kafka = local_kafka_factory()
    kafka.start(wait_timeout=90)
    settings = kafka_settings_factory(kafka.bootstrap_servers)
    meta_before = (kafka.log_dirs / "meta.properties").read_text()
    topic = "restart.check"
    await ensure_topics(settings, [topic], partitions=1)
    producer = AIOKafkaProducer(**producer_kwargs(settings))
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"survives a restart", key=b"k")
    finally:
        await producer.stop()
    cluster_before = await _cluster_id(settings)

    assert kafka.stop() is True
    restarted = kafka.start(wait_timeout=90)
    assert restarted.running and not restarted.already_running

    assert (kafka.log_dirs / "meta.properties").read_text() == meta_before, "storage was formatted again"
    assert await _cluster_id(settings) == cluster_before
    consumer = AIOKafkaConsumer(topic, **consumer_kwargs(settings, group_id="restart-check"))
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000, max_records=10)
    finally:
        await consumer.stop()
    values = [r.value for records in batch.values() for r in records]
    assert values == [b"survives a restart"]


async def _cluster_id(settings: KafkaSettings) -> str:
    admin = AIOKafkaAdminClient(**admin_kwargs(settings))
    await admin.start()
    try:
        return str((await admin.describe_cluster())["cluster_id"])
    finally:
        await admin.close()


@pytest.mark.integration
def test_starting_the_running_session_broker_again_is_harmless(session_local_kafka: LocalKafka | None) -> None:
    local = session_local_kafka
    if local is None:
        pytest.skip("the session's broker is not a LocalKafka")
    status = _same_broker(local).start(wait_timeout=30)
    assert status.already_running and status.pid == local.status().pid

    with pytest.raises(LocalKafkaError, match=r"already runs .* stop it first"):
        _same_broker(local, port=local.port + 1 if local.port < 65535 else local.port - 1).start(wait_timeout=5)
    assert local.status().running


@pytest.mark.integration
def test_busy_port_is_reported_before_anything_starts(local_kafka_factory: MakeLocalKafka) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        kafka = local_kafka_factory(port=port)
        with pytest.raises(LocalKafkaError, match=rf"127\.0\.0\.1:{port} \(the port\) is already in use"):
            kafka.start(wait_timeout=10)
    assert not kafka.pid_file.exists()
    assert not kafka.server_properties.exists()


@pytest.mark.integration
def test_a_broker_that_dies_while_starting_is_reported_with_its_log(local_kafka_factory: MakeLocalKafka) -> None:
    kafka = local_kafka_factory(heap_max="1k")  # the JVM refuses: -Xms256m above -Xmx1k
    started = time.monotonic()
    with pytest.raises(LocalKafkaError, match=r"exited while starting(?s:.*)heap size") as info:
        kafka.start(wait_timeout=60)
    assert time.monotonic() - started < 30, "the death should be noticed at once, not at the deadline"
    assert str(kafka.stdout_file) in str(info.value)
    assert not kafka.pid_file.exists()
    assert not kafka.status().running


@pytest.mark.integration
def test_fetch_is_skipped_once_the_jars_are_there(local_kafka_factory: MakeLocalKafka) -> None:
    kafka = local_kafka_factory()
    libs = kafka.fetch()
    started = time.monotonic()
    assert kafka.fetch() == libs
    assert time.monotonic() - started < 1.0, "a complete libs dir must not run Maven again"
    jars = {p.name for p in libs.glob("*.jar")}
    assert f"kafka_2.13-{kafka.version}.jar" in jars
    # the log4j binding matches the slf4j API that the broker's dependencies resolved to
    slf4j = next(j for j in jars if j.startswith("slf4j-api-"))
    binding = "log4j-slf4j2-impl-" if slf4j.startswith("slf4j-api-2.") else "log4j-slf4j-impl-"
    assert any(j.startswith(binding) for j in jars), (slf4j, sorted(jars))


def test_fetch_without_maven_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    kafka = LocalKafka(cache_dir=tmp_path / "cache", data_dir=tmp_path / "data")
    with pytest.raises(LocalKafkaError, match=r"Maven \('mvn'\) is not on PATH"):
        kafka.fetch()


def test_fetch_with_a_missing_pom_names_it(tmp_path: Path) -> None:
    kafka = LocalKafka(cache_dir=tmp_path / "cache", data_dir=tmp_path / "data", pom_path=tmp_path / "nope.xml")
    with pytest.raises(LocalKafkaError, match=r"nope\.xml"):
        kafka.fetch()


def test_the_default_pom_is_found_from_the_package() -> None:
    kafka = LocalKafka(cache_dir=Path(".cache"), data_dir=Path("var/kafka"))
    assert kafka.pom_path().is_file()
    assert kafka.pom_path().parts[-3:] == ("tools", "kafka", "pom.xml")


def test_java_home_without_java_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LocalKafkaError, match="no java at"):
        find_java(tmp_path)


@pytest.mark.integration
def test_java_on_this_machine_is_17_or_newer() -> None:
    assert find_java(None)


def test_cluster_ids_look_like_kafkas() -> None:
    ids = {kafka_random_uuid() for _ in range(200)}
    assert len(ids) == 200
    for cluster_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_ports_must_differ(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must differ"):
        LocalKafka(cache_dir=tmp_path, data_dir=tmp_path, port=9092, controller_port=9092)


@pytest.mark.integration
def test_storage_formatted_before_principals_is_refused_with_authentication(
    local_kafka_factory: MakeLocalKafka,
) -> None:
    kafka = local_kafka_factory(authentication=True)
    kafka.log_dirs.mkdir(parents=True)
    (kafka.log_dirs / "meta.properties").write_text("version=1\n")  # an older certrail's formatted storage
    with pytest.raises(LocalKafkaError, match="formatted before certrail's Kafka principals"):
        kafka.start(wait_timeout=30)
    assert not kafka.status().running


@pytest.mark.integration
def test_the_server_properties_of_the_authenticated_broker(local_kafka_factory: MakeLocalKafka) -> None:
    kafka = local_kafka_factory(authentication=True)
    status = kafka.start(wait_timeout=90)
    assert status.authentication
    assert f"SASL_PLAINTEXT://127.0.0.1:{kafka.port}" in status.listeners
    props = dict(line.split("=", 1) for line in kafka.server_properties.read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:broker;User:admin"
    assert props["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert "PLAINTEXT" not in props["listener.security.protocol.map"].replace("SASL_PLAINTEXT", "")
    assert kafka.server_properties.stat().st_mode & 0o077 == 0
    # the status of another CLI call (no authentication flag) reads it from the running broker
    assert _same_broker(kafka, authentication=False).status().authentication
