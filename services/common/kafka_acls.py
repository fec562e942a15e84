"""certrail's Kafka principals and the ACLs that let each write only what it produces.

One table (`acl_bindings`) computes every ACL from the topic prefix and the
services' consumer groups; `apply_acls` removes the bindings earlier tables
granted that no longer hold (`superseded_bindings`: write on the single events
topic, decision 0016) and creates them (idempotent: Kafka keeps one copy of a
binding), and `describe_acls` reads back what the cluster has. They speak Kafka's
CreateAcls/DeleteAcls/DescribeAcls protocol through aiokafka's client (aiokafka's
admin client has no ACL methods), authenticated as a super user (the ``admin``
principal).

    topics = Topics("certrail")
    await apply_acls(admin_settings, acl_bindings(topics, ServiceGroups()), superseded_bindings(topics))

Principals (SCRAM-SHA-512 users, one per service): see docs/decisions/0012.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest_v1, DeleteAclsRequest_v1, DescribeAclsRequest_v1
from aiokafka.protocol.api import Request

from services.common.contracts.topics import Topics
from services.common.kafka_config import admin_kwargs
from services.common.settings import KafkaSettings

#: the broker's own principal (inter-broker and controller traffic); a super user
BROKER: Final = "broker"
#: topics ensure, ACL changes, the CLI's connector topics, `certrail audit` tools; a super user
ADMIN: Final = "admin"
#: upstream producers of signed requests: write certrail.requests, nothing else
REQUESTER: Final = "requester"
SERVICE_PRINCIPALS: Final = ("gateway", "issuer", "deployer", "auditor")
#: every SCRAM user the embedded broker creates (the broker's own included)
ALL_PRINCIPALS: Final = (BROKER, ADMIN, *SERVICE_PRINCIPALS, REQUESTER)
SUPER_USERS: Final = (BROKER, ADMIN)
SCRAM_MECHANISM: Final = "SCRAM-SHA-512"


class ResourceType(IntEnum):
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4


class PatternType(IntEnum):
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    READ = 3
    WRITE = 4
    CREATE = 5
    ALTER = 7
    DESCRIBE = 8
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11


_ANY: Final = 1  # the ANY value of every DescribeAcls filter enum
_ALLOW: Final = 3


class KafkaAclError(RuntimeError):
    """The cluster refused to create or list ACLs; the message says which and why."""


@dataclass(frozen=True, slots=True, order=True)
class AclBinding:
    """One ALLOW rule: ``principal`` may do ``operation`` on a resource (from any host)."""

    principal: str  # "User:gateway"
    resource_type: ResourceType
    resource_name: str
    pattern: PatternType
    operation: Operation

    def describe(self) -> str:
        kind = self.resource_type.name.lower()
        pattern = "prefix " if self.pattern is PatternType.PREFIXED else ""
        return f"{self.principal:<16} {self.operation.name:<16} {kind} {pattern}{self.resource_name}"


@dataclass(frozen=True, slots=True)
class ServiceGroups:
    """The consumer group of each service (the defaults of each service's ``GROUP_ID`` setting)."""

    gateway: str = "certrail-gateway"
    issuer: str = "certrail-issuer"
    deployer: str = "certrail-deployer"
    auditor: str = "certrail-auditor"


def service_groups_from(environ: Mapping[str, str]) -> ServiceGroups:
    """The groups the services will use: each ``CERTRAIL_<SERVICE>_GROUP_ID`` of ``environ``, else the default."""
    defaults = ServiceGroups()
    return ServiceGroups(
        **{name: environ.get(f"CERTRAIL_{name.upper()}_GROUP_ID") or getattr(defaults, name) for name in SERVICE_PRINCIPALS}
    )


def principal(name: str) -> str:
    return f"User:{name}"


def acl_bindings(topics: Topics, groups: ServiceGroups | None = None) -> list[AclBinding]:
    """Every ACL of certrail's principals, sorted; the table of docs/decisions/0012 (events topics
    split by producer: docs/decisions/0016). No one may write the old ``<prefix>.events``."""
    groups = groups or ServiceGroups()
    commands_prefix = topics.commands("x")[:-1]  # "<prefix>.commands."
    everything_prefix = f"{topics.prefix}."
    lit, pre = PatternType.LITERAL, PatternType.PREFIXED
    topic, group = ResourceType.TOPIC, ResourceType.GROUP
    O = Operation  # noqa: N806 - a short alias keeps the table readable
    rules: list[tuple[str, ResourceType, str, PatternType, Operation]] = [
        # gateway: reads requests and the issuer's events (its projections of issued certificates and of the
        # connectors); writes commands, provisioning, its events, deadletter
        ("gateway", topic, topics.requests, lit, O.READ),
        ("gateway", topic, topics.issuer_events, lit, O.READ),
        ("gateway", topic, commands_prefix, pre, O.WRITE),
        ("gateway", topic, topics.provisioning, lit, O.WRITE),
        ("gateway", topic, topics.gateway_events, lit, O.WRITE),
        ("gateway", topic, topics.deadletter, lit, O.WRITE),
        ("gateway", group, groups.gateway, lit, O.READ),
        # issuer: reads every connector's commands (and creates a connector's topic: it owns the registry, decision
        # 0034); writes its events (the connector admin events among them) and deadletter
        ("issuer", topic, commands_prefix, pre, O.READ),
        ("issuer", topic, commands_prefix, pre, O.CREATE),
        ("issuer", topic, commands_prefix, pre, O.DESCRIBE_CONFIGS),
        ("issuer", topic, commands_prefix, pre, O.ALTER_CONFIGS),
        ("issuer", topic, commands_prefix, pre, O.ALTER),
        ("issuer", topic, topics.issuer_events, lit, O.WRITE),
        ("issuer", topic, topics.deadletter, lit, O.WRITE),
        ("issuer", group, groups.issuer, lit, O.READ),
        # deployer: reads provisioning and the gateway's and the issuer's events; writes its events,
        # requests (bot CSRs) and deadletter
        ("deployer", topic, topics.provisioning, lit, O.READ),
        ("deployer", topic, topics.gateway_events, lit, O.READ),
        ("deployer", topic, topics.issuer_events, lit, O.READ),
        ("deployer", topic, topics.deployer_events, lit, O.WRITE),
        ("deployer", topic, topics.requests, lit, O.WRITE),
        ("deployer", topic, topics.deadletter, lit, O.WRITE),
        ("deployer", group, groups.deployer, lit, O.READ),
        # auditor: reads every certrail topic; writes its signed checkpoints
        ("auditor", topic, everything_prefix, pre, O.READ),
        ("auditor", topic, topics.audit_checkpoints, lit, O.WRITE),
        ("auditor", group, groups.auditor, lit, O.READ),
        # upstream requesters: certrail.requests, write only
        (REQUESTER, topic, topics.requests, lit, O.WRITE),
    ]
    return sorted({AclBinding(principal(p), rtype, name, pattern, op) for p, rtype, name, pattern, op in rules})


def superseded_bindings(topics: Topics) -> list[AclBinding]:
    """Bindings earlier tables granted that no longer hold; `apply_acls` removes them: decision
    0012's on the single events topic, which no one may write or read but the auditor since the
    events were split by producer (decision 0016), and the gateway's creation of command topics, the issuer's
    since it owns the connector registry (decision 0034)."""
    old = topics.legacy_events
    granted = (("gateway", Operation.WRITE), ("issuer", Operation.WRITE), ("deployer", Operation.READ),
               ("deployer", Operation.WRITE))
    legacy = [AclBinding(principal(p), ResourceType.TOPIC, old, PatternType.LITERAL, op) for p, op in granted]
    # the gateway created connector topics until the registry moved into the issuer (decision 0034)
    commands_prefix = topics.commands("x")[:-1]
    creating = [AclBinding(principal("gateway"), ResourceType.TOPIC, commands_prefix, PatternType.PREFIXED, op)
                for op in (Operation.CREATE, Operation.DESCRIBE_CONFIGS, Operation.ALTER_CONFIGS, Operation.ALTER)]
    return sorted(legacy + creating)


class _CreateAcls(Request[CreateAclsRequest_v1]):
    """CreateAcls v1 (the oldest version Kafka 4 accepts) with many creations in one request."""

    API_KEY = 30

    def __init__(self, bindings: Sequence[AclBinding]) -> None:
        self._bindings = list(bindings)

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class(
            [
                (b.resource_type, b.resource_name, b.pattern, b.principal, "*", b.operation, _ALLOW)
                for b in self._bindings
            ]
        )


class _DeleteAcls(Request[DeleteAclsRequest_v1]):
    """DeleteAcls v1 with one exact filter per binding (only that binding matches)."""

    API_KEY = 31

    def __init__(self, bindings: Sequence[AclBinding]) -> None:
        self._bindings = list(bindings)

    def build(self, request_struct_class: type[DeleteAclsRequest_v1]) -> DeleteAclsRequest_v1:
        return request_struct_class(
            [
                (b.resource_type, b.resource_name, b.pattern, b.principal, "*", b.operation, _ALLOW)
                for b in self._bindings
            ]
        )


class _DescribeAllAcls(Request[DescribeAclsRequest_v1]):
    """DescribeAcls v1 matching every binding of the cluster."""

    API_KEY = 29

    def build(self, request_struct_class: type[DescribeAclsRequest_v1]) -> DescribeAclsRequest_v1:
        return request_struct_class(_ANY, None, _ANY, None, None, _ANY, _ANY)


async def apply_acls(
    settings: KafkaSettings, bindings: Sequence[AclBinding], superseded: Sequence[AclBinding] = ()
) -> None:
    """Remove ``superseded`` (`superseded_bindings`; absent ones are fine), then create ``bindings``
    (existing ones are kept as they are). ``settings`` must be a super user's."""
    if not bindings and not superseded:
        return
    client = AIOKafkaClient(**admin_kwargs(settings))
    try:
        await client.bootstrap()
        if superseded:
            removed = await client.send(client.get_random_node(), _DeleteAcls(superseded))
            refused = [f"{binding.describe()}: {for_code(code).__name__}{f' ({message})' if message else ''}"
                       for binding, (code, message, _matching) in zip(superseded, removed.filter_responses, strict=True)
                       if code]
            if refused:
                raise KafkaAclError("the cluster refused to remove ACLs:\n  " + "\n  ".join(refused))
        if not bindings:
            return
        response = await client.send(client.get_random_node(), _CreateAcls(bindings))
    finally:
        await client.close()
    failures = [
        f"{binding.describe()}: {for_code(code).__name__}{f' ({message})' if message else ''}"
        for binding, (code, message) in zip(bindings, response.creation_responses, strict=True)
        if code
    ]
    if failures:
        raise KafkaAclError("the cluster refused ACLs:\n  " + "\n  ".join(failures))


async def describe_acls(settings: KafkaSettings) -> list[AclBinding]:
    """Every ALLOW binding the cluster has that certrail can express (sorted); others are left out."""
    client = AIOKafkaClient(**admin_kwargs(settings))
    try:
        await client.bootstrap()
        response = await client.send(client.get_random_node(), _DescribeAllAcls())
    finally:
        await client.close()
    if response.error_code:
        raise KafkaAclError(f"cannot list ACLs: {for_code(response.error_code).__name__}: {response.error_message}")
    found: set[AclBinding] = set()
    for rtype, name, pattern, acls in response.resources:
        for who, _host, operation, permission in acls:
            if permission != _ALLOW:
                continue
            try:
                found.add(AclBinding(who, ResourceType(rtype), name, PatternType(pattern), Operation(operation)))
            except ValueError:  # a binding of a kind certrail never sets (e.g. a cluster ACL of another tool)
                continue
    return sorted(found)
