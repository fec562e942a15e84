"""certrail's ACL table as data: who may write and read what, per topic prefix and group."""

from __future__ import annotations

import pytest

from services.common.contracts.topics import Topics
from services.common.kafka_acls import (
    AclBinding,
    Operation,
    PatternType,
    ResourceType,
    ServiceGroups,
    acl_bindings,
    service_groups_from,
    superseded_bindings,
)


def _rights(bindings: list[AclBinding], who: str, operation: Operation) -> set[tuple[str, str]]:
    return {(b.resource_name, b.pattern.name) for b in bindings
            if b.principal == f"User:{who}" and b.operation is operation and b.resource_type is ResourceType.TOPIC}


@pytest.mark.parametrize("prefix", ["certrail", "acme.certrail"])
def test_writes_follow_the_prefix_and_the_producers_table(prefix: str) -> None:
    bindings = acl_bindings(Topics(prefix))
    p = prefix
    assert _rights(bindings, "requester", Operation.WRITE) == {(f"{p}.requests", "LITERAL")}
    assert _rights(bindings, "issuer", Operation.WRITE) == {
        (f"{p}.events.issuer", "LITERAL"), (f"{p}.deadletter", "LITERAL")}
    assert _rights(bindings, "deployer", Operation.WRITE) == {
        (f"{p}.events.deployer", "LITERAL"), (f"{p}.requests", "LITERAL"), (f"{p}.deadletter", "LITERAL")}
    assert _rights(bindings, "auditor", Operation.WRITE) == {(f"{p}.audit.checkpoints", "LITERAL")}
    assert _rights(bindings, "gateway", Operation.WRITE) == {
        (f"{p}.commands.", "PREFIXED"), (f"{p}.provisioning", "LITERAL"), (f"{p}.events.gateway", "LITERAL"),
        (f"{p}.deadletter", "LITERAL")}
    assert _rights(bindings, "auditor", Operation.READ) == {(f"{p}.", "PREFIXED")}
    assert _rights(bindings, "gateway", Operation.READ) == {(f"{p}.requests", "LITERAL"), (f"{p}.events.issuer", "LITERAL")}
    assert _rights(bindings, "deployer", Operation.READ) == {
        (f"{p}.provisioning", "LITERAL"), (f"{p}.events.gateway", "LITERAL"), (f"{p}.events.issuer", "LITERAL")}
    assert not _rights(bindings, "requester", Operation.READ)


def test_each_events_topic_has_exactly_one_writer_and_the_old_topic_none() -> None:
    topics = Topics()
    writers: dict[str, set[str]] = {}
    for b in acl_bindings(topics):
        if b.operation is Operation.WRITE and b.resource_type is ResourceType.TOPIC:
            writers.setdefault(b.resource_name, set()).add(b.principal)
    assert writers[topics.gateway_events] == {"User:gateway"}
    assert writers[topics.issuer_events] == {"User:issuer"}
    assert writers[topics.deployer_events] == {"User:deployer"}
    assert topics.legacy_events not in writers
    # no prefixed write rule reaches an events topic either
    assert not [name for name in writers if topics.gateway_events.startswith(name) and name != topics.gateway_events]


def test_only_the_issuer_creates_topics_and_only_command_topics() -> None:
    """The issuer owns the connector registry and creates a connector's command topic (decision 0034)."""
    creators = {(b.principal, b.resource_name, b.pattern) for b in acl_bindings(Topics()) if b.operation is Operation.CREATE}
    assert creators == {("User:issuer", "certrail.commands.", PatternType.PREFIXED)}


def test_each_service_reads_its_own_group_and_the_requester_none() -> None:
    groups = ServiceGroups(gateway="g1", issuer="i1", deployer="d1", auditor="a1")
    found = {(b.principal, b.resource_name) for b in acl_bindings(Topics(), groups) if b.resource_type is ResourceType.GROUP}
    assert found == {("User:gateway", "g1"), ("User:issuer", "i1"), ("User:deployer", "d1"), ("User:auditor", "a1")}


def test_no_cluster_rights_and_no_duplicates() -> None:
    bindings = acl_bindings(Topics())
    assert len(bindings) == len(set(bindings))
    assert all(b.resource_type is not ResourceType.CLUSTER for b in bindings)


def test_groups_come_from_the_services_settings_environment() -> None:
    groups = service_groups_from({"CERTRAIL_ISSUER_GROUP_ID": "issuers-eu", "CERTRAIL_GATEWAY_GROUP_ID": ""})
    assert groups == ServiceGroups(issuer="issuers-eu")


def test_the_default_groups_are_the_services_defaults() -> None:
    from services.auditor.settings import AuditorSettings
    from services.deployer.settings import DeployerSettings
    from services.gateway.settings import GatewaySettings
    from services.issuer.settings import IssuerSettings

    defaults = ServiceGroups()
    for settings_class, group in ((GatewaySettings, defaults.gateway), (IssuerSettings, defaults.issuer),
                                  (DeployerSettings, defaults.deployer), (AuditorSettings, defaults.auditor)):
        assert settings_class.model_fields["group_id"].default == group


def test_the_superseded_grants_are_on_the_old_events_topic_and_the_gateways_topic_creation_and_none_of_the_table() -> None:
    topics = Topics("acme")
    old = superseded_bindings(topics)
    legacy = [b for b in old if b.resource_name == "acme.events"]
    assert {(b.principal, b.operation) for b in legacy} == {
        ("User:gateway", Operation.WRITE), ("User:issuer", Operation.WRITE),
        ("User:deployer", Operation.READ), ("User:deployer", Operation.WRITE)}
    assert {b.pattern for b in legacy} == {PatternType.LITERAL}
    # decision 0034: the gateway no longer creates (nor alters) command topics, the issuer does
    creating = [b for b in old if b not in legacy]
    assert {(b.principal, b.resource_name, b.pattern) for b in creating} == {
        ("User:gateway", "acme.commands.", PatternType.PREFIXED)}
    assert {b.operation for b in creating} == {Operation.CREATE, Operation.DESCRIBE_CONFIGS, Operation.ALTER_CONFIGS,
                                               Operation.ALTER}
    assert not set(old) & set(acl_bindings(topics))
