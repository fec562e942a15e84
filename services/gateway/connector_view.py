"""The gateway's own view of the emCA connectors (decisions 0017 and 0034: each service owns its state).

The issuer owns the connector registry (``emca_connectors``, the secrets, emCA validation). What the gateway
needs of it at request rate is two facts per connector: does it exist, and is it disabled (a misconfigured
connector still takes requests: they wait in its queue). It keeps them in ``gateway_connectors``, folded from
the connector admin events (ConnectorCreated, Updated, Activated, Deactivated, Deleted; outcome succeeded):

- Created or Activated: enabled; Deactivated: disabled; Deleted: a ``deleted`` tombstone; Updated: the
  status its change names, if any (else the one held; enabled when there is none);
- an event older (by event time) than the one last folded for the connector is ignored, the same event twice
  changes nothing: the fold is idempotent and a late redelivery cannot undo a newer change.

Intake (`status_of` through `live_status`, read once per transaction) and the profile checks read it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from services.common.contracts.admin import (
    AdminOutcome,
    ConnectorActivated,
    ConnectorCreated,
    ConnectorDeactivated,
    ConnectorDeleted,
    ConnectorUpdated,
)
from services.common.contracts.envelope import Envelope
from services.common.db import transaction_memo
from services.common.db_schema import GatewayConnector

__all__ = ["CONNECTOR_EVENTS", "DELETED", "DISABLED", "ENABLED", "apply_in", "fold", "live_status"]

log = logging.getLogger(__name__)

ENABLED, DISABLED, DELETED = "enabled", "disabled", "deleted"
#: the admin event types the view folds, by the status each sets (None: the change's ``status``, or the one held)
CONNECTOR_EVENTS: dict[type[Any], str | None] = {
    ConnectorCreated: ENABLED,
    ConnectorUpdated: None,
    ConnectorActivated: ENABLED,
    ConnectorDeactivated: DISABLED,
    ConnectorDeleted: DELETED,
}
_MEMO = "certrail.gateway.connector_view"


def fold(session: Session, name: str, status: str | None, at: datetime, event_id: str | None = None,
         change: dict[str, Any] | None = None) -> bool:
    """Fold one succeeded change of connector ``name`` (``status``: what its event type sets, None for an
    update) at event time ``at``, in ``session``'s transaction; False when it changed nothing (older or repeated)."""
    row = session.get(GatewayConnector, name, with_for_update=True)
    if row is not None and (at < row.changed_at or (event_id is not None and row.event_id == event_id)):
        return False
    if status is None:  # an update keeps the status unless it names one (misconfigured -> enabled)
        named = (change or {}).get("status")
        held = row.status if row is not None and row.status != DELETED else ENABLED
        status = named if named in (ENABLED, DISABLED) else held
    if row is None:
        session.add(GatewayConnector(name=name, status=status, changed_at=at, event_id=event_id))
    else:
        row.status, row.changed_at, row.event_id = status, at, event_id
    session.flush()
    transaction_memo(session, _MEMO).pop(name, None)
    return True


def apply_in(session: Session, envelope: Envelope) -> bool:
    """One connector admin event (an envelope whose data is one of `CONNECTOR_EVENTS`) into the view; a refused
    change changes nothing."""
    data: Any = envelope.data
    if type(data) not in CONNECTOR_EVENTS or data.outcome is not AdminOutcome.SUCCEEDED:
        return False
    return fold(session, data.connector, CONNECTOR_EVENTS[type(data)], envelope.time, envelope.id, dict(data.change))


def live_status(session: Session, name: str) -> str | None:
    """enabled or disabled; None when the gateway knows no such connector (never created, or deleted). Read
    once per transaction (a grouped transaction of requests reads each connector once)."""
    memo = transaction_memo(session, _MEMO)
    if name not in memo:
        row = session.get(GatewayConnector, name)
        memo[name] = None if row is None or row.status == DELETED else row.status
    status: str | None = memo[name]
    return status
