"""A local three-node (or N-node) Apache Kafka KRaft cluster for development and tests.

Every node is a `LocalKafka` (``process.roles=broker,controller``) run from the same fetched
jars, with its own node id, ports and data dir (``<data_dir>/node-<id>``); the nodes form one
static controller quorum (``controller.quorum.voters``) and are formatted with one cluster id.
What the nodes must share lives once in ``data_dir``: ``principals.json``, ``credentials.json``,
``tls/`` (one throwaway CA and server certificate for every SASL_SSL listener), ``admin.env``
and ``requester.env`` (listing every node), and ``cluster.json`` (the cluster id and the nodes'
ports; no secrets). The security settings are the single broker's (`kafka_principals`).

    cluster = LocalKafkaCluster(cache_dir=Path(".cache"), data_dir=Path("var/kafka"), brokers=3)
    cluster.start(wait_timeout=120)   # returns once every node is a registered broker
    cluster.describe_quorum()         # the active controller, from DescribeQuorum
    cluster.stop()

See docs/scaling.md for the broker settings and what a broker loss does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import CompactArray, CompactString, Int16, Int32, Int64, Schema, TaggedFields

from services.common.kafka_acls import ADMIN
from services.common.kafka_config import admin_kwargs
from services.common.kafka_local import (
    DEFAULT_KAFKA_VERSION,
    ENV_FILE_PRINCIPALS,
    KafkaStatus,
    LocalKafka,
    LocalKafkaError,
    SaslCredentials,
    kafka_random_uuid,
)
from services.common.kafka_principals import client_env, client_settings, write_env_file, write_private
from services.common.settings import KafkaSettings

#: server.properties of every node of a cluster, on top of the single broker's: a record is
#: acknowledged (acks=all) once two of three replicas have it, so one broker may be lost without
#: losing an acknowledged record or refusing writes; an out-of-sync replica never becomes leader.
CLUSTER_BROKER_CONFIG: Final[Mapping[str, str]] = {
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    "unclean.leader.election.enable": "false",
    "offsets.topic.replication.factor": "3",
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
    "share.coordinator.state.topic.replication.factor": "3",
    "share.coordinator.state.topic.min.isr": "2",
}
LAYOUT_FILE: Final = "cluster.json"
PORT_STRIDE: Final = 2  # node i (from 0) listens on port + 2i, controller_port + 2i, sasl_ssl_port + 2i
_METADATA_TOPIC: Final = "__cluster_metadata"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NodePorts:
    """One node's listeners."""

    port: int
    controller_port: int
    sasl_ssl_port: int | None = None


def strided_ports(brokers: int, port: int, controller_port: int, sasl_ssl_port: int | None) -> list[NodePorts]:
    """The CLI's layout: 9092/9093, 9094/9095, 9096/9097 (and SASL_SSL from ``sasl_ssl_port``, step 2)."""
    return [
        NodePorts(
            port + PORT_STRIDE * i,
            controller_port + PORT_STRIDE * i,
            None if sasl_ssl_port is None else sasl_ssl_port + PORT_STRIDE * i,
        )
        for i in range(brokers)
    ]


@dataclass(frozen=True, slots=True)
class QuorumInfo:
    """The controller quorum as DescribeQuorum reports it."""

    leader_id: int  # the active controller's node id (-1: none elected right now)
    leader_epoch: int
    high_watermark: int
    voters: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    nodes: tuple[KafkaStatus, ...]
    bootstrap_servers: str
    data_dir: Path
    already_running: bool = False  # start() found every node running

    @property
    def running(self) -> bool:
        return all(n.running for n in self.nodes)

    @property
    def any_running(self) -> bool:
        return any(n.running for n in self.nodes)


class LocalKafkaCluster:
    """``brokers`` combined broker+controller nodes, ids 1..N, composed of `LocalKafka` nodes."""

    def __init__(
        self,
        *,
        cache_dir: Path,
        data_dir: Path,
        brokers: int = 3,
        ports: Sequence[NodePorts] | None = None,
        version: str = DEFAULT_KAFKA_VERSION,
        host: str = "127.0.0.1",
        pom_path: Path | None = None,
        java_home: Path | None = None,
        heap_max: str = "512m",
        authentication: bool = True,
        broker_config: Mapping[str, str] | None = None,
    ) -> None:
        layout = list(ports) if ports is not None else strided_ports(brokers, 9092, 9093, None)
        if brokers < 2 or len(layout) != brokers:
            raise ValueError(f"a cluster needs at least 2 brokers and one NodePorts each, got {brokers}, {len(layout)}")
        every = [p for n in layout for p in (n.port, n.controller_port, n.sasl_ssl_port) if p is not None]
        if len(set(every)) != len(every):
            raise ValueError(f"the nodes' ports must all differ, got {every}")
        if len({n.sasl_ssl_port is None for n in layout}) != 1:
            raise ValueError("either every node has a SASL_SSL listener or none has")
        self.data_dir = Path(data_dir).absolute()
        self.authentication = authentication
        self.ports = tuple(layout)
        self.cluster_id = self._stored_cluster_id() or kafka_random_uuid()
        voters = {i + 1: n.controller_port for i, n in enumerate(layout)}
        config = {**CLUSTER_BROKER_CONFIG, **(broker_config or {})}
        self.nodes = tuple(
            LocalKafka(
                version=version, cache_dir=cache_dir, data_dir=self.data_dir / f"node-{node_id}", host=host,
                port=n.port, controller_port=n.controller_port, sasl_ssl_port=n.sasl_ssl_port, pom_path=pom_path,
                java_home=java_home, heap_max=heap_max, authentication=authentication, node_id=node_id,
                quorum_voters=voters, cluster_id=self.cluster_id, broker_config=config, shared_dir=self.data_dir,
            )
            for node_id, n in enumerate(layout, start=1)
        )  # fmt: skip

    @classmethod
    def load(cls, data_dir: Path, cache_dir: Path, **options: Any) -> LocalKafkaCluster | None:
        """The cluster whose layout ``data_dir`` holds (what `certrail kafka stop/status` use), or None."""
        path = Path(data_dir) / LAYOUT_FILE
        if not path.is_file():
            return None
        stored = json.loads(path.read_text())
        ports = [NodePorts(**n) for n in stored["nodes"]]
        return cls(cache_dir=cache_dir, data_dir=data_dir, brokers=len(ports), ports=ports,
                   host=stored.get("host", "127.0.0.1"), authentication=stored.get("authentication", True),
                   **options)  # fmt: skip

    # ------------------------------------------------------------------ addresses
    def node(self, node_id: int) -> LocalKafka:
        return self.nodes[node_id - 1]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.bootstrap_servers for n in self.nodes)

    @property
    def sasl_ssl_port(self) -> int | None:
        return self.nodes[0].sasl_ssl_port

    @property
    def sasl_ssl_bootstrap_servers(self) -> str | None:
        if self.sasl_ssl_port is None:
            return None
        return ",".join(str(n.sasl_ssl_bootstrap_servers) for n in self.nodes)

    @property
    def ssl_cafile(self) -> Path:
        return self.nodes[0].ssl_cafile

    @property
    def principals_file(self) -> Path:
        return self.nodes[0].principals_file

    def env_file(self, principal: str) -> Path:
        return self.nodes[0].env_file(principal)

    def sasl_credentials(self) -> SaslCredentials:
        return self.nodes[0].sasl_credentials()

    def principal_credentials(self, name: str) -> SaslCredentials:
        return self.nodes[0].principal_credentials(name)

    def client_settings(self, principal: str, topic_prefix: str = "certrail") -> KafkaSettings:
        """Client settings acting as ``principal``, bootstrapping from every node."""
        return client_settings(self.bootstrap_servers, principal, self._password(principal), topic_prefix)

    def client_env(self, principal: str) -> dict[str, str]:
        return client_env(self.bootstrap_servers, principal, self._password(principal))

    def _password(self, principal: str) -> str | None:
        if not self.authentication:
            return None
        return self.principal_credentials(principal).password.get_secret_value()

    # ------------------------------------------------------------------ lifecycle
    def start(self, wait_timeout: float = 120.0) -> ClusterStatus:
        """Start every node that is not running and wait until all are registered brokers.

        A node answers only once a majority of the controllers runs, so all are launched
        before any is waited for. On failure the nodes this call launched are stopped again.
        """
        deadline = time.monotonic() + wait_timeout
        running = [n for n in self.nodes if n.status().running]
        self._write_layout(any_running=bool(running))
        self.nodes[0].fetch()
        launched: list[tuple[LocalKafka, int]] = []
        try:
            for node in self.nodes:
                if node not in running:
                    launched.append((node, node.launch()))
            for node, pid in launched:
                node.wait_ready(pid, max(1.0, deadline - time.monotonic()))
            _in_thread(lambda: self._await_brokers(deadline))
        except BaseException:
            for node, _pid in launched:
                node.stop(timeout=10.0)
            raise
        if self.authentication:
            for name in ENV_FILE_PRINCIPALS:
                write_env_file(self.env_file(name), name, self.client_env(name))
        return self.status(already_running=not launched)

    def stop(self, timeout: float = 60.0) -> int:
        """Stop every node (SIGTERM to all at once, then wait; SIGKILL as a last resort); return how many ran."""
        deadline = time.monotonic() + timeout
        pids = {node: node.status().pid for node in self.nodes}
        for pid in pids.values():
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        errors: list[str] = []
        for node in self.nodes:
            try:
                node.stop(timeout=max(1.0, deadline - time.monotonic()))
            except LocalKafkaError as exc:  # try the other nodes before reporting it
                errors.append(str(exc))
        if errors:
            raise LocalKafkaError("; ".join(errors))
        return sum(pid is not None for pid in pids.values())

    def status(self, *, already_running: bool = False) -> ClusterStatus:
        return ClusterStatus(
            nodes=tuple(n.status() for n in self.nodes),
            bootstrap_servers=self.bootstrap_servers,
            data_dir=self.data_dir,
            already_running=already_running,
        )

    def describe_quorum(self, timeout: float = 15.0) -> QuorumInfo:
        """The controller quorum (DescribeQuorum through a running broker, which forwards it)."""
        return _in_thread(lambda: describe_quorum(self._admin_settings(), timeout))

    # ------------------------------------------------------------------ internals
    def _admin_settings(self) -> KafkaSettings:
        live = ",".join(n.bootstrap_servers for n in self.nodes if n.status().running) or self.bootstrap_servers
        return client_settings(live, ADMIN, self._password(ADMIN), "certrail")

    async def _await_brokers(self, deadline: float) -> None:
        wanted = {n.node_id for n in self.nodes}
        seen: set[int] = set()
        while True:
            admin = AIOKafkaAdminClient(**admin_kwargs(self._admin_settings()))
            try:
                await admin.start()
                seen = {int(b["node_id"]) for b in (await admin.describe_cluster())["brokers"]}
            except KafkaError:
                seen = set()
            finally:
                await admin.close()
            if seen >= wanted:
                return
            if time.monotonic() >= deadline:
                raise LocalKafkaError(f"the cluster in {self.data_dir} has brokers {sorted(seen)}, not {sorted(wanted)}")
            await asyncio.sleep(0.2)

    def _stored_cluster_id(self) -> str | None:
        path = self.data_dir / LAYOUT_FILE
        return str(json.loads(path.read_text())["cluster_id"]) if path.is_file() else None

    def _write_layout(self, *, any_running: bool) -> None:
        path = self.data_dir / LAYOUT_FILE
        wanted = {
            "cluster_id": self.cluster_id,
            "host": self.nodes[0].host,
            "authentication": self.authentication,
            "nodes": [asdict(p) for p in self.ports],
        }
        if path.is_file():
            stored = json.loads(path.read_text())
            if len(stored["nodes"]) != len(self.ports):
                raise LocalKafkaError(
                    f"{self.data_dir} holds a {len(stored['nodes'])}-node cluster, not {len(self.ports)}: "
                    "stop it and remove that directory to change the number of brokers"
                )
            if any_running and stored != wanted:
                raise LocalKafkaError(
                    f"a Kafka cluster already runs from {self.data_dir} with {stored['nodes']}; stop it first"
                )
        elif (self.data_dir / "kraft").exists():
            raise LocalKafkaError(f"{self.data_dir} holds a single broker's data; use another --data-dir")
        write_private(path, json.dumps(wanted, indent=1) + "\n")


def _in_thread(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion in a thread of its own (the caller may be running a loop)."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(factory()))
        except BaseException as exc:  # handed to the calling thread
            error.append(exc)

    worker = threading.Thread(target=run, name="local-kafka-cluster", daemon=True)
    worker.start()
    worker.join()
    if error:
        raise error[0]
    return result[0]


# ---------------------------------------------------------------------- DescribeQuorum (KIP-595)
_REPLICA_STATE = (("replica_id", Int32), ("log_end_offset", Int64), ("tags", TaggedFields))


class _DescribeQuorumResponse_v0(Response):  # noqa: N801 - aiokafka's naming of protocol versions
    API_KEY = 55
    API_VERSION = 0
    SCHEMA = Schema(
        ("error_code", Int16),
        ("topics", CompactArray(
            ("topic_name", CompactString("utf-8")),
            ("partitions", CompactArray(
                ("partition_index", Int32),
                ("error_code", Int16),
                ("leader_id", Int32),
                ("leader_epoch", Int32),
                ("high_watermark", Int64),
                ("current_voters", CompactArray(*_REPLICA_STATE)),
                ("observers", CompactArray(*_REPLICA_STATE)),
                ("tags", TaggedFields),
            )),
            ("tags", TaggedFields),
        )),
        ("tags", TaggedFields),
    )  # fmt: skip


class _DescribeQuorumRequest_v0(RequestStruct):  # noqa: N801
    FLEXIBLE_VERSION = True
    API_KEY = 55
    API_VERSION = 0
    RESPONSE_TYPE = _DescribeQuorumResponse_v0
    SCHEMA = Schema(
        ("topics", CompactArray(
            ("topic_name", CompactString("utf-8")),
            ("partitions", CompactArray(("partition_index", Int32), ("tags", TaggedFields))),
            ("tags", TaggedFields),
        )),
        ("tags", TaggedFields),
    )  # fmt: skip


class _DescribeQuorum(Request[_DescribeQuorumRequest_v0]):
    API_KEY = 55

    def build(self, request_struct_class: type[_DescribeQuorumRequest_v0]) -> _DescribeQuorumRequest_v0:
        return request_struct_class([(_METADATA_TOPIC, [(0, {})], {})], {})


async def describe_quorum(settings: KafkaSettings, timeout: float = 15.0) -> QuorumInfo:
    """The KRaft controller quorum of any cluster (needs DESCRIBE on the cluster: a super user)."""
    client = AIOKafkaClient(**admin_kwargs(settings))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        response = await asyncio.wait_for(client.send(client.get_random_node(), _DescribeQuorum()), timeout)
    finally:
        await client.close()
    data = response.to_object()
    codes = [data["error_code"]] + [p["error_code"] for t in data["topics"] for p in t["partitions"]]
    if any(codes):
        raise LocalKafkaError(f"DescribeQuorum failed: {for_code(next(c for c in codes if c)).__name__}")
    (partition,) = data["topics"][0]["partitions"]
    return QuorumInfo(
        leader_id=partition["leader_id"],
        leader_epoch=partition["leader_epoch"],
        high_watermark=partition["high_watermark"],
        voters=tuple(sorted(v["replica_id"] for v in partition["current_voters"])),
    )
