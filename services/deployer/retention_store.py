"""The SQL of key retention (migration 0016; the decisions are retention.py's). Functions take a Session.

Destroying is one conditional UPDATE (``WHERE destroyed_at IS NULL``) in the transaction that also writes
the BotKeyDestroyed event to the deployer's outbox: whichever instance's UPDATE changes the row writes the
one event; another instance destroying the same key at the same time changes nothing and writes nothing."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from services.common.contracts.envelope import Envelope
from services.common.contracts.keys import KeyRetirementReason
from services.common.db_schema import DeployerBotKeyRow, DeployerDeploymentRow
from services.deployer.config.outbox import OUTBOX
from services.deployer.retention import KeyState, state_of, superseded_by
from services.deployer.store import BotKey, _bot_key

_KEYS = DeployerBotKeyRow


def key_states(session: Session, certificate_id: str) -> list[KeyState]:
    rows = session.execute(select(_KEYS.cause_id, _KEYS.certificate_id, _KEYS.created_at, _KEYS.superseded_at,
                                  _KEYS.retire_reason, _KEYS.destroyed_at).where(_KEYS.certificate_id == certificate_id))
    return [state_of(*row) for row in rows]


def key_state(key: BotKey) -> KeyState:
    assert key.created_at is not None
    return state_of(key.cause_id, key.certificate_id, key.created_at, key.superseded_at, key.retire_reason, key.destroyed_at)


def mark_superseded(session: Session, cause_ids: list[str], at: datetime, reason: KeyRetirementReason) -> int:
    """Record when (and why) keys stopped being needed; destroyed keys are left as they are."""
    if not cause_ids:
        return 0
    result = session.execute(update(_KEYS).where(_KEYS.cause_id.in_(cause_ids), _KEYS.destroyed_at.is_(None))
                             .values(superseded_at=at, retire_reason=reason.value))
    return int(result.rowcount)  # type: ignore[attr-defined]


def supersede_older(session: Session, certificate_id: str, deployed_cause_id: str, now: datetime) -> int:
    """In the transaction that records a deployment of ``deployed_cause_id``'s certificate: every older key of
    the certificate is superseded now (retention.superseded_by)."""
    states = key_states(session, certificate_id)
    deployed = next((s for s in states if s.cause_id == deployed_cause_id), None)
    if deployed is None:
        return 0
    return mark_superseded(session, superseded_by(states, deployed), now, KeyRetirementReason.SUPERSEDED)


def due_keys(session: Session, superseded_before: datetime, limit: int = 100) -> list[BotKey]:
    """Undestroyed keys superseded at or before ``superseded_before``, or marked key_compromise (candidates:
    retention.retire_due decides), oldest first."""
    query = (select(_KEYS).where(_KEYS.destroyed_at.is_(None), _KEYS.superseded_at.is_not(None),
                                 or_(_KEYS.superseded_at <= superseded_before,
                                     _KEYS.retire_reason == KeyRetirementReason.KEY_COMPROMISE.value))
             .order_by(_KEYS.superseded_at).limit(limit))
    return [_bot_key(row) for row in session.scalars(query)]


def keys_held(session: Session) -> int:
    """Keys whose encrypted private key is still stored."""
    return int(session.scalar(select(func.count()).select_from(_KEYS).where(_KEYS.destroyed_at.is_(None))) or 0)


def deployed_to(session: Session, certificate_id: str, serial: str) -> list[str]:
    """The targets a deployment of this serial was attempted on (deployed or not: a failed one may have
    left a version behind)."""
    table = DeployerDeploymentRow
    return list(session.scalars(select(table.target_name).where(table.certificate_id == certificate_id,
                                                                 table.serial == serial).order_by(table.target_name)))


def destroy(session: Session, cause_id: str, now: datetime, event: Envelope) -> bool:
    """Delete the key material (the row stays, a tombstone) and queue ``event`` (its BotKeyDestroyed) in the
    deployer's outbox, in the caller's transaction. False: already destroyed (nothing written)."""
    result = session.execute(update(_KEYS).where(_KEYS.cause_id == cause_id, _KEYS.destroyed_at.is_(None))
                             .values(private_key=None, destroyed_at=now))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    OUTBOX.queue_event_in(session, event, key=event.subject, created_at=now)
    return True
