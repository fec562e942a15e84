"""Key retirement (issue 20, decision 0026): what happens to a bot-held key once it is no longer needed.

- ``retention_store.supersede_older``: a certificate deployed with a bot-held key supersedes the older keys
  of that certificate (in the deployment's write transaction, handlers/deploy.py).
- `on_serial_revoked`: a revoked serial's key is superseded at the revocation time; keyCompromise
  destroys it at once. The same for a serial revoked at the CA directly (RevokedOutOfBand,
  `on_serial_revoked_out_of_band`, decision 0030), at the CRL entry's revocation date; a certificateHold (or any name that
  is not a revocation reason) changes nothing, since a hold may be lifted.
- `retire_key`: the copies on the targets that had the serial deployed are removed where the target kind
  keeps per-serial versions (file, nginx, ssh; never the version the service serves now), then the
  encrypted key is deleted from ``deployer_bot_keys`` (the row stays as a tombstone) and BotKeyDestroyed
  is queued in the deployer's outbox, in one transaction; the relay publishes it.
- `sweep_keys_forever`: the timer that destroys superseded keys whose grace period has passed and sets
  the gauge of keys held.

Two instances may sweep at once: removing a version that is already gone is not an error, and of two
destructions of one key only the first UPDATE changes the row, so the event is written once."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from services.common.contracts.envelope import Envelope, make_event
from services.common.contracts.events import CertificateRevoked, TargetRef
from services.common.contracts.fields import ErrorInfo, RevocationReason
from services.common.contracts.identity import message_id
from services.common.contracts.keys import BotKeyDestroyed, KeyCopy, KeyCopyOutcome, KeyRetirementReason
from services.common.contracts.revocation import RevokedOutOfBand
from services.deployer import retention_store, store
from services.deployer.context import DeployerContext
from services.deployer.handlers.deploy import target_place
from services.deployer.retention import retire_due, revocation_retirement
from services.deployer.targets.base import KeyRetiring, TargetError
from services.deployer.targets.config import TargetKind

log = logging.getLogger(__name__)
SOURCE = "/certrail/deployer"
BATCH = 100


async def on_serial_revoked(ctx: DeployerContext, envelope: Envelope) -> None:
    """Record the revocation on the serial's key (if this deployer made it); keyCompromise: destroy it now."""
    revoked = envelope.data
    assert isinstance(revoked, CertificateRevoked)
    await _serial_revoked(ctx, envelope, revoked.certificate_id, revoked.serial, revoked.reason, revoked.revoked_at)


async def on_serial_revoked_out_of_band(ctx: DeployerContext, envelope: Envelope) -> None:
    """A serial revoked at the CA directly: its key retired as for a revocation certrail made (a replacement, if the
    profile asks for one, comes as the gateway's RenewalDue)."""
    revoked = envelope.data
    assert isinstance(revoked, RevokedOutOfBand)
    try:
        reason = RevocationReason(revoked.reason)
    except ValueError:  # certificateHold (or removeFromCRL): a suspension that may be lifted, the key stays
        log.info("%s serial %s is on hold at the CA (%s): its key is kept", revoked.certificate_id, revoked.serial,
                 revoked.reason)
        return
    await _serial_revoked(ctx, envelope, revoked.certificate_id, revoked.serial, reason, revoked.revoked_at_ca)


async def _serial_revoked(ctx: DeployerContext, envelope: Envelope, certificate_id: str, serial: str,
                          reason: RevocationReason, revoked_at: datetime) -> None:
    def mark(session: Session) -> store.BotKey | None:
        key = store.bot_key_by_serial(session, certificate_id, serial)
        if key is None:
            return None
        change = revocation_retirement(retention_store.key_state(key), reason, revoked_at)
        if change is not None:
            retention_store.mark_superseded(session, [key.cause_id], *change)
            key = store.bot_key_by_cause(session, key.cause_id)
        return key

    key = await ctx.write_in(mark)
    if key is not None and key.destroyed_at is None and key.retire_reason == KeyRetirementReason.KEY_COMPROMISE.value:
        await retire_key(ctx, key, KeyRetirementReason.KEY_COMPROMISE, cause=envelope)


async def retire_key(ctx: DeployerContext, key: store.BotKey, reason: KeyRetirementReason,
                     cause: Envelope | None = None) -> bool:
    """Remove the key's copies from its targets, then destroy it and queue its BotKeyDestroyed. True when this
    call destroyed it (False: another instance, or an earlier redelivery, already had)."""
    copies = await _remove_copies(ctx, key)
    now = ctx.clock()
    assert key.superseded_at is not None
    data = BotKeyDestroyed(certificate_id=key.certificate_id, serial=key.serial, profile=key.profile,
                           public_key_sha256=key.public_key_sha256, reason=reason, superseded_at=key.superseded_at,
                           destroyed_at=now, copies=copies[:64])
    event = make_event(data, id=message_id(key.cause_id, BotKeyDestroyed.TYPE), source=SOURCE, time=now,
                       subject=key.certificate_id, correlationid=cause.correlationid if cause else None,
                       causationid=cause.id if cause else None)
    destroyed = await ctx.write_in(retention_store.destroy, key.cause_id, now, event)
    if destroyed:
        ctx.metrics.keys_destroyed.labels(reason.value).inc()
        for copy in copies:
            ctx.metrics.key_copies.labels(copy.target.kind, copy.outcome.value).inc()
        log.info("destroyed the bot-held key of %s serial %s (%s); copies: %s", key.certificate_id, key.serial or "-",
                 reason.value, ", ".join(f"{c.target.name}={c.outcome.value}" for c in copies) or "none")
        ctx.wake_outbox()
    return destroyed


def _targets_of(session: Session, ctx: DeployerContext, key: store.BotKey) -> list[store.TargetSpec]:
    specs = []
    for name in retention_store.deployed_to(session, key.certificate_id, key.serial or ""):
        try:
            specs.append(store.get_target(session, name, ctx.box))
        except store.TargetNotFound:
            log.info("target %s of %s serial %s was removed: its copy of the key is not reachable from here", name,
                     key.certificate_id, key.serial)
    return specs


async def _remove_copies(ctx: DeployerContext, key: store.BotKey) -> list[KeyCopy]:
    if key.serial is None:
        return []  # never issued, so never deployed
    specs = await ctx.read_in(_targets_of, ctx, key)
    copies = await asyncio.gather(*(_remove_one(ctx, key, spec) for spec in specs))
    return [copy for copy in copies if copy is not None]


async def _remove_one(ctx: DeployerContext, key: store.BotKey, spec: store.TargetSpec) -> KeyCopy | None:
    ref = TargetRef(name=spec.name, kind=spec.kind.value)
    if spec.kind is TargetKind.WEBHOOK:  # the receiver keeps what it was sent; without the key it has none
        return KeyCopy(target=ref, outcome=KeyCopyOutcome.NOT_REMOVABLE) if spec.config.include_private_key else None
    target = ctx.build_target(spec)
    if not isinstance(target, KeyRetiring):
        return KeyCopy(target=ref, outcome=KeyCopyOutcome.NOT_REMOVABLE)
    assert key.serial is not None
    try:
        async with ctx.target_locks.hold(target_place(spec, key.certificate_id)):
            gone = await target.retire_key(key.certificate_id, key.serial, key.public_key_sha256)
    except TargetError as exc:
        log.warning("removing the retired key of %s serial %s from %s failed: %s", key.certificate_id, key.serial,
                    spec.name, exc.message)
        return KeyCopy(target=ref, outcome=KeyCopyOutcome.FAILED, error=ErrorInfo(code=exc.code, message=exc.message))
    return KeyCopy(target=ref, outcome=KeyCopyOutcome.REMOVED if gone else KeyCopyOutcome.IN_USE)


async def sweep_once(ctx: DeployerContext) -> int:
    """Destroy the keys whose grace period has passed (up to BATCH); set the gauge of keys held. Returns how
    many were candidates (BATCH: look again at once)."""
    now = ctx.clock()
    retention = timedelta(seconds=ctx.key_retention_s)
    candidates = await ctx.read_in(retention_store.due_keys, now - retention, BATCH)
    for key in candidates:
        reason = retire_due(retention_store.key_state(key), now, retention)
        if reason is not None:
            await retire_key(ctx, key, reason)
    ctx.metrics.keys_held.set(await ctx.read_in(retention_store.keys_held))
    return len(candidates)


async def sweep_keys_forever(ctx: DeployerContext, interval_s: float) -> None:
    """`sweep_once` every ``interval_s`` for as long as the deployer runs; a failed sweep is logged and tried
    again at the next interval (the keys stay until a sweep succeeds)."""
    while True:
        try:
            while await sweep_once(ctx) >= BATCH:
                pass
        except Exception:  # noqa: BLE001 - the sweep must outlive a database outage; logged with its traceback
            log.exception("key retention sweep failed; trying again in %.1f s", interval_s)
        await asyncio.sleep(interval_s)
