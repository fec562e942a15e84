"""Topic names. Every name starts with a configurable prefix (default
``certrail``) so that several installations can share one cluster."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Protocol

#: the logical channel (a message class's CHANNEL) of every connector's command topic
COMMANDS_CHANNEL = "commands"


class _Routed(Protocol):
    """What `Topics` needs of a message class: its ``CHANNEL`` (see contracts/envelope.py)."""

    CHANNEL: ClassVar[str]

CONNECTOR_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
_CONNECTOR_RE = re.compile(CONNECTOR_NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names for one prefix."""

    prefix: str = "certrail"

    @property
    def requests(self) -> str:
        return f"{self.prefix}.requests"

    @property
    def provisioning(self) -> str:
        return f"{self.prefix}.provisioning"

    @property
    def gateway_events(self) -> str:
        """What the gateway produces: request outcomes, renewals due, expiry warnings, admin events."""
        return f"{self.prefix}.events.gateway"

    @property
    def issuer_events(self) -> str:
        """What the issuer produces: issuance, revocation and connector status."""
        return f"{self.prefix}.events.issuer"

    @property
    def deployer_events(self) -> str:
        """What the deployer produces: deployments and their failures."""
        return f"{self.prefix}.events.deployer"

    def events_topics(self) -> tuple[str, ...]:
        """Every producer's events topic, for a reader that wants every event."""
        return (self.gateway_events, self.issuer_events, self.deployer_events)

    @property
    def legacy_events(self) -> str:
        """The single events topic of installations before decision 0016: no longer written
        (no principal may), kept for the audit record (decision 0016)."""
        return f"{self.prefix}.events"

    def channel(self, channel: str) -> str:
        """The topic of a logical channel (a message class's CHANNEL); not for commands."""
        if channel == COMMANDS_CHANNEL:
            raise ValueError("a command's topic depends on its connector: use Topics.commands(connector)")
        return f"{self.prefix}.{channel}"

    def topic_of(self, message_class: type[_Routed]) -> str:
        """The one topic ``message_class`` is published to: its producer's (not for commands)."""
        return self.channel(message_class.CHANNEL)

    def may_arrive_on(self, message_class: type[_Routed], topic: str) -> bool:
        """Whether a message of ``message_class`` may come from ``topic``: the topic its producer
        owns (a command: any connector's command topic; the issuer checks the connector itself)."""
        if message_class.CHANNEL == COMMANDS_CHANNEL:
            return re.fullmatch(self.commands_pattern, topic) is not None
        return topic == self.channel(message_class.CHANNEL)

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    @property
    def audit_checkpoints(self) -> str:
        return f"{self.prefix}.audit.checkpoints"

    def commands(self, connector: str) -> str:
        """The command topic of one emCA connector (created with the connector)."""
        if not _CONNECTOR_RE.fullmatch(connector):
            raise ValueError(
                f"connector name {connector!r} must match {CONNECTOR_NAME_PATTERN} "
                "(lower-case letters, digits and '-', at most 63 characters)"
            )
        return f"{self.prefix}.commands.{connector}"

    @property
    def commands_pattern(self) -> str:
        """A regular expression matching every connector's command topic."""
        return re.escape(f"{self.prefix}.commands.") + r"[a-z0-9][a-z0-9-]*"

    @property
    def all_pattern(self) -> str:
        """A regular expression matching every certrail topic of this prefix."""
        return re.escape(f"{self.prefix}.") + r".+"

    def fixed(self) -> tuple[str, ...]:
        """The topics that exist independently of connectors."""
        return (self.requests, self.provisioning, *self.events_topics(), self.deadletter, self.audit_checkpoints)
