"""CertificateIssued -> deploy to every target bound to the certificate's profile.

One deployment per (certificate, serial, target): its outcome event is stored
and re-published byte for byte on redelivery, so the same certificate is
deployed once. Targets run concurrently, each with its own retries, so a
failing target never blocks the others. Bot-held certificates are installed
with the key whose public-key hash matches the certificate.

Before anything is installed the certificate is held against what the deployer
itself knows (trust.py: an accepted request, the connector's pinned issuing CA,
the expected key); a refused certificate touches no target and ends in one
DeploymentFailed per bound target (CERTIFICATE_NOT_REQUESTED, _UNTRUSTED or
_MISMATCH), counted in certrail_deployer_refusals_total. A refusal that a gateway event not yet
seen could cure parks the certificate instead, until that event or a deadline (parking.py)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from services.common.consumer import Outbound
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import Envelope, decode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateDeployed, CertificateIssued, DeploymentFailed, TargetRef
from services.common.contracts.fields import ErrorInfo
from services.common.contracts.identity import message_id
from services.deployer import parking, projection, retention_store, store
from services.deployer.context import DeployerContext
from services.deployer.runner import deploy_with_rollback
from services.deployer.targets.base import Bundle, TargetError
from services.deployer.trust import Refused, check_issued

log = logging.getLogger(__name__)
SOURCE = "/certrail/deployer"


@dataclass(frozen=True)
class _Plan:
    specs: list[store.TargetSpec]
    key_pem: bytes | None
    key_missing: bool
    done: dict[str, str]  # target name -> stored outcome (already deployed or failed)
    previous: dict[str, Bundle]
    key_cause: str | None = None  # the bot-held key's cause id: its deployment supersedes the older keys


def _event(ctx: DeployerContext, envelope: Envelope, data: CertificateDeployed | DeploymentFailed, target: str,
           now: datetime) -> Outbound:
    issued = envelope.data
    assert isinstance(issued, CertificateIssued)
    event = make_event(data, id=message_id(envelope.id, data.TYPE, target), source=SOURCE, time=now,
                       subject=issued.certificate_id, correlationid=envelope.correlationid or issued.request_id,
                       causationid=envelope.id)
    return Outbound(topic=ctx.topics.topic_of(type(data)), event=event, key=issued.certificate_id)


@dataclass(frozen=True)
class _Read:
    """What one read transaction tells about a CertificateIssued before anything is decided."""

    specs: list[store.TargetSpec]
    replay: bool  # every bound target already has a stored outcome for this very certificate
    refused: Refused | None
    parked: bool
    plan: _Plan | None  # when it may be installed (or is a replay)
    bot_key_cause: str | None  # the bot-held key's cause id, to mark it issued


def _read(session: Session, ctx: DeployerContext, envelope: Envelope) -> _Read:
    """The bound targets, whether this is a redelivery (another certificate announced with the same
    serial is not one), why it must not be installed and whether it is parked (not for a replay: a
    redelivery only re-publishes what was decided), and the plan: all in one read transaction."""
    issued = envelope.data
    assert isinstance(issued, CertificateIssued)
    cid = issued.certificate_id
    specs = store.targets_for_profile(session, issued.profile, ctx.box)
    if not specs:
        return _Read(specs, False, None, False, None, None)
    deployments = store.list_deployments(session, cid)  # oldest first
    mine = {d.target_name: d for d in deployments if d.serial == issued.serial}
    replay = all((d := mine.get(spec.name)) is not None and d.status != "in_progress" and bool(d.outcome)
                 and d.certificate_pem == issued.certificate for spec in specs)
    refused, parked, bot_hashes = None, False, frozenset[str]()
    if not replay:
        expected = projection.expectation(session, cid, issued.connector)
        bot_hashes = expected.bot_key_hashes
        parked = ctx.park_s > 0 and parking.is_parked(session, envelope.id)
        try:
            check_issued(issued, expected)
        except Refused as exc:
            refused = exc
    if refused is not None:
        return _Read(specs, replay, refused, parked, None, None)
    if replay:
        bot_hashes = projection.bot_key_hashes(session, cid)
    key = store.bot_key_by_public_key(session, cid, issued.public_key_sha256) if bot_hashes else None
    done: dict[str, str] = {}
    previous: dict[str, Bundle] = {}
    for spec in specs:
        existing = mine.get(spec.name)
        if existing is not None and existing.status != "in_progress" and existing.outcome:
            done[spec.name] = existing.outcome
        last = [d for d in deployments if d.target_name == spec.name and d.status == "deployed" and d.serial != issued.serial]
        if last:
            prior = last[-1]
            prior_key = store.bot_key_by_serial(session, cid, prior.serial) if bot_hashes else None
            prior_pem = prior_key.encrypted_key if prior_key is not None else None  # None: destroyed (retirement.py)
            previous[spec.name] = Bundle(cid, prior.serial, prior.certificate_pem, prior.chain_pem,
                                         ctx.box.decrypt(prior_pem) if prior_pem is not None else None)
    key_pem = ctx.box.decrypt(key.encrypted_key) if key is not None and key.encrypted_key is not None else None
    plan = _Plan(specs, key_pem, bool(bot_hashes) and key_pem is None, done, previous,
                 key.cause_id if key is not None else None)
    return _Read(specs, replay, None, parked, plan, key.cause_id if key is not None else None)


async def _park(ctx: DeployerContext, envelope: Envelope, refused: Refused) -> str:
    """Park the certificate (once per event id): "parked", "expired" (its deadline has passed) or
    "cured" (not parked: what it waited for was written between the read and this write)."""
    now = ctx.clock()
    issued = envelope.data
    assert isinstance(issued, CertificateIssued)

    ctx.maybe_parked = True  # before the write: an acceptance handled meanwhile looks for it
    ctx.park_attempts += 1

    def park(session: Session) -> tuple[str, bool, datetime | None]:
        # checked again inside the write: an acceptance (or pin) committed after the read must not be
        # missed, or the certificate would wait for an event that has already been applied
        try:
            check_issued(issued, projection.expectation(session, issued.certificate_id, issued.connector))
        except Refused:
            first = not parking.is_parked(session, envelope.id)
            deadline = parking.park(session, envelope, refused.code.value, now, ctx.park_s)
            return ("parked" if deadline > now else "expired"), first, deadline
        parking.unpark(session, envelope.id)
        return "cured", False, None
    state, first, deadline = await ctx.write_in(park)
    if first:
        assert deadline is not None
        ctx.metrics.parked.labels(refused.code.value).inc()
        log.info("parked %s serial %s (event %s) until %s: %s", issued.certificate_id, issued.serial, envelope.id,
                 deadline.isoformat(), refused.message)
    return state


async def _unpark(ctx: DeployerContext, event_id: str) -> None:
    await ctx.write_in(parking.unpark, event_id)


def _refuse(ctx: DeployerContext, envelope: Envelope, specs: list[store.TargetSpec], refused: Refused) -> list[Outbound]:
    """Nothing is installed and nothing recorded as a deployment (a target keeps what it has)."""
    issued = envelope.data
    assert isinstance(issued, CertificateIssued)
    ctx.metrics.refusals.labels(refused.code.value).inc()
    log.warning("refused to install %s serial %s (connector %s, event %s): %s", issued.certificate_id, issued.serial,
                issued.connector, envelope.id, refused.message)
    now = ctx.clock()
    message = refused.message if len(refused.message) <= 1000 else refused.message[:999] + "…"
    out = []
    for spec in specs:
        ctx.metrics.deployments.labels(spec.kind.value, "refused").inc()
        failed = DeploymentFailed(certificate_id=issued.certificate_id, serial=issued.serial,
                                  target=TargetRef(name=spec.name, kind=spec.kind.value), rolled_back=False,
                                  error=ErrorInfo(code=refused.code, message=f"not installed: {message}"))
        out.append(_event(ctx, envelope, failed, spec.name, now))
    return out


async def _mark_issued(ctx: DeployerContext, cause_id: str, issued: CertificateIssued) -> None:
    await ctx.write_in(store.mark_issued, cause_id, issued.serial, issued.certificate, ctx.clock())


def target_place(spec: store.TargetSpec, certificate_id: str) -> tuple[str, ...]:
    """What one deployment touches, for the lock that keeps two deployments out of the same place:
    the certificate's own directory when the target has one per certificate (file, nginx, ssh with
    ``per_certificate``), else the whole target (a shared directory, a webhook, a reload)."""
    if getattr(spec.config, "per_certificate", False):
        return (spec.name, spec.config.directory_for(certificate_id))
    return (spec.name,)


async def _one(ctx: DeployerContext, envelope: Envelope, spec: store.TargetSpec, bundle: Bundle, plan: _Plan) -> Outbound:
    issued = envelope.data
    assert isinstance(issued, CertificateIssued)
    ref = TargetRef(name=spec.name, kind=spec.kind.value)
    if spec.name in plan.done:
        ctx.metrics.deployments.labels(spec.kind.value, "replayed").inc()
        event = decode(plan.done[spec.name].encode(), CATALOG)
        return Outbound(topic=ctx.topics.topic_of(type(event.data)), event=event, key=issued.certificate_id)

    async def on_attempt(attempt: int) -> None:
        def record(session: Session) -> None:
            store.start_attempt(session, certificate_id=issued.certificate_id, serial=issued.serial, target_name=spec.name,
                                target_kind=spec.kind.value, cause_id=envelope.id, certificate_pem=issued.certificate,
                                chain_pem=tuple(issued.chain), public_key_sha256=issued.public_key_sha256, now=ctx.clock())
        await ctx.write_in(record)

    if plan.key_missing:
        await on_attempt(1)
        ctx.metrics.deployments.labels(spec.kind.value, "failed").inc()
        result_error: TargetError | None = TargetError(
            ErrorCode.KEY_NOT_FOUND, f"no bot-held key of certificate {issued.certificate_id} matches public key "
            f"{issued.public_key_sha256[:16]}...: nothing was installed")
        verified, rolled_back = None, False
    else:
        target = ctx.build_target(spec, previous=plan.previous.get(spec.name))
        async with ctx.target_locks.hold(target_place(spec, issued.certificate_id)):
            result = await deploy_with_rollback(target, bundle, ctx.retry, metrics=ctx.metrics, on_attempt=on_attempt,
                                                sleep=ctx.sleep)
        result_error, verified, rolled_back = result.error, result.verified_serial, result.rolled_back
    now = ctx.clock()
    if verified is not None:
        data: CertificateDeployed | DeploymentFailed = CertificateDeployed(
            certificate_id=issued.certificate_id, serial=issued.serial, target=ref, verified_serial=verified, deployed_at=now)
        status = "deployed"
    else:
        assert result_error is not None
        log.warning("deployment of %s serial %s to %s failed: %s", issued.certificate_id, issued.serial, spec.name,
                    result_error.message)
        data = DeploymentFailed(certificate_id=issued.certificate_id, serial=issued.serial, target=ref, rolled_back=rolled_back,
                                error=ErrorInfo(code=result_error.code, message=result_error.message))
        status = "failed"
    outbound = _event(ctx, envelope, data, spec.name, now)

    def finish(session: Session) -> None:
        store.finish(session, certificate_id=issued.certificate_id, serial=issued.serial, target_name=spec.name,
                     status=status, rolled_back=None if verified else rolled_back,
                     error_code=None if result_error is None else result_error.code.value,
                     error_message=None if result_error is None else result_error.message,
                     outcome=outbound.value().decode(), now=now)
        if status == "deployed" and plan.key_cause is not None:  # the older keys are superseded (retention.py)
            retention_store.supersede_older(session, issued.certificate_id, plan.key_cause, now)
    await ctx.write_in(finish)
    return outbound


async def on_certificate_issued(ctx: DeployerContext, envelope: Envelope, *, final: bool = False,
                                cured: bool = False) -> list[Outbound]:
    """Deploy, or refuse, or park (``final``: refuse what would be parked; the sweep of parking.py;
    ``cured``: the second look after what it waited for was found while parking it)."""
    issued = envelope.data
    assert isinstance(issued, CertificateIssued)
    read = await ctx.read_in(_read, ctx, envelope)
    if not read.specs:
        log.info("certificate %s (profile %s) has no bound deployment target", issued.certificate_id, issued.profile)
        return []
    if read.refused is not None:
        may_park = read.refused.curable and ctx.park_s > 0 and not final
        if may_park:
            parked = await _park(ctx, envelope, read.refused)
            if parked == "parked":
                return []
            if parked == "cured" and not cured:
                return await on_certificate_issued(ctx, envelope, final=final, cured=True)
        out = _refuse(ctx, envelope, read.specs, read.refused)
        if read.parked or may_park:
            await _unpark(ctx, envelope.id)
        return out
    plan = read.plan
    assert plan is not None
    if read.bot_key_cause is not None:
        await _mark_issued(ctx, read.bot_key_cause, issued)
    bundle = Bundle(issued.certificate_id, issued.serial, issued.certificate, tuple(issued.chain), plan.key_pem)
    out = list(await asyncio.gather(*(_one(ctx, envelope, spec, bundle, plan) for spec in plan.specs)))
    if read.parked or (read.replay and final):
        await _unpark(ctx, envelope.id)
    return out
