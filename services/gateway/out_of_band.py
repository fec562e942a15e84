"""RevokedOutOfBand at the gateway (decision 0030): a certificate revoked at the CA outside certrail.

The gateway folds it into its projection of issued serials (the serial is revoked, so the scheduler no longer
schedules it and a revocation through certrail is not attempted again) and, when the serial is the certificate's
current one and its profile says ``on_external_revocation: replace``, requests the replacement exactly as the
renewal scheduler does: a RenewalDue for that serial (its id `renewal_due_id`, so a renewal already requested for
the serial is not requested twice), recorded in ``gateway_notices`` before it is published. Bot-held keys: the
deployer makes a fresh key and sends the RenewRequested; requester-held: the RenewalDue is the requester's notice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from services.common.consumer import Outbound
from services.common.contracts.envelope import Envelope, make_event
from services.common.contracts.events import RenewalDue
from services.common.contracts.identity import renewal_due_id
from services.common.contracts.revocation import RevokedOutOfBand
from services.common.contracts.topics import Topics
from services.common.contracts.undeploy import ExternalRevocation
from services.common.db import write_session
from services.common.db_schema import GatewayIssuedSerial, GatewayNotice
from services.gateway import issued, store
from services.gateway.scheduler import store as notices
from services.gateway.scheduler.plan import PlannedNotice
from services.gateway.scheduler.policy import PENDING_PREFIX, RENEWAL_DUE

log = logging.getLogger(__name__)
SOURCE = "/certrail/gateway/out-of-band"

Publish = Callable[[Sequence[Outbound]], Awaitable[None]]


def replacement_in(session: Session, envelope: Envelope, topics: Topics, now: datetime) -> PlannedNotice | None:
    """Fold the revocation; the RenewalDue to publish (recorded pending), or None (nothing to replace, or a
    renewal of that serial was requested and published already)."""
    data = envelope.data
    assert isinstance(data, RevokedOutOfBand)
    row = store.get_certificate(session, data.certificate_id)
    if row is None:
        log.warning("RevokedOutOfBand %s ignored: certificate id %r is not managed by this gateway", envelope.id,
                    data.certificate_id[:200])
        return None
    issued.fold_revoked(session, issued.Revoked(data.certificate_id, data.serial, data.connector, data.revoked_at_ca,
                                                data.reason))
    if issued.current_serial(session, data.certificate_id) != data.serial:
        return None  # a serial the certificate no longer uses: nothing to replace
    profile = store.get_profile(session, row.profile)
    if profile is None or profile.profile.on_external_revocation is not ExternalRevocation.REPLACE:
        log.warning("certificate %s serial %s was revoked at the CA outside certrail; profile %s does not replace it",
                    data.certificate_id, data.serial, row.profile)
        return None
    not_after = session.scalar(select(GatewayIssuedSerial.not_after).where(
        GatewayIssuedSerial.certificate_id == data.certificate_id, GatewayIssuedSerial.serial == data.serial))
    if not_after is None:
        log.warning("certificate %s serial %s revoked out of band before its issuance reached the gateway: not replaced",
                    data.certificate_id, data.serial)
        return None
    due = RenewalDue(certificate_id=data.certificate_id, serial=data.serial, profile=row.profile, connector=row.connector,
                     key_generation=profile.profile.key_generation, renew_at=data.detected_at, not_after=not_after,
                     requester=row.requester)
    event = make_event(due, id=renewal_due_id(data.certificate_id, data.serial), source=SOURCE, time=envelope.time,
                       subject=data.certificate_id, correlationid=envelope.correlationid, causationid=envelope.id)
    notice = PlannedNotice(data.certificate_id, data.serial, RENEWAL_DUE,
                           Outbound(topics.topic_of(RenewalDue), event, key=data.certificate_id), connector=row.connector)
    if notices.insert_pending(session, [notice], now):
        return notice
    stored = session.scalar(select(GatewayNotice.event_id).where(
        GatewayNotice.certificate_id == data.certificate_id, GatewayNotice.serial == data.serial,
        GatewayNotice.kind == RENEWAL_DUE))
    # recorded pending by an earlier delivery whose publication failed (or by the scheduler, in flight): the same
    # RenewalDue id, published again (at-least-once); recorded sent: the renewal of that serial was requested already
    return notice if stored == PENDING_PREFIX + notice.event_id else None


async def on_revoked_out_of_band(engine: Engine, topics: Topics, publish: Publish, clock: Callable[[], datetime],
                                 envelope: Envelope) -> list[Any]:
    """The handler: fold, record, publish, mark sent. A failed publication raises (the record is redelivered and
    publishes the recorded RenewalDue again, same id)."""
    def decide() -> PlannedNotice | None:
        with write_session(engine) as session:
            return replacement_in(session, envelope, topics, clock())

    notice = await asyncio.to_thread(decide)
    if notice is None:
        return []
    await publish([notice.outbound])

    def sent() -> None:
        with write_session(engine) as session:
            notices.mark_sent(session, [notice])

    await asyncio.to_thread(sent)
    log.info("certificate %s serial %s revoked at the CA outside certrail: replacement requested (RenewalDue %s)",
             notice.certificate_id, notice.serial, notice.event_id)
    return []
