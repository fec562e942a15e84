"""Submissions in flight together on one connection go to emCA in one call (4.2.x createCertificates).

Each command keeps everything of its own: its concurrency slot, its intent recorded before it
submits, its outcome recorded before it publishes. Only the call is shared. A submission that
finds a free call (at most ``max_calls`` per connection, profile and subscriber) goes at once,
alone, so a lone command waits for nothing; the ones that arrive while the calls are busy gather
and go together, up to ``max_csrs`` (and the dialect's `max_csrs_per_call`) per call, as soon as a
call is free. Dialects without a batch call (V4.0.17: ``max_csrs_per_call`` 1) are called one CSR
at a time, as before.

What each command sees is what a call of its own would have given it:

- its own outcome (issued, pending) or its own refusal (a rejected CSR: `RequestPermanentError`
  for that command only);
- the failure of the call itself (transient, connector fault, an unknown profile) when the call
  fails: every command of it gets that error, so each one stays queued (transient, fault) or
  fails (request-permanent) exactly as if it had called alone, and whether emCA may have acted
  (`TransientError.may_have_reached_ca`) is the same for all of them;
- when emCA refused every CSR of a call (it then fails the call with the first refusal, and
  nothing was issued or held), each CSR is sent again alone, so that each command gets its own
  reason rather than another CSR's.

Every CSR keeps its issuance id as its applicationId: a shared call sends one per CSR
(``applicationIds``, docs/emca-api.md); 4.2.x records them and does not deduplicate on them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from services.common.contracts.errors import ErrorCode
from services.common.emca.types import EmcaConnection, IssueOutcome, RequestPermanentError

DEFAULT_MAX_CSRS = 10  # CERTRAIL_ISSUER_BATCH_MAX_CSRS; 1 turns sharing off (docs/decisions/0007, amendments)
DEFAULT_MAX_CALLS = 2


@dataclass(frozen=True)
class _Submission:
    csr_pem: str
    application_id: str
    future: asyncio.Future[IssueOutcome]


@dataclass
class _Lane:
    """The submissions of one connection, profile and subscriber."""

    connection: EmcaConnection
    profile_name: str
    subscriber_id: str
    waiting: list[_Submission] = field(default_factory=list)
    calls: int = 0


class SubmitBatcher:
    """Shares createCertificates calls between the submissions in flight. One per process; one event loop."""

    def __init__(
        self,
        *,
        max_csrs: int = DEFAULT_MAX_CSRS,
        max_calls: int = DEFAULT_MAX_CALLS,
        on_call: Callable[[int], None] | None = None,
    ) -> None:
        if max_csrs < 1 or max_calls < 1:
            raise ValueError("max_csrs and max_calls must be at least 1")
        self._max_csrs = max_csrs
        self._max_calls = max_calls
        self._on_call = on_call or (lambda size: None)
        self._lanes: dict[tuple[int, str, str], _Lane] = {}
        self._senders: set[asyncio.Task[None]] = set()

    async def submit(
        self, connection: EmcaConnection, *, csr_pem: str, profile_name: str, subscriber_id: str, application_id: str
    ) -> IssueOutcome:
        """Submit one CSR, in a call of its own or shared; raises what that call would raise for it."""
        if min(self._max_csrs, connection.max_csrs_per_call) <= 1:
            self._on_call(1)
            return await connection.submit_csr(
                csr_pem=csr_pem, profile_name=profile_name, subscriber_id=subscriber_id, application_id=application_id
            )
        loop = asyncio.get_running_loop()
        key = (id(connection), profile_name, subscriber_id)
        lane = self._lanes.get(key)
        if lane is None or lane.connection is not connection:
            lane = self._lanes[key] = _Lane(connection, profile_name, subscriber_id)
        submission = _Submission(csr_pem, application_id, loop.create_future())
        lane.waiting.append(submission)
        if lane.calls < self._max_calls:
            lane.calls += 1
            sender = loop.create_task(self._send(key, lane), name="issuer-emca-batch")
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        return await submission.future

    async def _send(self, key: tuple[int, str, str], lane: _Lane) -> None:
        """Calls emCA for the waiting submissions of a lane until none waits."""
        limit = min(self._max_csrs, lane.connection.max_csrs_per_call)
        try:
            while lane.waiting:
                batch = [s for s in lane.waiting[:limit] if not s.future.done()]  # done: its caller was cancelled
                del lane.waiting[:limit]
                if batch:
                    await self._call(lane, batch)
        finally:
            lane.calls -= 1
            if lane.calls == 0 and self._lanes.get(key) is lane:
                for submission in lane.waiting:  # only when cancelled (shutdown): nobody may wait forever
                    submission.future.cancel()
                del self._lanes[key]

    async def _call(self, lane: _Lane, batch: list[_Submission]) -> None:
        self._on_call(len(batch))
        try:
            if len(batch) == 1:
                only = batch[0]
                outcomes: tuple[IssueOutcome | RequestPermanentError, ...] = (
                    await lane.connection.submit_csr(
                        csr_pem=only.csr_pem,
                        profile_name=lane.profile_name,
                        subscriber_id=lane.subscriber_id,
                        application_id=only.application_id,
                    ),
                )
            else:
                outcomes = await lane.connection.submit_csrs(
                    csr_pems=[s.csr_pem for s in batch],
                    profile_name=lane.profile_name,
                    subscriber_id=lane.subscriber_id,
                    application_ids=[s.application_id for s in batch],
                )
        except RequestPermanentError as refusal:
            if len(batch) > 1 and refusal.code is ErrorCode.CA_REJECTED:  # every CSR refused, none issued or held
                await asyncio.gather(*(self._call(lane, [submission]) for submission in batch))
                return
            _fail(batch, refusal)
            return
        except asyncio.CancelledError:
            for submission in batch:
                submission.future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - the call's failure is each caller's, raised where it waits
            _fail(batch, exc)
            return
        for submission, outcome in zip(batch, outcomes, strict=True):
            if submission.future.done():
                continue
            if isinstance(outcome, RequestPermanentError):
                submission.future.set_exception(outcome)
            else:
                submission.future.set_result(outcome)


def _fail(batch: list[_Submission], error: Exception) -> None:
    for submission in batch:
        if not submission.future.done():
            submission.future.set_exception(error)
