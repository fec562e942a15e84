"""The topic map (decision 0016): each message type travels on the one topic its producer owns."""

from __future__ import annotations

import pytest

from services.common.contracts import admin, events
from services.common.contracts.catalog import ALL_TYPES
from services.common.contracts.commands import COMMAND_TYPES
from services.common.contracts.topics import Topics

DEPLOYER_ADMIN = {admin.TargetCreated, admin.TargetUpdated, admin.TargetDeleted, admin.TargetBound, admin.TargetUnbound}
#: the connector registry is the issuer's (decision 0034)
ISSUER_ADMIN = {admin.ConnectorCreated, admin.ConnectorUpdated, admin.ConnectorActivated, admin.ConnectorDeactivated,
                admin.ConnectorDeleted}
GATEWAY = {events.RequestAccepted, events.RequestRejected, events.RenewalDue, events.CertificateExpiring,
           events.CertificateSuperseded,
           *(set(admin.ADMIN_TYPES) - DEPLOYER_ADMIN - ISSUER_ADMIN)}
ISSUER = {events.IssuancePending, events.CertificateIssued, events.IssuanceFailed, events.CertificateRevoked,
          events.RevocationFailed, events.ConnectorStatusChanged, *ISSUER_ADMIN}
DEPLOYER = {events.CertificateDeployed, events.DeploymentFailed, *DEPLOYER_ADMIN}  # targets and bindings (issue 19)


@pytest.mark.parametrize("prefix", ["certrail", "acme.certrail"])
def test_every_event_names_its_producers_topic(prefix: str) -> None:
    topics = Topics(prefix)
    for owners, topic in ((GATEWAY, topics.gateway_events), (ISSUER, topics.issuer_events),
                          (DEPLOYER, topics.deployer_events)):
        for cls in owners:
            assert topics.topic_of(cls) == topic, cls.__name__
    assert GATEWAY | ISSUER | DEPLOYER == set(events.EVENT_TYPES) | set(admin.ADMIN_TYPES)


def test_the_events_topics_and_the_fixed_topics() -> None:
    topics = Topics("acme")
    assert topics.events_topics() == ("acme.events.gateway", "acme.events.issuer", "acme.events.deployer")
    assert topics.fixed() == ("acme.requests", "acme.provisioning", "acme.events.gateway", "acme.events.issuer",
                              "acme.events.deployer", "acme.deadletter", "acme.audit.checkpoints")
    assert topics.legacy_events == "acme.events" and topics.legacy_events not in topics.fixed()


def test_every_non_command_type_has_exactly_one_topic_among_the_fixed_ones() -> None:
    topics = Topics()
    for cls in ALL_TYPES:
        if cls.CHANNEL == "commands":
            continue
        assert [t for t in topics.fixed() if topics.may_arrive_on(cls, t)] == [topics.topic_of(cls)], cls.__name__


def test_commands_come_from_any_command_topic_only() -> None:
    topics = Topics()
    for cls in [c for c in COMMAND_TYPES if c.CHANNEL == "commands"]:
        with pytest.raises(ValueError, match="depends on its connector"):
            topics.topic_of(cls)
        assert topics.may_arrive_on(cls, topics.commands("emca-1"))
        assert not topics.may_arrive_on(cls, "certrail.commands.")
        assert not any(topics.may_arrive_on(cls, t) for t in topics.fixed())
        assert not topics.may_arrive_on(cls, "other.commands.emca-1")
