"""Certificates held back until the gateway event that lets them be installed arrives.

Since decision 0016 the gateway's events (RequestAccepted, connector pins) and the issuer's
(CertificateIssued) travel on two topics, so their relative order is lost: a deployer catching up
on a backlog can see a certificate before the acceptance that asked for it. A certificate refused
for a reason such an event could cure (`trust.Refused.curable`: not requested yet, no pin known
for its connector yet, or not the key of the accepted CSR while a renewal's acceptance may be on
its way) is parked here instead of being refused at once:

- parked once per event id, with a deadline ``park_s`` after it first arrived (a redelivery
  does not move it);
- checked again when the deployer applies a RequestAccepted for its certificate id or a pin for
  its connector (handlers/projection.py), in the same write transaction that applies the event;
- refused for good when the deadline passes (`sweep_forever`, the deployer's background task):
  DeploymentFailed per bound target with the refusal's code, as without parking.

Nothing is installed while a certificate is parked. ``park_s`` 0 refuses at once (the behaviour
before decision 0016). Functions taking a Session are the deployer's own table; only it writes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from services.common.consumer import Outbound
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import DecodeError, Envelope, decode, encode
from services.common.contracts.events import CertificateIssued
from services.common.db import core
from services.common.db_schema import DeployerParkedCertificateRow as Row

log = logging.getLogger(__name__)
#: how many parked certificates one release or sweep takes at a time
BATCH = 100


@dataclass(frozen=True)
class Parked:
    event_id: str
    certificate_id: str
    record: str
    deadline: datetime


def _parked(row: Row) -> Parked:
    return Parked(row.event_id, row.certificate_id, row.record, row.deadline)


def park(session: Session, envelope: Envelope, code: str, now: datetime, park_s: float) -> datetime:
    """Park ``envelope`` (a CertificateIssued) unless it already is; its deadline."""
    issued = envelope.data
    assert isinstance(issued, CertificateIssued)
    row = session.get(Row, envelope.id)
    if row is not None:
        return row.deadline
    deadline = now + timedelta(seconds=park_s)
    session.add(Row(event_id=envelope.id, certificate_id=issued.certificate_id, connector=issued.connector,
                    record=encode(envelope).decode(), code=code, parked_at=now, deadline=deadline))
    return deadline


_IS_PARKED = select(Row.__table__.c.event_id).where(Row.__table__.c.event_id == bindparam("event_id"))


def is_parked(session: Session, event_id: str) -> bool:
    return core(session).execute(_IS_PARKED, {"event_id": event_id}).first() is not None


def unpark(session: Session, event_id: str) -> None:
    session.execute(delete(Row).where(Row.event_id == event_id))


def waiting_for(session: Session, *, certificate_id: str | None = None, connector: str | None = None) -> list[Parked]:
    """The parked certificates a gateway event about ``certificate_id`` or ``connector`` may cure."""
    query = select(Row).order_by(Row.parked_at, Row.event_id).limit(BATCH)
    if certificate_id is not None:
        query = query.where(Row.certificate_id == certificate_id)
    if connector is not None:
        query = query.where(Row.connector == connector)
    return [_parked(row) for row in session.scalars(query)]


def due(session: Session, now: datetime) -> list[Parked]:
    """Parked certificates whose deadline has passed, oldest first."""
    query = select(Row).where(Row.deadline <= now).order_by(Row.deadline, Row.event_id).limit(BATCH)
    return [_parked(row) for row in session.scalars(query)]


def count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Row)) or 0)


def envelope_of(parked: Parked) -> Envelope | None:
    """The stored record, decoded as any consumed record is (None, logged: it no longer decodes)."""
    try:
        return decode(parked.record.encode(), CATALOG)
    except DecodeError as exc:
        log.error("parked certificate %s (event %s) no longer decodes (%s): dropped", parked.certificate_id,
                  parked.event_id, exc.reason)
        return None


Retry = Callable[[Envelope, bool], Awaitable[list[Outbound]]]


async def retry_all(parked: Sequence[Parked], retry: Retry, *, final: bool, drop: Callable[[str], None]) -> list[Outbound]:
    """Run ``retry`` (the CertificateIssued handler) again on each parked certificate: ``final``
    refuses what is still refused. A stored record that no longer decodes is dropped."""
    out: list[Outbound] = []
    for item in parked:
        envelope = envelope_of(item)
        if envelope is None:
            await asyncio.to_thread(drop, item.event_id)
            continue
        out.extend(await retry(envelope, final))
    return out
