"""Request dedupe by the requester's request id (a pure decision).

The gateway keeps, per request id, the content hash of the request it
answered (`canonical.request_content_hash`: SHA-256 of the canonical JSON of
the validated request without ``auth``) and the answer it gave (the
RequestAccepted or RequestRejected it published). A new request with that id is

* SAME when its content hash is equal: answer again with the stored answer,
  publishing no new command (a redelivery or a client retry);
* CONFLICT when it differs: DUPLICATE_REQUEST_CONFLICT, nothing stored;
* NEW when the id was never seen: validate and answer it, then store.

Request ids are global (they are the correlation id of everything that
follows), so another requester reusing an id gets a conflict: the requester
is part of the content.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from services.common.contracts.errors import ErrorCode
from services.gateway.policy.violation import PolicyViolation, shown

A = TypeVar("A")


class DedupeOutcome(StrEnum):
    NEW = "new"
    SAME = "same"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class StoredRequest(Generic[A]):
    request_id: str
    content_hash: str
    answer: A


@dataclass(frozen=True)
class DedupeDecision(Generic[A]):
    outcome: DedupeOutcome
    answer: A | None = None  # the stored answer (SAME)
    violation: PolicyViolation | None = None  # DUPLICATE_REQUEST_CONFLICT (CONFLICT)


def decide_dedupe(stored: StoredRequest[A] | None, request_id: str, content_hash: str) -> DedupeDecision[A]:
    """What to do with a request ``request_id`` whose content hashes to
    ``content_hash``, given what is stored under that id (None: nothing)."""
    if stored is None:
        return DedupeDecision(DedupeOutcome.NEW)
    if stored.request_id != request_id:
        raise ValueError(f"the stored request is {stored.request_id!r}, not {request_id!r}")
    if stored.content_hash == content_hash:
        return DedupeDecision(DedupeOutcome.SAME, answer=stored.answer)
    return DedupeDecision(
        DedupeOutcome.CONFLICT,
        violation=PolicyViolation(
            ErrorCode.DUPLICATE_REQUEST_CONFLICT,
            f"request id {shown(request_id)} was already used for a different request"
            f" (content sha256 {stored.content_hash[:12]}…, this one {content_hash[:12]}…); use a new request id",
        ),
    )
