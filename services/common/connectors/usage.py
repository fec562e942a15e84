"""Who uses a connector: deleting one is refused while anything does (DESIGN.md "The emCA connector").

A `UsageCheck` answers, inside the delete's write transaction, what still uses a connector. The registry
runs every check its caller gave it; any answer refuses the delete. The registry itself knows no use: the
checks belong to the service that owns what uses a connector. The gateway gives its own
(services/gateway/api_connectors.usage_checks): provisioning profiles naming the connector, and
certificates still live through it by the gateway's own projections (decision 0017: no service reads
another's tables).
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session

__all__ = ["UsageCheck"]


class UsageCheck(Protocol):
    """One kind of use of a connector."""

    name: str

    def usages(self, session: Session, connector: str) -> list[str]:
        """Human-readable uses (empty: none). Runs inside the delete's transaction."""
        ...
