"""Who uses a connector: deleting one is refused while anything does (DESIGN.md "The emCA connector").

A `UsageCheck` answers, inside the delete's write transaction, what still uses a connector.
The registry runs every check it was given; any answer refuses the delete.

- `LiveCertificateUsage` (now): the auditor's certificate inventory (``certificate_inventory``,
  migration 0002) has a row for the connector that is pending, or active and not yet expired.
- Provisioning profiles (the gateway, when it adds its profile table) plug in a check of their
  own: "profiles naming this connector". Until then no profile can name one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from services.common.db_schema import CertificateInventory

__all__ = ["LiveCertificateUsage", "UsageCheck", "default_usage_checks"]


class UsageCheck(Protocol):
    """One kind of use of a connector."""

    name: str

    def usages(self, session: Session, connector: str) -> list[str]:
        """Human-readable uses (empty: none). Runs inside the delete's transaction."""
        ...


class LiveCertificateUsage:
    """Certificates in the inventory that were requested through the connector and are still live."""

    name = "live certificates"
    LIVE_STATES = ("pending", "active")

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC), *, examples: int = 5) -> None:
        self._clock = clock
        self._examples = examples

    def usages(self, session: Session, connector: str) -> list[str]:
        inventory = CertificateInventory
        live = (
            (inventory.connector == connector)
            & inventory.status.in_(self.LIVE_STATES)
            & or_(inventory.not_after.is_(None), inventory.not_after > self._clock())
        )
        count = session.scalar(select(func.count()).select_from(inventory).where(live)) or 0
        if not count:
            return []
        ids = session.scalars(select(inventory.certificate_id).where(live).order_by(inventory.certificate_id).limit(self._examples))
        return [f"{count} live certificate(s), e.g. {', '.join(ids)}"]


def default_usage_checks(clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> list[UsageCheck]:
    """The checks that exist today (profiles add theirs with the gateway)."""
    return [LiveCertificateUsage(clock)]
