"""Key retention decisions (issue 20, decision 0026): pure functions, the clock passed in.

A bot-held key stops being needed ("superseded", with the time it happened) when

- a newer key of the same certificate (made later) has its certificate deployed on a target: every
  older key of that certificate, issued or never issued, is superseded then (`superseded_by`);
- its serial is revoked: superseded at the revocation time; for keyCompromise the key is retired at
  once, whatever else is true (`revocation_retirement`).

A superseded key is destroyed once the grace period (CERTRAIL_DEPLOYER_KEY_RETENTION_S) has passed
since it was superseded; a key_compromise one at once (`retire_due`). The key that is live (the
newest deployed) is never superseded by its own deployment."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.common.contracts.fields import RevocationReason
from services.common.contracts.keys import KeyRetirementReason


@dataclass(frozen=True)
class KeyState:
    """What the decisions need of one stored key."""

    cause_id: str
    certificate_id: str
    created_at: datetime
    superseded_at: datetime | None = None
    reason: KeyRetirementReason | None = None
    destroyed_at: datetime | None = None


def superseded_by(keys: Iterable[KeyState], deployed: KeyState) -> list[str]:
    """The keys that ``deployed`` (a key whose certificate was just deployed) supersedes: the older keys of
    its certificate not yet superseded nor destroyed. A key never supersedes itself or a newer one."""
    return [key.cause_id for key in keys
            if key.certificate_id == deployed.certificate_id and key.cause_id != deployed.cause_id
            and key.created_at < deployed.created_at and key.superseded_at is None and key.destroyed_at is None]


def revocation_retirement(key: KeyState, reason: RevocationReason, revoked_at: datetime) -> tuple[datetime, KeyRetirementReason] | None:
    """(superseded_at, reason) to record when ``key``'s serial is revoked, or None when nothing changes: an
    earlier supersession stands, except that keyCompromise always turns it into key_compromise."""
    if key.destroyed_at is not None:
        return None
    if reason is RevocationReason.KEY_COMPROMISE:
        if key.reason is KeyRetirementReason.KEY_COMPROMISE:
            return None
        at = revoked_at if key.superseded_at is None else min(key.superseded_at, revoked_at)
        return at, KeyRetirementReason.KEY_COMPROMISE
    if key.superseded_at is not None and key.superseded_at <= revoked_at:
        return None
    return revoked_at, key.reason or KeyRetirementReason.SUPERSEDED


def retire_due(key: KeyState, now: datetime, retention: timedelta) -> KeyRetirementReason | None:
    """Why ``key`` is to be destroyed now, or None while it is kept (live, or superseded within its grace)."""
    if key.destroyed_at is not None or key.superseded_at is None:
        return None
    if key.reason is KeyRetirementReason.KEY_COMPROMISE:
        return KeyRetirementReason.KEY_COMPROMISE
    if now >= key.superseded_at + retention:
        return KeyRetirementReason.SUPERSEDED
    return None


def state_of(cause_id: str, certificate_id: str, created_at: datetime, superseded_at: datetime | None, reason: str | None,
             destroyed_at: datetime | None) -> KeyState:
    return KeyState(cause_id, certificate_id, created_at, superseded_at,
                    KeyRetirementReason(reason) if reason is not None else None, destroyed_at)
