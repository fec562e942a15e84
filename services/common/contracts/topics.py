"""Topic names. Every name starts with a configurable prefix (default
``certrail``) so that several installations can share one cluster."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
    def events(self) -> str:
        return f"{self.prefix}.events"

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
        return (self.requests, self.provisioning, self.events, self.deadletter, self.audit_checkpoints)
