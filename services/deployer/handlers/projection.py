"""Records the deployer keeps a projection of (projection.py): from certrail.events.gateway RequestAccepted
(the certificate ids the gateway accepted, with the key of the CSR the latest one carried) and profile admin
events; from certrail.events.issuer the connector admin events (the pinned issuing CA; the issuer owns the
registry, decision 0034). The profile events say whether the deployer
generates the profile's keys, whether a revoked certificate is removed from its targets (on_revocation), and whether
a certificate revoked at the CA directly gets a replacement (on_external_revocation: then it is not removed). They publish nothing of their own; an acceptance or a pin
releases the certificates parked waiting for it (parking.py) and returns what those lead to."""

from __future__ import annotations

import asyncio
import logging
import re

from sqlalchemy.orm import Session

from services.common.consumer import InvalidMessage, Outbound
from services.common.contracts.admin import (
    AdminOutcome,
    ConnectorCreated,
    ConnectorDeleted,
    ConnectorUpdated,
    ProfileCreated,
    ProfileDeleted,
    ProfileUpdated,
)
from services.common.contracts.envelope import Envelope
from services.common.contracts.events import RequestAccepted
from services.common.contracts.fields import KeyGeneration, RequestKind
from services.common.contracts.undeploy import ExternalRevocation, OnRevocation
from services.deployer import parking, projection
from services.deployer.context import DeployerContext
from services.deployer.handlers.parked import release as _release

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_KINDS = {k.value for k in KeyGeneration}
_ON_REVOCATION = {o.value for o in OnRevocation}
_ON_EXTERNAL_REVOCATION = {o.value for o in ExternalRevocation}


async def on_request_accepted(ctx: DeployerContext, envelope: Envelope) -> list[Outbound]:
    accepted = envelope.data
    assert isinstance(accepted, RequestAccepted)
    if accepted.kind is RequestKind.REVOKE:
        return []

    def save(session: Session) -> list[parking.Parked]:
        projection.record_accepted(session, certificate_id=accepted.certificate_id, request_id=accepted.request_id,
                                   profile=accepted.profile, connector=accepted.connector,
                                   public_key_sha256=accepted.public_key_sha256, now=ctx.clock())
        if ctx.park_s <= 0 or not ctx.maybe_parked:
            return []
        return parking.waiting_for(session, certificate_id=accepted.certificate_id)
    return await _release(ctx, await ctx.write_in(save))



async def on_connector_event(ctx: DeployerContext, envelope: Envelope) -> list[Outbound]:
    event = envelope.data
    assert isinstance(event, ConnectorCreated | ConnectorUpdated | ConnectorDeleted)
    if event.outcome is not AdminOutcome.SUCCEEDED:
        return []
    if isinstance(event, ConnectorDeleted):
        await asyncio.to_thread(_write, ctx, lambda session: projection.forget_pin(session, event.connector))
        return []
    pin = event.change.get("pinned_ca_sha256")
    if pin is None:
        return []  # an edit that kept the pin
    if not isinstance(pin, str) or not _SHA256.fullmatch(pin):
        raise InvalidMessage(f"{type(event).__name__} for connector {event.connector!r} carries no SHA-256 pin")
    replace = isinstance(event, ConnectorUpdated)  # a re-pin; a second ConnectorCreated never moves a pin

    def save() -> tuple[bool, list[parking.Parked]]:
        with ctx.write() as session:
            stored = projection.set_pin(session, event.connector, pin, envelope.id, ctx.clock(), replace=replace)
            return stored, parking.waiting_for(session, connector=event.connector) if stored and ctx.park_s > 0 else []
    stored, parked = await asyncio.to_thread(save)
    if not stored:
        log.warning("ignored %s %s for connector %s: it already has a pin (a pin moves only by re-pinning)",
                    type(event).__name__, envelope.id, event.connector)
    return await _release(ctx, parked)


async def on_profile_event(ctx: DeployerContext, envelope: Envelope) -> list[Outbound]:
    event = envelope.data
    assert isinstance(event, ProfileCreated | ProfileUpdated | ProfileDeleted)
    if event.outcome is not AdminOutcome.SUCCEEDED:
        return []
    if isinstance(event, ProfileDeleted):
        await asyncio.to_thread(_write, ctx, lambda session: projection.forget_profile(session, event.profile))
        return []
    kind = event.change.get("key_generation")
    on_revocation = event.change.get("on_revocation")
    on_external = event.change.get("on_external_revocation")
    if kind is None and on_revocation is None and on_external is None:
        return []  # an edit that kept all three
    if kind is not None and (not isinstance(kind, str) or kind not in _KINDS):
        raise InvalidMessage(f"{type(event).__name__} for profile {event.profile!r}: unknown key_generation {kind!r}")
    if on_revocation is not None and (not isinstance(on_revocation, str) or on_revocation not in _ON_REVOCATION):
        raise InvalidMessage(f"{type(event).__name__} for profile {event.profile!r}: unknown on_revocation {on_revocation!r}")
    if on_external is not None and (not isinstance(on_external, str) or on_external not in _ON_EXTERNAL_REVOCATION):
        raise InvalidMessage(f"{type(event).__name__} for profile {event.profile!r}: unknown on_external_revocation "
                             f"{on_external!r}")

    def save(session: Session) -> None:
        now = ctx.clock()
        if kind is not None:
            projection.set_profile_kind(session, event.profile, kind, envelope.id, now)
            session.flush()  # a new row is found by set_revocation_policy below
        if (on_revocation is not None or on_external is not None) and not projection.set_revocation_policy(
                session, event.profile, envelope.id, now, on_revocation=on_revocation, on_external_revocation=on_external):
            log.warning("ignored the revocation policy of profile %s (%s): its creation was never seen here", event.profile,
                        envelope.id)
    await asyncio.to_thread(_write, ctx, save)
    return []


def _write(ctx: DeployerContext, change) -> None:  # type: ignore[no-untyped-def]
    with ctx.write() as session:
        change(session)
