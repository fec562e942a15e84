"""The local three-node KRaft cluster: replication and a broker's loss (the controller's loss is tested under the
product's load in tests/e2e/test_scale_out.py).

One authenticated cluster (SCRAM principals, ACLs, SASL_SSL listeners: the single broker's
settings) for the module, started on free ports in a tmp dir and stopped at the end whatever
happens. Each test leaves every node running again. Measured times are printed (``-s``) and
quoted in docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from pydantic import SecretStr

from services.common.contracts.topics import Topics
from services.common.kafka_acls import ADMIN, REQUESTER, SCRAM_MECHANISM, ServiceGroups, acl_bindings, apply_acls
from services.common.kafka_cluster import CLUSTER_BROKER_CONFIG, LocalKafkaCluster, NodePorts
from services.common.kafka_config import admin_kwargs, consumer_kwargs, producer_kwargs
from services.common.settings import KafkaSettings
from services.common.topics_admin import TopicAdminError, ensure_topics
from tests.conftest import KAFKA_CACHE_DIR, free_ports, make_kafka_settings, poll_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREFIX = "certrail"
TOPICS = Topics(PREFIX)
PARTITIONS = 3
START_TIMEOUT_S = 180.0
FAILOVER_TIMEOUT_S = 45.0


def as_principal(cluster: LocalKafkaCluster, name: str, bootstrap: str | None = None, **overrides: object) -> KafkaSettings:
    values: dict[str, object] = {
        "topic_prefix": PREFIX,
        "client_id": f"cluster-test-{name}",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": SCRAM_MECHANISM,
        "sasl_username": name,
        "sasl_password": SecretStr(cluster.principal_credentials(name).password.get_secret_value()),
        "request_timeout_ms": 30_000,
    }
    values.update(overrides)
    return make_kafka_settings(bootstrap or cluster.bootstrap_servers, **values)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    ports = free_ports(9)
    made = LocalKafkaCluster(
        cache_dir=KAFKA_CACHE_DIR,
        data_dir=tmp_path_factory.mktemp("kafka-cluster"),
        ports=[NodePorts(*ports[i : i + 3]) for i in range(0, 9, 3)],
        heap_max="384m",
        authentication=True,
    )
    try:
        made.start(wait_timeout=START_TIMEOUT_S)
        admin = as_principal(made, ADMIN)

        async def prepare() -> None:
            await apply_acls(admin, acl_bindings(TOPICS, ServiceGroups()))
            await ensure_topics(admin, TOPICS.fixed(), partitions=PARTITIONS)

        asyncio.run(prepare())
        yield made
    finally:
        made.stop(timeout=60)
    assert not any(n.running for n in made.status().nodes)


@asynccontextmanager
async def admin_client(settings: KafkaSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(**admin_kwargs(settings))
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def partitions_of(settings: KafkaSettings, topic: str) -> list[dict[str, Any]]:
    async with admin_client(settings) as admin:
        (described,) = await admin.describe_topics([topic])
    assert not described["error_code"], described
    return sorted(described["partitions"], key=lambda p: p["partition"])


async def fully_replicated(settings: KafkaSettings, topics: tuple[str, ...]) -> bool:
    try:
        for topic in topics:
            if any(len(p["isr"]) != 3 for p in await partitions_of(settings, topic)):
                return False
    except (KafkaError, AssertionError):
        return False
    return True


async def test_topics_are_created_with_three_replicas_in_sync_and_min_isr_two(cluster: LocalKafkaCluster) -> None:
    admin = as_principal(cluster, ADMIN)
    status = cluster.status()
    assert status.running and len(status.nodes) == 3
    assert len({n.pid for n in status.nodes}) == 3
    for topic in TOPICS.fixed():
        partitions = await partitions_of(admin, topic)
        assert len(partitions) == PARTITIONS
        for p in partitions:
            assert sorted(p["replicas"]) == [1, 2, 3], (topic, p)
            assert sorted(p["isr"]) == [1, 2, 3], (topic, p)
    async with admin_client(admin) as client:
        described = await client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, TOPICS.requests)])
    entries = {e["config_names"]: e["config_value"] for r in described for res in r.to_object()["resources"]
               for e in res["config_entries"]}  # fmt: skip
    assert entries["min.insync.replicas"] == "2"
    assert entries["unclean.leader.election.enable"] == "false"
    async with admin_client(admin) as client:  # every node runs with the cluster's broker defaults
        brokers = await client.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(n.node_id)) for n in cluster.nodes])
    for node_id, configs in zip((n.node_id for n in cluster.nodes), _broker_configs(brokers), strict=True):
        assert {k: configs.get(k) for k in CLUSTER_BROKER_CONFIG} == dict(CLUSTER_BROKER_CONFIG), node_id

    # the nodes share the principals, the ACLs and the TLS material: the requester writes its
    # topic through each node's SASL_SSL listener alone, and still may not write events
    for node in cluster.nodes:
        settings = as_principal(cluster, REQUESTER, str(node.sasl_ssl_bootstrap_servers),
                                security_protocol="SASL_SSL", ssl_cafile=cluster.ssl_cafile)  # fmt: skip
        producer = AIOKafkaProducer(**producer_kwargs(settings))
        await producer.start()
        try:
            sent = await producer.send_and_wait(TOPICS.requests, b"over TLS", key=f"node-{node.node_id}".encode())
            assert sent.offset >= 0
            with pytest.raises(TopicAuthorizationFailedError):
                await producer.send_and_wait(TOPICS.issuer_events, b"forged", key=b"k")
        finally:
            await producer.stop()


def _broker_configs(responses: list[Any]) -> list[dict[str, str]]:
    found = {int(res["resource_name"]): {e["config_names"]: e["config_value"] for e in res["config_entries"]}
             for r in responses for res in r.to_object()["resources"]}  # fmt: skip
    return [found[node_id] for node_id in sorted(found)]


@dataclass
class Traffic:
    """Writes numbered records (acks=all) to one partition and reads them back, all the while."""

    key: bytes = field(default_factory=lambda: uuid.uuid4().hex.encode())  # this run's records
    acked: list[int] = field(default_factory=list)
    read: set[int] = field(default_factory=set)
    slowest_ack_s: float = 0.0
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def _produce(settings: KafkaSettings, tp: TopicPartition, traffic: Traffic) -> None:
    producer = AIOKafkaProducer(**producer_kwargs(settings))
    await producer.start()
    try:
        number = 0
        while not traffic.stop.is_set():
            started = time.monotonic()
            await producer.send_and_wait(tp.topic, str(number).encode(), key=traffic.key, partition=tp.partition)
            traffic.slowest_ack_s = max(traffic.slowest_ack_s, time.monotonic() - started)
            traffic.acked.append(number)
            number += 1
            await asyncio.sleep(0.05)
    finally:
        await producer.stop()


async def _consume(settings: KafkaSettings, tp: TopicPartition, traffic: Traffic, group: str) -> None:
    consumer = AIOKafkaConsumer(**consumer_kwargs(settings, group_id=group))
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        while True:
            batch = await consumer.getmany(tp, timeout_ms=500)
            traffic.read.update(int(r.value) for r in batch.get(tp, []) if r.key == traffic.key)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()


@asynccontextmanager
async def steady_traffic(settings: KafkaSettings, tp: TopicPartition, group: str) -> AsyncIterator[Traffic]:
    traffic = Traffic()
    consumer = asyncio.create_task(_consume(settings, tp, traffic, group))
    producer = asyncio.create_task(_produce(settings, tp, traffic))
    try:
        yield traffic
        traffic.stop.set()
        await asyncio.wait_for(producer, FAILOVER_TIMEOUT_S)  # re-raises a failed send
        await poll_until(lambda: set(traffic.acked) <= traffic.read,
                         lambda: f"the consumer to read {len(set(traffic.acked) - traffic.read)} acked records",
                         FAILOVER_TIMEOUT_S)  # fmt: skip
    finally:
        traffic.stop.set()
        consumer.cancel()
        producer.cancel()
        await asyncio.gather(consumer, producer, return_exceptions=True)


async def acked_after(traffic: Traffic, count: int, what: str) -> None:
    """Wait until ``count`` more records are acknowledged (a failed send fails the test)."""
    target = len(traffic.acked) + count
    await poll_until(lambda: len(traffic.acked) >= target, what, FAILOVER_TIMEOUT_S)


def kill(cluster: LocalKafkaCluster, node_id: int) -> None:
    node = cluster.node(node_id)
    pid = node.status().pid
    assert pid is not None, f"node {node_id} is not running"
    os.kill(pid, signal.SIGKILL)


async def test_losing_a_partition_leader_moves_the_leader_and_restarting_it_restores_the_isr(
    cluster: LocalKafkaCluster,
) -> None:
    admin = as_principal(cluster, ADMIN)
    await poll_until(lambda: fully_replicated(admin, TOPICS.fixed()), "every partition in sync", FAILOVER_TIMEOUT_S)
    tp = TopicPartition(TOPICS.requests, 0)
    leader = (await partitions_of(admin, tp.topic))[0]["leader"]
    async with steady_traffic(admin, tp, "cluster-test-broker-loss") as traffic:
        await acked_after(traffic, 10, "records acknowledged before the fault")
        killed_at = time.monotonic()
        kill(cluster, leader)

        async def moved() -> dict[str, Any] | None:
            try:
                p = (await partitions_of(admin, tp.topic))[0]
            except (KafkaError, AssertionError):
                return None
            return p if p["leader"] not in (leader, -1) and leader not in p["isr"] else None

        after = await poll_until(moved, f"a new leader of {tp} without node {leader}", FAILOVER_TIMEOUT_S)
        new_leader_s = time.monotonic() - killed_at
        assert isinstance(after, dict) and sorted(after["isr"]) == sorted({1, 2, 3} - {leader})
        await acked_after(traffic, 20, "records acknowledged by the two remaining replicas")
        # a topic created now would have two replicas for good: refused until the broker is back
        late_topic = TOPICS.commands("late-connector")
        with pytest.raises(TopicAdminError, match="only 2 of the cluster's 3 brokers are up"):
            await ensure_topics(admin, [late_topic], partitions=PARTITIONS)

        restarted_at = time.monotonic()
        await asyncio.to_thread(cluster.node(leader).start, START_TIMEOUT_S)  # the loop keeps producing
        answering_s = time.monotonic() - restarted_at
        await poll_until(lambda: fully_replicated(admin, TOPICS.fixed()), "the ISR back to 3 everywhere",
                         START_TIMEOUT_S)  # fmt: skip
        isr_back_s = time.monotonic() - restarted_at
        await acked_after(traffic, 10, "records acknowledged after the restart")
    assert (await ensure_topics(admin, [late_topic], partitions=PARTITIONS)).created == [late_topic]
    assert all(len(p["replicas"]) == 3 for p in await partitions_of(admin, late_topic))
    print(f"\nbroker loss: new leader after {new_leader_s:.1f}s; restarted node answering after {answering_s:.1f}s, "
          f"ISR 3 again {isr_back_s:.1f}s after the restart, "
          f"slowest acks=all send {traffic.slowest_ack_s:.1f}s, {len(traffic.acked)} records, none lost")  # fmt: skip
