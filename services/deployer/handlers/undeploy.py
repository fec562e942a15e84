"""CertificateRevoked without a replacement, profile ``on_revocation: remove`` -> the revoked serial taken off every
target serving it, one CertificateUndeployed with the outcome per target (issue 20, decision 0028; the
decision is undeploy.py's). A serial revoked at the CA directly (RevokedOutOfBand, decision 0030) the same, unless
the profile's ``on_external_revocation: replace`` brings a replacement; a certificateHold removes nothing.

file, nginx and ssh targets unlink ``current``, reload the service and delete the serial's versions (key file
included; targets/files.py ``remove_served_in``); a webhook receiver cannot be told to give a certificate back
(its contract has deploy and rollback only): not_removable. The deployment rows of the serial become
``removed`` and the event is written to the deployer's outbox in one transaction (published by its relay);
its id derives from the revocation's, so a redelivered revocation writes nothing again."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.common.contracts.envelope import Envelope, make_event
from services.common.contracts.events import CertificateRevoked, TargetRef
from services.common.contracts.fields import ErrorInfo, RevocationReason
from services.common.contracts.identity import message_id
from services.common.contracts.revocation import RevokedOutOfBand
from services.common.contracts.undeploy import CertificateUndeployed, ExternalRevocation, TargetUndeployment, UndeployOutcome
from services.common.db_schema import DeployerAcceptedCertificateRow, DeployerAdminOutbox, DeployerDeploymentRow
from services.deployer import projection, store
from services.deployer.config.outbox import OUTBOX
from services.deployer.context import DeployerContext
from services.deployer.handlers.deploy import target_place
from services.deployer.targets.base import ServedRemoving, TargetError
from services.deployer.undeploy import DEPLOYED, REMOVED, Removal, plan_removal

log = logging.getLogger(__name__)
SOURCE = "/certrail/deployer"


def _profile_of(session: Session, certificate_id: str, serial: str) -> str | None:
    accepted = session.get(DeployerAcceptedCertificateRow, certificate_id)
    if accepted is not None and accepted.profile is not None:
        return accepted.profile
    key = store.bot_key_by_serial(session, certificate_id, serial)
    return key.profile if key is not None else None


@dataclass(frozen=True)
class Revoked:
    """A revoked serial, whoever revoked it. ``replace`` None: as the profile's on_external_revocation says."""

    certificate_id: str
    serial: str
    reason: RevocationReason
    request_id: str | None  # None: revoked at the CA directly
    replace: bool | None

    @classmethod
    def of(cls, envelope: Envelope) -> Revoked | None:
        """The revocation ``envelope`` carries; None for a RevokedOutOfBand that is a hold, not a revocation."""
        data = envelope.data
        if isinstance(data, CertificateRevoked):
            return cls(data.certificate_id, data.serial, data.reason, data.request_id, data.replace)
        assert isinstance(data, RevokedOutOfBand)
        try:
            reason = RevocationReason(data.reason)
        except ValueError:  # certificateHold (or removeFromCRL): may be lifted
            return None
        return cls(data.certificate_id, data.serial, reason, None, None)


@dataclass(frozen=True)
class _Read:
    profile: str | None
    removal: Removal
    specs: dict[str, store.TargetSpec | None]  # None: the target was deleted since
    kinds: dict[str, str]  # target name -> kind, as deployed


def _read(session: Session, ctx: DeployerContext, revoked: Revoked, event_id: str) -> _Read:
    profile = _profile_of(session, revoked.certificate_id, revoked.serial)
    on_revocation = projection.profile_on_revocation(session, profile) if profile is not None else None
    replace = revoked.replace
    if replace is None:  # revoked at the CA directly: the gateway replaces it when the profile says so
        replace = profile is not None and \
            projection.profile_on_external_revocation(session, profile) == ExternalRevocation.REPLACE.value
    deployments = store.list_deployments(session, revoked.certificate_id)
    removal = plan_removal(on_revocation, replace, deployments, revoked.serial)
    if not removal.remove or not removal.targets or _queued(session, event_id):
        return _Read(profile, Removal(False), {}, {})
    specs: dict[str, store.TargetSpec | None] = {}
    for name in removal.targets:
        try:
            specs[name] = store.get_target(session, name, ctx.box)
        except store.TargetNotFound:
            specs[name] = None
    return _Read(profile, removal, specs, {d.target_name: d.target_kind for d in deployments})


def _queued(session: Session, event_id: str) -> bool:
    return session.scalar(select(DeployerAdminOutbox.seq).where(DeployerAdminOutbox.event_id == event_id)) is not None


async def _remove_one(ctx: DeployerContext, revoked: Revoked, name: str, spec: store.TargetSpec | None,
                      serving: bool, kind: str) -> TargetUndeployment:
    ref = TargetRef(name=name, kind=spec.kind.value if spec is not None else kind)
    if not serving:
        return TargetUndeployment(target=ref, outcome=UndeployOutcome.NOT_SERVING)
    if spec is None:
        log.info("target %s of %s serial %s was removed from the configuration: nothing to take back", name,
                 revoked.certificate_id, revoked.serial)
        return TargetUndeployment(target=ref, outcome=UndeployOutcome.NOT_REMOVABLE)
    target = ctx.build_target(spec)
    if not isinstance(target, ServedRemoving):
        return TargetUndeployment(target=ref, outcome=UndeployOutcome.NOT_REMOVABLE)
    try:
        async with ctx.target_locks.hold(target_place(spec, revoked.certificate_id)):
            removed = await target.remove_served(revoked.certificate_id, revoked.serial)
    except TargetError as exc:
        log.warning("removing revoked %s serial %s from %s failed: %s", revoked.certificate_id, revoked.serial, name,
                    exc.message)
        return TargetUndeployment(target=ref, outcome=UndeployOutcome.FAILED,
                                  error=ErrorInfo(code=exc.code, message=exc.message))
    return TargetUndeployment(target=ref, outcome=UndeployOutcome.REMOVED if removed else UndeployOutcome.NOT_SERVING)


def _record(session: Session, revoked: Revoked, removed: list[str], event: Envelope) -> bool:
    """The serial's rows on the targets it left become ``removed`` and the event is queued, once."""
    if _queued(session, event.id):
        return False
    rows = DeployerDeploymentRow
    if removed:
        session.execute(update(rows).where(rows.certificate_id == revoked.certificate_id, rows.serial == revoked.serial,
                                           rows.target_name.in_(removed), rows.status == DEPLOYED).values(status=REMOVED))
    OUTBOX.queue_event_in(session, event, key=event.subject)
    return True


async def undeploy_revoked(ctx: DeployerContext, envelope: Envelope) -> None:
    """Take a revoked serial off its targets when its profile says so (nothing when a replacement comes)."""
    revoked = Revoked.of(envelope)
    if revoked is None or revoked.replace:
        return  # a hold; or the replacement's deployment takes its place
    event_id = message_id(envelope.id, CertificateUndeployed.TYPE)
    read = await ctx.read_in(_read, ctx, revoked, event_id)
    removal = read.removal
    if not removal.remove:
        return
    assert read.profile is not None
    outcomes = list(await asyncio.gather(*(
        _remove_one(ctx, revoked, name, read.specs[name], name in removal.serving, read.kinds[name])
        for name in removal.targets)))
    now = ctx.clock()
    data = CertificateUndeployed(certificate_id=revoked.certificate_id, serial=revoked.serial, request_id=revoked.request_id,
                                 profile=read.profile, reason=revoked.reason, targets=outcomes[:64], undeployed_at=now)
    event = make_event(data, id=event_id, source=SOURCE, time=now, subject=revoked.certificate_id,
                       correlationid=envelope.correlationid or revoked.request_id, causationid=envelope.id)
    removed = [o.target.name for o in outcomes if o.outcome is UndeployOutcome.REMOVED]
    if await ctx.write_in(_record, revoked, removed, event):
        for outcome in outcomes:
            ctx.metrics.undeployments.labels(outcome.target.kind, outcome.outcome.value).inc()
        log.info("revoked %s serial %s taken off its targets: %s", revoked.certificate_id, revoked.serial,
                 ", ".join(f"{o.target.name}={o.outcome.value}" for o in outcomes))
        ctx.wake_outbox()
