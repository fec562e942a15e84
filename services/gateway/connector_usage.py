"""Who uses a connector: deleting one is refused while anything does (DESIGN.md "The emCA connector").

A `UsageCheck` answers what still uses a connector, from the gateway's own tables: provisioning profiles naming
it, and certificates still live through it by the gateway's own projections (services/gateway/api_connectors
.usage_checks; decision 0017: no service reads another's tables). The registry is the issuer's and knows no use
(decision 0034): the gateway runs its checks before it asks the issuer to delete, and ``certrail connectors
delete`` gives them to the registry, which runs them in the delete's transaction (its `UsageCheck` is the same
shape).
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session

__all__ = ["UsageCheck"]


class UsageCheck(Protocol):
    """One kind of use of a connector."""

    name: str

    def usages(self, session: Session, connector: str) -> list[str]:
        """Human-readable uses (empty: none)."""
        ...
