"""Shared fixtures: the test run's one Kafka broker, and generic helpers.

The broker is, in this order of preference:

1. ``KAFKA_BOOTSTRAP_SERVERS`` when set (an existing PLAINTEXT cluster);
2. a testcontainers ``KafkaContainer`` when a Docker engine answers;
3. a `LocalKafka` (the project's own single-node KRaft broker, run with the
   machine's Java) on free ports, with a SASL_SSL listener too. Its jars are
   fetched once into the project's ``.cache``.

``CERTRAIL_TEST_KAFKA_BROKERS=3`` (opt-in; default 1) makes (3) a local three-node KRaft
cluster instead (`LocalKafkaCluster`, docs/scaling.md): topics then get replication factor 3
and min.insync.replicas 2.

It is started once per test run and stopped at its end. Test consumers use
short session timeouts so that a closed or killed consumer's partitions move
quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine

from services.common import migrate
from services.common.db import make_engine
from services.common.kafka_cluster import LocalKafkaCluster, NodePorts
from services.common.kafka_local import DEFAULT_KAFKA_VERSION, LocalKafka, reap_exited_brokers
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.topics_admin import delete_topics, ensure_topics

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_CACHE_DIR = REPO_ROOT / ".cache"
TEST_SESSION_TIMEOUT_MS = 6_000
TEST_HEARTBEAT_INTERVAL_MS = 1_000
TEST_REQUEST_TIMEOUT_MS = 15_000
BROKER_START_TIMEOUT_S = 120.0

UniqueTopic = Callable[..., Awaitable[str]]


Described = str | Callable[[], str]


def _timed_out(what: Described, timeout_s: float) -> AssertionError:
    return AssertionError(f"timed out after {timeout_s:g}s waiting for {what() if callable(what) else what}")


async def poll_until(predicate: Callable[[], object], what: Described, timeout_s: float = 60.0, *, interval_s: float = 0.1,
                     in_thread: bool = False) -> object:
    """Polls ``predicate`` until it returns something truthy and returns that, or fails the test
    after ``timeout_s`` naming ``what`` (a callable: called then, to show the last state seen).
    ``predicate`` may return an awaitable (an async check); ``in_thread``: call it in a worker
    thread (a database read)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await asyncio.to_thread(predicate) if in_thread else predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout_s)
        await asyncio.sleep(interval_s)


def wait_until(predicate: Callable[[], object], what: Described, timeout_s: float = 60.0, *,
               interval_s: float = 0.1) -> object:
    """`poll_until` for synchronous tests and fixtures: blocks between polls."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout_s)
        time.sleep(interval_s)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports nobody listens on right now."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def make_kafka_settings(bootstrap_servers: str, **overrides: object) -> KafkaSettings:
    """KafkaSettings for tests: every security field explicit, short timeouts."""
    values: dict[str, object] = {
        "bootstrap_servers": bootstrap_servers,
        "client_id": "certrail-tests",
        "topic_prefix": "certrail-test",
        "security_protocol": "PLAINTEXT",
        "sasl_mechanism": None,
        "sasl_username": None,
        "sasl_password": None,
        "ssl_cafile": None,
        "ssl_certfile": None,
        "ssl_keyfile": None,
        "ssl_check_hostname": True,
        "session_timeout_ms": TEST_SESSION_TIMEOUT_MS,
        "heartbeat_interval_ms": TEST_HEARTBEAT_INTERVAL_MS,
        "request_timeout_ms": TEST_REQUEST_TIMEOUT_MS,
    }
    values.update(overrides)
    return KafkaSettings(**values)  # type: ignore[arg-type]


def local_kafka_for_tests(data_dir: Path, *, sasl_ssl: bool, **overrides: object) -> LocalKafka:
    """A LocalKafka on free ports with its data in ``data_dir`` (jars from the project cache)."""
    port, controller_port, sasl_ssl_port = free_ports(3)
    values: dict[str, object] = {
        "version": DEFAULT_KAFKA_VERSION,
        "cache_dir": KAFKA_CACHE_DIR,
        "data_dir": data_dir,
        "host": "127.0.0.1",
        "port": port,
        "controller_port": controller_port,
        "sasl_ssl_port": sasl_ssl_port if sasl_ssl else None,
        "heap_max": "768m",
        # the run's shared broker keeps a PLAINTEXT listener without an authorizer, so that the
        # integration tests need no principals; tests of authentication and ACLs pass True
        "authentication": False,
    }
    values.update(overrides)
    return LocalKafka(**values)  # type: ignore[arg-type]


def sasl_ssl_settings(kafka: LocalKafka | LocalKafkaCluster, mechanism: str = "PLAIN") -> KafkaSettings:
    """Client settings for a LocalKafka's SASL_SSL listener."""
    assert kafka.sasl_ssl_bootstrap_servers is not None, "this LocalKafka has no SASL_SSL listener"
    credentials = kafka.sasl_credentials()
    return make_kafka_settings(
        kafka.sasl_ssl_bootstrap_servers,
        security_protocol="SASL_SSL",
        sasl_mechanism=mechanism,
        sasl_username=credentials.username,
        sasl_password=SecretStr(credentials.password.get_secret_value()),
        ssl_cafile=kafka.ssl_cafile,
    )


def kafka_brokers_for_tests() -> int:
    """``CERTRAIL_TEST_KAFKA_BROKERS``: 1 (the default, one broker) or more (a local cluster)."""
    value = os.environ.get("CERTRAIL_TEST_KAFKA_BROKERS", "").strip() or "1"
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f"CERTRAIL_TEST_KAFKA_BROKERS must be a positive number, not {value!r}")
    return int(value)


def local_kafka_cluster_for_tests(data_dir: Path, brokers: int) -> LocalKafkaCluster:
    """A LocalKafkaCluster on free ports (SASL_SSL listeners too), unauthenticated like the single test broker."""
    ports = free_ports(3 * brokers)
    return LocalKafkaCluster(
        cache_dir=KAFKA_CACHE_DIR,
        data_dir=data_dir,
        brokers=brokers,
        ports=[NodePorts(*ports[i : i + 3]) for i in range(0, 3 * brokers, 3)],
        heap_max="384m",
        authentication=False,
    )


def _docker_answers(timeout_s: float = 1.5) -> bool:
    """True when a Docker engine answers ``GET /_ping`` quickly (quietly; no Docker SDK involved,
    whose failed connections leave sockets for the garbage collector to warn about)."""
    docker_host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if docker_host.startswith("unix://"):
        path = docker_host.removeprefix("unix://")
        if not Path(path).exists():
            return False
        family, address = socket.AF_UNIX, path
    elif docker_host.startswith("tcp://"):
        host, _, port = docker_host.removeprefix("tcp://").rstrip("/").rpartition(":")
        if os.environ.get("DOCKER_TLS_VERIFY"):  # TLS engine: a TCP connect is the quick check
            try:
                with socket.create_connection((host, int(port)), timeout=timeout_s):
                    return True
            except (OSError, ValueError):
                return False
        family, address = socket.AF_INET, (host, int(port))  # type: ignore[assignment]
    else:
        return False
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return sock.recv(64).startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
    except OSError:
        return False


@dataclass(frozen=True)
class SessionKafka:
    """The test run's broker: client settings, and the LocalKafka when the run started one."""

    settings: KafkaSettings
    local: LocalKafka | None
    kind: str  # "env", "testcontainers", "local" or "cluster"
    cluster: LocalKafkaCluster | None = None  # CERTRAIL_TEST_KAFKA_BROKERS=3


@pytest.fixture(scope="session")
def session_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionKafka]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield SessionKafka(make_kafka_settings(external), None, "env")
        return
    if kafka_brokers_for_tests() > 1:
        cluster = local_kafka_cluster_for_tests(tmp_path_factory.mktemp("kafka-cluster"), kafka_brokers_for_tests())
        try:
            cluster.start(wait_timeout=BROKER_START_TIMEOUT_S * 2)
            yield SessionKafka(make_kafka_settings(cluster.bootstrap_servers), None, "cluster", cluster)
        finally:
            cluster.stop()
        return
    if _docker_answers():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from testcontainers.community.kafka import KafkaContainer

            container = (
                KafkaContainer()
                .with_kraft()
                .with_env("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "1000")
                .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
            )
            container.start(timeout=int(BROKER_START_TIMEOUT_S))
        try:
            yield SessionKafka(make_kafka_settings(container.get_bootstrap_server()), None, "testcontainers")
        finally:
            container.stop()
        return
    kafka = local_kafka_for_tests(tmp_path_factory.mktemp("kafka"), sasl_ssl=True)
    try:
        kafka.start(wait_timeout=BROKER_START_TIMEOUT_S)
        yield SessionKafka(make_kafka_settings(kafka.bootstrap_servers), kafka, "local")
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def kafka_settings(session_kafka: SessionKafka) -> KafkaSettings:
    """PLAINTEXT client settings for the test run's one broker."""
    return session_kafka.settings


@pytest.fixture(scope="session")
def session_local_kafka(session_kafka: SessionKafka) -> LocalKafka | None:
    """The session's LocalKafka, or None when the run uses an external broker or a container."""
    return session_kafka.local


@pytest.fixture(scope="session")
def kafka_settings_factory() -> Callable[..., KafkaSettings]:
    """``kafka_settings_factory("127.0.0.1:9092", security_protocol=...)``: test client settings."""
    return make_kafka_settings


@pytest.fixture(scope="session")
def kafka_sasl_ssl(session_kafka: SessionKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    """Client settings (SASL_SSL, PLAIN, CA file) for a broker listener configured for SASL_SSL.

    The session's LocalKafka has that listener; with an external broker a
    LocalKafka of its own is started for it.
    """
    if session_kafka.local is not None and session_kafka.local.sasl_ssl_port is not None:
        yield sasl_ssl_settings(session_kafka.local)
        return
    if session_kafka.cluster is not None:
        yield sasl_ssl_settings(session_kafka.cluster)
        return
    kafka = local_kafka_for_tests(tmp_path_factory.mktemp("kafka-sasl-ssl"), sasl_ssl=True)
    try:
        kafka.start(wait_timeout=BROKER_START_TIMEOUT_S)
        yield sasl_ssl_settings(kafka)
    finally:
        kafka.stop()


@pytest.fixture
async def unique_topic(kafka_settings: KafkaSettings) -> AsyncIterator[UniqueTopic]:
    """A factory of freshly created, uniquely named topics (deleted after the test).

    ``name = await unique_topic("orders", partitions=3)``; pass ``settings=``
    to create it through another listener of the same cluster.
    """
    created: list[tuple[KafkaSettings, str]] = []

    async def make(label: str = "t", partitions: int = 3, *, settings: KafkaSettings | None = None) -> str:
        target = settings or kafka_settings
        name = f"test.{label}.{uuid.uuid4().hex[:12]}"
        await ensure_topics(target, [name], partitions=partitions)
        created.append((target, name))
        return name

    yield make
    for target, name in created:
        await delete_topics(target, [name])


@pytest.fixture
def local_kafka_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LocalKafka]]:
    """Makes extra LocalKafka brokers (free ports, fresh data dir); stops them after the test.

    ``kafka = local_kafka_factory(sasl_ssl=False, heap_max="512m")``; nothing
    starts until the test calls ``kafka.start()``.
    """
    made: list[LocalKafka] = []

    def make(*, sasl_ssl: bool = False, data_dir: Path | None = None, **overrides: object) -> LocalKafka:
        data_dir = data_dir or tmp_path_factory.mktemp("kafka-extra")
        kafka = local_kafka_for_tests(data_dir, sasl_ssl=sasl_ssl, **overrides)
        made.append(kafka)
        return kafka

    yield make
    for kafka in made:
        kafka.stop()
@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite database of the test's own (a module may define its own ``engine`` instead)."""
    settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    migrate.upgrade(settings)
    engine = make_engine(settings)
    yield engine
    engine.dispose()


from tests.postgres_fixtures import *  # noqa: F403 - PostgreSQL fixtures (postgres_url, db_settings)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A broker this run started and nobody stopped is a leak: name it (and stop it) rather than leave it to the
    interpreter's exit, which only warns about a process it never waited for."""
    leaked = reap_exited_brokers()
    if not leaked:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for pid in leaked:
        if reporter is not None:
            reporter.write_line(f"LEAK: a Kafka broker this test run started (pid {pid}) was still running at the end; "
                                "stopping it", red=True)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    reap_after = time.monotonic() + 10
    while reap_exited_brokers() and time.monotonic() < reap_after:
        time.sleep(0.1)
