"""The gateway's own view of the outcome of each request it accepted (decision 0017: each service
owns its state); ``GET /v1/requests/{id}`` answers from it.

The gateway consumes ``<prefix>.events.issuer`` and folds the issuer's outcome events into
``gateway_request_status``, one row per request id:

==================  ================  =========================================================
event               state             result
==================  ================  =========================================================
IssuancePending     pending_approval  issuance_id, ca_request_id
CertificateIssued   issued            serial, certificate, chain, subject, issuer, sans,
                                      not_before, not_after, issuance_id, replaces_serial
IssuanceFailed      failed            error, issuance_id
CertificateRevoked  revoked           serial, reason, revoked_at
RevocationFailed    failed            error, serial
==================  ================  =========================================================

Ranking: a terminal outcome (any state but pending_approval) wins over pending_approval; between
two of the same rank the later event time wins, and a tie keeps the one folded first. The event
recorded folded again changes nothing, so redelivery and a replay of the topic are harmless.

Trust: an outcome is folded only for a request this gateway accepted (a ``gateway_requests`` row
with status accepted) about the same certificate id. Any other (no such request, a rejected
one, another certificate's: forged or another installation's) changes nothing and is logged
with a stable reason (`Fold`), which the service also counts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import Engine, bindparam, insert, select, update
from sqlalchemy.orm import Session

from services.common.contracts.envelope import Envelope
from services.common.contracts.events import (
    CertificateIssued,
    CertificateRevoked,
    IssuanceFailed,
    IssuancePending,
    RevocationFailed,
)
from services.common.db import core, write_session
from services.common.db_schema import GatewayRequest, GatewayRequestStatus

__all__ = ["OUTCOME_EVENTS", "PENDING_APPROVAL", "Fold", "Outcome", "apply_event", "apply_in", "fold", "folds_counter",
           "outranks", "status_of"]

log = logging.getLogger(__name__)

PENDING_APPROVAL = "pending_approval"
_OUTCOME = IssuancePending | CertificateIssued | IssuanceFailed | CertificateRevoked | RevocationFailed
#: event class -> (state, the result's keys, whether every key is answered: None when absent)
_SHAPES: dict[type, tuple[str, tuple[str, ...], bool]] = {
    IssuancePending: (PENDING_APPROVAL, ("ca_request_id", "issuance_id"), False),
    CertificateIssued: ("issued", ("serial", "certificate", "chain", "subject", "issuer", "sans", "not_before", "not_after",
                                   "issuance_id", "replaces_serial"), True),
    IssuanceFailed: ("failed", ("error", "issuance_id"), False),
    CertificateRevoked: ("revoked", ("serial", "reason", "revoked_at"), True),
    RevocationFailed: ("failed", ("error", "serial"), False),
}
OUTCOME_EVENTS: tuple[type, ...] = tuple(_SHAPES)


class Fold(StrEnum):
    """What folding one outcome did (the ``outcome`` label of ``certrail_gateway_request_status_folds_total``)."""

    FOLDED = "folded"  # the request's status is this outcome now
    KEPT = "kept"  # the recorded outcome ranks above it (terminal over pending, then the later one)
    REDELIVERED = "redelivered"  # the recorded outcome itself, again
    UNKNOWN_REQUEST = "unknown_request"  # no request of this gateway has that id
    NOT_ACCEPTED = "not_accepted"  # the request was rejected: the issuer never had it from this gateway
    CERTIFICATE_MISMATCH = "certificate_mismatch"  # the request is about another certificate


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the projection keeps of one outcome event."""

    request_id: str
    certificate_id: str
    state: str
    result: dict[str, Any]  # as the event's data carries it in JSON
    event_type: str
    event_id: str
    time: datetime

    @classmethod
    def of(cls, event: Envelope) -> Outcome:
        data = event.data
        shape = _SHAPES.get(type(data))
        if shape is None or not isinstance(data, _OUTCOME):
            raise TypeError(f"the request status projection folds no {event.type}")
        state, keys, every = shape
        dumped = data.model_dump(mode="json", include=set(keys), exclude_none=True)  # as the producer encoded it
        result = {k: dumped.get(k) for k in keys} if every else {k: dumped[k] for k in keys if k in dumped}
        return cls(data.request_id, data.certificate_id, state, result, event.type, event.id, event.time)


def outranks(new_state: str, new_time: datetime, old_state: str, old_time: datetime) -> bool:
    """Whether an outcome takes the place of the recorded one: terminal over pending_approval, then the
    later event time; a tie keeps the recorded one."""
    return (new_state != PENDING_APPROVAL, new_time) > (old_state != PENDING_APPROVAL, old_time)


# -- the fold ---------------------------------------------------------------------------------------


def apply_event(engine: Engine, event: Envelope) -> Fold:
    """`apply_in` in a write transaction of its own."""
    with write_session(engine) as session:
        return apply_in(session, event)


def apply_in(session: Session, event: Envelope) -> Fold:
    """Fold one outcome event in the caller's write transaction (the service groups them:
    services/common/runtime/writer.py). Publishes nothing."""
    return fold(session, Outcome.of(event))


_REQUESTS = GatewayRequest.__table__
_STATUS = GatewayRequestStatus.__table__
#: built once (this runs for every outcome event): the request it is about, and what is recorded of it
_REQUEST = select(_REQUESTS.c.status, _REQUESTS.c.certificate_id).where(_REQUESTS.c.request_id == bindparam("request_id"))
_RECORDED = (select(_STATUS.c.state, _STATUS.c.event_id, _STATUS.c.event_time)
             .where(_STATUS.c.request_id == bindparam("request_id")))
_INSERT = insert(_STATUS)
_UPDATE = (update(_STATUS).where(_STATUS.c.request_id == bindparam("key"))
           .values(state=bindparam("state"), result=bindparam("result"), event_type=bindparam("event_type"),
                   event_id=bindparam("event_id"), event_time=bindparam("event_time")))


def fold(session: Session, outcome: Outcome) -> Fold:
    """Record ``outcome`` as its request's status if the gateway accepted that request about that
    certificate and it outranks what is recorded; what it did, as a `Fold`."""
    request = core(session).execute(_REQUEST, {"request_id": outcome.request_id}).first()
    if request is None:
        verdict = Fold.UNKNOWN_REQUEST
    elif request.status != "accepted":
        verdict = Fold.NOT_ACCEPTED
    elif request.certificate_id != outcome.certificate_id:
        verdict = Fold.CERTIFICATE_MISMATCH
    else:
        return _record(session, outcome)
    log.warning("%s %s ignored (%s): request id %r, certificate id %r", outcome.event_type, outcome.event_id[:128],
                verdict.value, outcome.request_id[:128], outcome.certificate_id[:200])
    return verdict


def _record(session: Session, outcome: Outcome) -> Fold:
    """Core statements, executed at once: a later fold of the same request in this transaction sees it."""
    row = core(session).execute(_RECORDED, {"request_id": outcome.request_id}).first()
    values = {"state": outcome.state, "result": json.dumps(outcome.result), "event_type": outcome.event_type,
              "event_id": outcome.event_id, "event_time": outcome.time}
    if row is None:
        core(session).execute(_INSERT, {"request_id": outcome.request_id, **values})
        return Fold.FOLDED
    if row.event_id == outcome.event_id:
        return Fold.REDELIVERED
    if not outranks(outcome.state, outcome.time, row.state, row.event_time):
        return Fold.KEPT
    core(session).execute(_UPDATE, {"key": outcome.request_id, **values})
    return Fold.FOLDED


# -- what the API reads -----------------------------------------------------------------------------


def status_of(session: Session, request_id: str) -> tuple[str, dict[str, Any]] | None:
    """The request's state and result as folded, or None when no outcome was folded yet."""
    row = session.get(GatewayRequestStatus, request_id)
    if row is None:
        return None
    return row.state, json.loads(row.result)


def folds_counter(registry: CollectorRegistry) -> Counter:
    return Counter("certrail_gateway_request_status_folds", "Outcome events of events.issuer folded into the gateway's "
                   "request status, by what the fold did (folded, kept, redelivered; unknown_request, not_accepted and "
                   "certificate_mismatch change nothing).", ["outcome"], registry=registry)
