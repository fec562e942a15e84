"""Create and reconcile certrail's Kafka topics.

`ensure_topics` is idempotent: it creates missing topics (replication factor min(3, the
brokers registered with the cluster, a stopped one included; min.insync.replicas min(2, that):
RF 3 and min ISR 2 on the local three-node cluster, 1 and 1 on the single broker), raises the partition
count of existing ones when it is lower than asked (never lowers it: that would
break per-key ordering), and sets ``retention.ms`` and ``min.insync.replicas``.
The topics are the audit source, so retention is long by default (10 years);
pass ``retention_ms=-1`` to keep records forever.

    report = await ensure_topics(settings, Topics(settings.topic_prefix).fixed())
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import IncompatibleBrokerVersion, for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Boolean, CompactArray, CompactString, Int8, Int16, Int32, Schema, TaggedFields

from services.common.kafka_config import admin_kwargs
from services.common.settings import KafkaSettings

DEFAULT_PARTITIONS: Final = 6
DEFAULT_RETENTION_MS: Final = 10 * 365 * 24 * 60 * 60 * 1000  # 10 years
RETENTION_MS: Final = "retention.ms"
MIN_INSYNC_REPLICAS: Final = "min.insync.replicas"

_TOPIC_ALREADY_EXISTS: Final = 36
_UNKNOWN_TOPIC_OR_PARTITION: Final = 3
_DYNAMIC_TOPIC_CONFIG: Final = 1  # DescribeConfigs config_source of a per-topic override


class TopicAdminError(RuntimeError):
    """The cluster refused to create or change a topic; the message names the topic and the error."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What a topic should look like."""

    partitions: int
    replication_factor: int
    configs: Mapping[str, str]


@dataclass(slots=True)
class EnsureTopicsReport:
    """What `ensure_topics` did, per topic."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    changes: dict[str, list[str]] = field(default_factory=dict)  # topic -> human-readable changes

    def summary(self) -> str:
        return f"created {len(self.created)}, updated {len(self.updated)}, unchanged {len(self.unchanged)}"


async def ensure_topics(
    settings: KafkaSettings,
    topics: Sequence[str],
    partitions: int = DEFAULT_PARTITIONS,
    replication_factor: int | None = None,
    retention_ms: int = DEFAULT_RETENTION_MS,
    min_insync_replicas: int | None = None,
) -> EnsureTopicsReport:
    """Make ``topics`` exist with the given layout and configs; return what changed.

    ``replication_factor`` defaults to min(3, number of brokers) and
    ``min_insync_replicas`` to min(2, replication factor). The brokers counted are those
    registered with the cluster, fenced (stopped) ones included where the cluster tells
    (Kafka 4.0+), so that a topic created while a broker is down is not created with fewer
    replicas for good: its creation is refused until enough brokers are up.
    """
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    if retention_ms < -1:
        raise ValueError("retention_ms must be -1 (forever) or a number of milliseconds")
    names = list(dict.fromkeys(topics))
    report = EnsureTopicsReport()
    if not names:
        return report
    admin = AIOKafkaAdminClient(**admin_kwargs(settings))
    await admin.start()
    try:
        live = len((await admin.describe_cluster())["brokers"])
        brokers = max(live, await _registered_brokers(settings))
        rf = replication_factor if replication_factor is not None else min(3, brokers)
        if not 1 <= rf <= brokers:
            raise ValueError(f"replication_factor {rf} must be between 1 and the cluster's {brokers} brokers")
        min_isr = min_insync_replicas if min_insync_replicas is not None else min(2, rf)
        if not 1 <= min_isr <= rf:
            raise ValueError(f"min_insync_replicas {min_isr} must be between 1 and the replication factor {rf}")
        spec = TopicSpec(
            partitions=partitions,
            replication_factor=rf,
            configs={RETENTION_MS: str(retention_ms), MIN_INSYNC_REPLICAS: str(min_isr)},
        )
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing and rf > live:
            raise TopicAdminError(
                f"cannot create {', '.join(missing)} with replication factor {rf}: only {live} of the "
                f"cluster's {brokers} brokers are up; start the others (or wait for them) and retry"
            )
        raced = await _create(admin, missing, spec, settings.request_timeout_ms)
        report.created.extend(n for n in missing if n not in raced)
        for name in (n for n in names if n in existing or n in raced):
            changes = await _reconcile(admin, name, spec, settings.request_timeout_ms)
            if changes:
                report.updated.append(name)
                report.changes[name] = changes
            else:
                report.unchanged.append(name)
        if report.created or report.updated:
            await _wait_for_leaders(admin, names, spec.partitions, settings.request_timeout_ms)
    finally:
        await admin.close()
    return report


async def delete_topics(settings: KafkaSettings, topics: Sequence[str]) -> None:
    """Delete topics (tests and tooling); missing topics are ignored."""
    if not topics:
        return
    admin = AIOKafkaAdminClient(**admin_kwargs(settings))
    await admin.start()
    try:
        response = await admin.delete_topics(list(topics))
        for topic, code in response.topic_error_codes:
            if code not in (0, _UNKNOWN_TOPIC_OR_PARTITION):
                raise TopicAdminError(f"cannot delete topic {topic}: {for_code(code).__name__}")
    finally:
        await admin.close()


async def _create(admin: AIOKafkaAdminClient, names: list[str], spec: TopicSpec, timeout_ms: int) -> set[str]:
    """Create the topics; return those that someone else created meanwhile."""
    if not names:
        return set()
    new = [NewTopic(n, spec.partitions, spec.replication_factor, topic_configs=dict(spec.configs)) for n in names]
    response = await admin.create_topics(new, timeout_ms=timeout_ms)
    raced: set[str] = set()
    for topic, code, message in response.topic_errors:
        if code == _TOPIC_ALREADY_EXISTS:
            raced.add(topic)
        elif code:
            raise TopicAdminError(f"cannot create topic {topic}: {for_code(code).__name__}: {message}")
    return raced


async def _reconcile(admin: AIOKafkaAdminClient, name: str, spec: TopicSpec, timeout_ms: int) -> list[str]:
    changes: list[str] = []
    (described,) = await admin.describe_topics([name])
    if described["error_code"]:
        raise TopicAdminError(f"cannot describe topic {name}: {for_code(described['error_code']).__name__}")
    current_partitions = len(described["partitions"])
    if current_partitions < spec.partitions:
        await admin.create_partitions({name: NewPartitions(spec.partitions)}, timeout_ms=timeout_ms)
        changes.append(f"partitions {current_partitions} -> {spec.partitions}")

    effective, overrides = await _topic_configs(admin, name)
    wanted = {k: v for k, v in spec.configs.items() if effective.get(k) != v}
    if wanted:
        # AlterConfigs (the only kind aiokafka sends) replaces all of a topic's
        # overrides: send the ones it has, with ours on top, so none is lost.
        merged = {**overrides, **wanted}
        (response, *_) = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs=merged)])
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                raise TopicAdminError(
                    f"cannot change the configs of topic {name}: "
                    f"{for_code(resource['error_code']).__name__}: {resource['error_message']}"
                )
        changes.extend(f"{k} {effective.get(k)} -> {v}" for k, v in wanted.items())
    return changes


async def _topic_configs(admin: AIOKafkaAdminClient, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """(effective configs, the topic's own overrides) of one topic."""
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    effective: dict[str, str] = {}
    overrides: dict[str, str] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                raise TopicAdminError(
                    f"cannot read the configs of topic {name}: {for_code(resource['error_code']).__name__}"
                )
            for entry in resource["config_entries"]:
                key, value = entry["config_names"], entry["config_value"]
                effective[key] = value
                if _is_override(entry):
                    if entry["is_sensitive"]:
                        raise TopicAdminError(f"topic {name} has a sensitive override {key} that cannot be preserved")
                    overrides[key] = value
    return effective, overrides


def _is_override(entry: Mapping[str, Any]) -> bool:
    if "config_source" in entry:
        return bool(entry["config_source"] == _DYNAMIC_TOPIC_CONFIG)
    return not entry.get("is_default", True)


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], partitions: int, timeout_ms: int) -> None:
    """Poll the metadata until every topic shows its partitions with a leader."""
    deadline = time.monotonic() + timeout_ms / 1000
    pending = list(names)
    while True:
        described = await admin.describe_topics(pending)
        pending = [
            t["topic"]
            for t in described
            if t["error_code"]
            or len(t["partitions"]) < partitions
            or any(p["leader"] < 0 for p in t["partitions"])
        ]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TopicAdminError(f"topics {pending} have no leader for every partition after {timeout_ms} ms")
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------------- DescribeCluster v2 (KIP-1073)
class _DescribeClusterResponse_v2(Response):  # type: ignore[misc]  # noqa: N801 - aiokafka is untyped; its naming
    API_KEY = 60
    API_VERSION = 2
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("error_message", CompactString("utf-8")),
        ("endpoint_type", Int8),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        ("brokers", CompactArray(
            ("broker_id", Int32),
            ("host", CompactString("utf-8")),
            ("port", Int32),
            ("rack", CompactString("utf-8")),
            ("is_fenced", Boolean),
            ("tags", TaggedFields),
        )),
        ("cluster_authorized_operations", Int32),
        ("tags", TaggedFields),
    )  # fmt: skip


class _DescribeClusterRequest_v2(RequestStruct):  # type: ignore[misc]  # noqa: N801
    FLEXIBLE_VERSION = True
    API_KEY = 60
    API_VERSION = 2
    RESPONSE_TYPE = _DescribeClusterResponse_v2
    SCHEMA = Schema(
        ("include_cluster_authorized_operations", Boolean),
        ("endpoint_type", Int8),
        ("include_fenced_brokers", Boolean),
        ("tags", TaggedFields),
    )


class _DescribeClusterWithFenced(Request[_DescribeClusterRequest_v2]):  # type: ignore[misc]
    API_KEY = 60

    def build(self, request_struct_class: type[_DescribeClusterRequest_v2]) -> _DescribeClusterRequest_v2:
        return request_struct_class(False, 1, True, {})  # endpoint type 1: brokers


async def _registered_brokers(settings: KafkaSettings) -> int:
    """How many brokers are registered, fenced ones included (0 where the cluster cannot tell:
    before Kafka 4.0; then the live brokers count). DescribeCluster needs no ACL."""
    client = AIOKafkaClient(**admin_kwargs(settings))
    try:
        await client.bootstrap()
        try:
            response = await client.send(client.get_random_node(), _DescribeClusterWithFenced())
        except (IncompatibleBrokerVersion, NotImplementedError):  # no v2 on this cluster
            return 0
    finally:
        await client.close()
    if response.error_code:
        raise TopicAdminError(f"cannot describe the cluster: {for_code(response.error_code).__name__}")
    return len(response.brokers)
