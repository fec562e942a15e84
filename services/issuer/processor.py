"""What the issuer does with one command, and with a pending approval.

An issuance (IssueCertificate / RenewCertificate):

    recorded outcome?  -> re-publish the stored records (byte-identical), done
    deadline passed?   -> IssuanceFailed CA_UNAVAILABLE
    wait until the connector is usable (circuit closed, configured, enabled)
    take a concurrency slot (and the connector's rate limit)
    intent (state.begin_attempt)                       -- before emCA is called
    submit the CSR with applicationId = issuance_id
       transient       -> the circuit opens; wait and try again (nothing failed)
       connector fault -> misconfigured; wait for the operator's fix and try again
       request-permanent -> IssuanceFailed with emCA's code
       pending         -> IssuancePending (polled later by `poll_pending`)
       issued          -> verified (services/issuer/verify.py) -> CertificateIssued,
                          or IssuanceFailed CERTIFICATE_MISMATCH
    [crash point after_emca_response]
    outcome recorded with the exact records to publish  [crash point after_db_commit]
    published                                            [crash point after_publish]

An earlier attempt left uncertain (it may have reached emCA: a crash, a timeout after
sending) is resubmitted: V4.0.17 returns the existing certificate for the applicationId;
4.2.x has no dedupe and no lookup by applicationId, so the certificate is published with
``possible_duplicate``, counted (certrail_issuer_possible_duplicates) and tracked as an unresolved duplicate
(DuplicateDetected, services/issuer/duplicates/) until an operator resolves it: never silent.

Event ids derive from the command's id and the event type, and the stored records keep
their first time, so redelivery re-emits the same bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from services.common.consumer import InboundRecord, Outbound, dead_letter_for, producer_violation
from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import IssueCertificate, RenewCertificate, RevokeCertificate
from services.common.contracts.duplicates import DuplicateDetected
from services.common.contracts.envelope import DecodeError, Envelope, Message, decode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import (
    CertificateIssued,
    CertificateRevoked,
    IssuanceFailed,
    IssuancePending,
    RevocationFailed,
)
from services.common.contracts.fields import ErrorInfo
from services.common.contracts.identity import message_id
from services.common.contracts.topics import Topics
from services.common.emca.types import (
    ConnectorFaultError,
    EmcaConnection,
    IssuedCertificate,
    IssueOutcome,
    PendingIssuance,
    RequestPermanentError,
    TransientError,
    first_line,
)
from services.common.runtime.keyed_loop import Work
from services.common.runtime.writer import StateWriter, ThreadCalls
from services.issuer import state
from services.issuer.batching import SubmitBatcher
from services.issuer.connectors import ConnectorPool, ConnectorRuntime, UnknownConnector
from services.issuer.duplicates import store as duplicates_store
from services.issuer.metrics import IssuerMetrics
from services.issuer.revocation import store as revocation_store
from services.issuer.revocation.confirmer import RevocationConfirmer
from services.issuer.state import NewOperation, Operation, OpState, StoredRecord
from services.issuer.verify import CertificateMismatch, verify_issued

log = logging.getLogger(__name__)

SERVICE = "issuer"
SOURCE = "/certrail/issuer"
CRASH_POINTS = ("after_emca_response", "after_db_commit", "after_publish")
CRASH_EXIT_CODE = 86


class CrashPoints:
    """Test-only: ``name[:n]`` makes the process exit abruptly (os._exit, no cleanup, nothing
    committed) the n-th time (default 1st) it reaches that point. Never set in production."""

    def __init__(self, spec: str | None) -> None:
        self.point: str | None = None
        self.remaining = 0
        if spec:
            name, _, count = spec.partition(":")
            if name not in CRASH_POINTS:
                raise ValueError(f"unknown crash point {name!r}; one of {', '.join(CRASH_POINTS)}")
            self.point, self.remaining = name, int(count or 1)

    def reached(self, name: str) -> None:
        if name != self.point:
            return
        self.remaining -= 1
        if self.remaining == 0:
            log.critical("test crash point %s reached: exiting now", name)
            logging.shutdown()
            os._exit(CRASH_EXIT_CODE)


@dataclass(frozen=True)
class _Answer:
    """What emCA answered one submission: its outcome, or its refusal of that CSR."""

    outcome: IssueOutcome | RequestPermanentError
    possible_duplicate: bool  # an earlier attempt was left uncertain on a dialect that does not dedupe


@dataclass(frozen=True)
class ApprovalSettings:
    poll_initial_s: float = 5.0
    poll_max_s: float = 600.0
    timeout: timedelta = timedelta(days=7)


RawPublish = Callable[[Sequence[StoredRecord]], Any]


class Processor:
    def __init__(
        self,
        *,
        engine: Engine,
        pool: ConnectorPool,
        publish: RawPublish,
        topics: Topics,
        metrics: IssuerMetrics,
        clock: Callable[[], datetime],
        crash: CrashPoints | None = None,
        approvals: ApprovalSettings | None = None,
        batcher: SubmitBatcher | None = None,
        confirmer: RevocationConfirmer | None = None,
    ) -> None:
        self._engine = engine
        self._pool = pool
        self._publish = publish
        self._topics = topics
        self._metrics = metrics
        self._clock = clock
        self._crash = crash or CrashPoints(None)
        self._approvals = approvals or ApprovalSettings()
        self._writer = StateWriter(engine)
        self._verifier = ThreadCalls(name="issuer-verify")  # the certificates of one answer: one thread hop
        self._batcher = batcher or SubmitBatcher(on_call=metrics.emca_batch_csrs.observe)
        self._confirmer = confirmer  # revocations emCA accepted are handed over to it (checked on the CRL)

    # -- helpers -------------------------------------------------------------------------------------

    async def _db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A state function in its own transaction (pending approvals: rare, not grouped)."""
        return await asyncio.to_thread(fn, self._engine, *args, **kwargs)

    async def _step(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A state step of a command, committed with the steps of the other commands in flight."""
        return await self._writer.run(fn, *args, **kwargs)

    def _event(self, command: Envelope, data: Message, subject: str, now: datetime) -> StoredRecord:
        event = make_event(
            data, id=message_id(command.id, data.TYPE), source=SOURCE, time=now, subject=subject,
            correlationid=command.correlationid, causationid=command.id,
        )
        return StoredRecord.of(Outbound(self._topics.topic_of(type(data)), event, key=subject))

    async def _emit(self, records: Sequence[StoredRecord]) -> None:
        await self._publish(records)
        self._crash.reached("after_publish")

    async def _timed(self, runtime: ConnectorRuntime, operation: str, call: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self._metrics.emca_duration.labels(runtime.name, operation).observe(time.perf_counter() - started)

    # -- commands ------------------------------------------------------------------------------------

    async def handle(self, record: InboundRecord, work: Work) -> str:
        """Handle one command record; returns the outcome label. Raises only for what must be
        retried (database or Kafka trouble, `Revoked`)."""
        try:
            envelope = decode(record.value, CATALOG)
        except DecodeError as exc:
            await self._dead_letter(record, exc.code, exc.reason)
            self._metrics.commands.labels("invalid", "dead_lettered").inc()
            return "dead_lettered"
        data = envelope.data
        misrouted = producer_violation(self._topics, type(data), record.topic)
        if misrouted is not None:  # e.g. an event on a command topic: never the gateway's (decision 0016)
            await self._dead_letter(record, ErrorCode.PRODUCER_NOT_ALLOWED, misrouted)
            self._metrics.commands.labels(envelope.type, "dead_lettered").inc()
            return "dead_lettered"
        if isinstance(data, IssueCertificate | RenewCertificate | RevokeCertificate):
            expected = self._topics.commands(data.connector)
            if record.topic != expected:
                reason = f"command for connector {data.connector!r} arrived on {record.topic!r}, not {expected!r}"
                await self._dead_letter(record, ErrorCode.HANDLER_REJECTED, reason)
                self._metrics.commands.labels(envelope.type, "dead_lettered").inc()
                return "dead_lettered"
            if isinstance(data, RevokeCertificate):
                outcome = await self._revoke(envelope, data, record, work)
            else:
                outcome = await self._issue(envelope, data, record, work)
        else:
            outcome = "ignored"  # a well-formed message of a type the issuer does not handle
        self._metrics.commands.labels(envelope.type, outcome).inc()
        return outcome

    async def _dead_letter(self, record: InboundRecord, code: ErrorCode, reason: str) -> None:
        outbound = dead_letter_for(record, code, reason, SERVICE, self._topics, self._clock())
        await self._publish([StoredRecord.of(outbound)])

    async def _replay(self, op: Operation, message_type: str) -> str:
        """The outcome is recorded: publish the same records again (the last publish may have been lost)."""
        await self._emit(op.outcome)
        self._metrics.redeliveries.labels(message_type).inc()
        return "replayed"

    def _new_operation(self, op_key: str, kind: str, envelope: Envelope, record: InboundRecord, certificate_id: str,
                       request_id: str, connector: str) -> NewOperation:
        raw = record.value.decode("utf-8") if record.value else ""
        return NewOperation(op_key, kind, envelope.id, certificate_id, request_id, connector, record.topic,
                            record.partition, raw)

    async def _settle_without_call(self, new: NewOperation, envelope: Envelope, data: Message, state_: OpState,
                                   code: ErrorCode, now: datetime) -> str:
        record = self._event(envelope, data, new.certificate_id, now)
        op = await self._step(state.record_settled_without_attempt_in, new, state_, [record], now, error_code=code.value)
        await self._emit(op.outcome)
        return "failed"

    async def _usable(self, runtime: ConnectorRuntime, deadline: datetime | None, work: Work) -> bool:
        """Wait until the connector is usable; False if the request's own deadline passed first."""
        while True:
            work.check()
            timeout = None if deadline is None else (deadline - self._clock()).total_seconds()
            if timeout is not None and timeout <= 0:
                return False
            # wake up now and then to notice a revoked partition
            if await runtime.wait_usable(5.0 if timeout is None else min(timeout, 5.0)):
                return True

    async def _issue(self, envelope: Envelope, data: IssueCertificate | RenewCertificate, record: InboundRecord,
                     work: Work) -> str:
        kind = "renew" if isinstance(data, RenewCertificate) else "issue"
        new = self._new_operation(data.issuance_id, kind, envelope, record, data.certificate_id, data.request_id,
                                  data.connector)

        def failed(code: ErrorCode, message: str) -> IssuanceFailed:
            return IssuanceFailed(issuance_id=data.issuance_id, certificate_id=data.certificate_id,
                                  request_id=data.request_id, connector=data.connector,
                                  error=ErrorInfo(code=code, message=first_line(message, 1000)))

        runtime: ConnectorRuntime | None
        try:
            runtime = await self._pool.get(data.connector)
        except UnknownConnector:
            runtime = None
        if runtime is None or not runtime.usable.is_set():
            # A recorded outcome is published again even while its connector is gone or down. With the
            # connector usable, `begin_attempt_in` finds it instead (one state step less per command).
            existing: Operation | None = await self._step(state.load_in, data.issuance_id)
            if existing is not None and existing.state is not OpState.SUBMITTING:
                return await self._replay(existing, envelope.type)
        if runtime is None:
            now = self._clock()
            return await self._settle_without_call(
                new, envelope, failed(ErrorCode.CONNECTOR_NOT_FOUND, f"no connector named {data.connector!r}"),
                OpState.FAILED, ErrorCode.CONNECTOR_NOT_FOUND, now)
        while True:
            if not await self._usable(runtime, data.deadline, work):
                now = self._clock()
                message = f"the request's deadline {data.deadline.isoformat() if data.deadline else ''} passed while " \
                          f"connector {data.connector} was {runtime.status.value}"
                return await self._settle_without_call(new, envelope, failed(ErrorCode.CA_UNAVAILABLE, message),
                                                       OpState.FAILED, ErrorCode.CA_UNAVAILABLE, now)
            connection: EmcaConnection | None = None
            try:
                # The slot (one of the connector's concurrent emCA calls) is held for the call only: recording
                # and publishing its outcome need no connection, so the next command may call meanwhile. The
                # critical section (a revoked partition waits for it) runs from the intent to the outcome.
                async with AsyncExitStack() as section:
                    async with runtime.slot() as connection:
                        await section.enter_async_context(work.critical_section())
                        answer = await self._submit(runtime, connection, envelope, data, new)
                    if isinstance(answer, str):
                        return answer
                    return await self._settle(runtime, envelope, data, answer, failed)
            except TransientError as exc:
                await runtime.transient(exc, connection)
            except ConnectorFaultError as exc:
                await runtime.fault(exc, connection)

    async def _submit(self, runtime: ConnectorRuntime, connection: EmcaConnection, envelope: Envelope,
                      data: IssueCertificate | RenewCertificate, new: NewOperation) -> str | _Answer:
        """The intent, then the call: emCA's answer (or its refusal of this CSR), or the outcome of a command that
        was settled already. A transient or connector fault is raised, the attempt marked unsent where certain."""
        op, earlier_uncertain = await self._step(state.begin_attempt_in, new, self._clock())
        if op.state is not OpState.SUBMITTING:  # settled meanwhile (another instance, before a rebalance)
            return await self._replay(op, envelope.type)
        possible_duplicate = earlier_uncertain and not runtime.dedupes
        connector = runtime.connector
        assert connector is not None
        try:
            outcome = await self._timed(runtime, "submit_csr", self._batcher.submit(
                connection, csr_pem=data.csr, profile_name=data.ca_profile, subscriber_id=connector.subscriber_id,
                application_id=data.issuance_id))
        except TransientError as exc:
            if not exc.may_have_reached_ca:
                await self._step(state.attempt_unsent_in, data.issuance_id, self._clock())
            raise
        except ConnectorFaultError:
            await self._step(state.attempt_unsent_in, data.issuance_id, self._clock())
            raise
        except RequestPermanentError as exc:
            return _Answer(exc, possible_duplicate)
        return _Answer(outcome, possible_duplicate)

    async def _settle(self, runtime: ConnectorRuntime, envelope: Envelope, data: IssueCertificate | RenewCertificate,
                      answer: _Answer, failed: Callable[[ErrorCode, str], IssuanceFailed]) -> str:
        """Record emCA's answer, then publish it."""
        outcome, possible_duplicate = answer.outcome, answer.possible_duplicate
        if isinstance(outcome, RequestPermanentError):
            exc = outcome
            self._metrics.emca_error(runtime.name, exc)
            self._crash.reached("after_emca_response")
            now = self._clock()
            records = [self._event(envelope, failed(exc.code, exc.message), data.certificate_id, now)]
            await self._step(state.record_outcome_in, data.issuance_id, OpState.FAILED, records, now,
                             error_code=exc.code.value)
            self._crash.reached("after_db_commit")
            await self._emit(records)
            return "failed"
        self._crash.reached("after_emca_response")
        now = self._clock()
        if isinstance(outcome, PendingIssuance):
            pending = IssuancePending(issuance_id=data.issuance_id, certificate_id=data.certificate_id,
                                      request_id=data.request_id, connector=data.connector, ca_request_id=outcome.request_id)
            records = [self._event(envelope, pending, data.certificate_id, now)]
            await self._step(state.record_outcome_in, data.issuance_id, OpState.PENDING, records, now,
                             ca_request_id=outcome.request_id, possible_duplicate=possible_duplicate,
                             next_poll_at=now + timedelta(seconds=self._approvals.poll_initial_s))
            self._crash.reached("after_db_commit")
            await self._emit(records)
            return "pending"
        return await self._issued(runtime, envelope, data, outcome, possible_duplicate, failed, now, append=False)

    async def _issued(self, runtime: ConnectorRuntime, envelope: Envelope, data: IssueCertificate | RenewCertificate,
                      issued: IssuedCertificate, possible_duplicate: bool,
                      failed: Callable[[ErrorCode, str], IssuanceFailed], now: datetime, *, append: bool) -> str:
        connector = runtime.connector
        assert connector is not None
        try:
            verified = await self._verifier.run(
                verify_issued, issued, csr_pem=data.csr, requested_sans=data.sans,
                pinned_ca_sha256=connector.pinned_ca_sha256, pinned_chain_pem=connector.pinned_chain_pem, now=now)
        except CertificateMismatch as exc:
            self._metrics.certificate_mismatches.labels(runtime.name).inc()
            log.error("connector %s returned certificate %s for issuance %s that failed verification: %s",
                      runtime.name, issued.serial, data.issuance_id, exc.message)
            records = [self._event(envelope, failed(exc.code, f"serial {issued.serial}: {exc.message}"),
                                   data.certificate_id, now)]
            await self._step(state.record_outcome_in, data.issuance_id, OpState.FAILED, records, now,
                             serial=issued.serial, error_code=exc.code.value, append=append)
            self._crash.reached("after_db_commit")
            await self._emit(records)
            return "failed"
        if possible_duplicate:
            self._metrics.possible_duplicates.labels(runtime.name).inc()
            log.warning("issuance %s on connector %s (%s, no applicationId dedupe) was retried after an uncertain "
                        "attempt: serial %s is published as a POSSIBLE_DUPLICATE", data.issuance_id, runtime.name,
                        runtime.version, verified.serial)
        event = CertificateIssued(
            issuance_id=data.issuance_id, certificate_id=data.certificate_id, request_id=data.request_id,
            connector=data.connector, profile=data.profile, serial=verified.serial,
            certificate=verified.certificate_pem, chain=list(verified.chain_pem), subject=verified.subject,
            issuer=verified.issuer, sans=list(verified.sans), not_before=verified.not_before,
            not_after=verified.not_after, public_key_sha256=verified.public_key_sha256,
            replaces_serial=data.replaces_serial if isinstance(data, RenewCertificate) else None,
            possible_duplicate=possible_duplicate,
        )
        records = [self._event(envelope, event, data.certificate_id, now)]
        if possible_duplicate:  # tracked until an operator resolves it (services/issuer/duplicates/, decision 0032)
            detected = self._event(envelope, DuplicateDetected(
                certificate_id=data.certificate_id, request_id=data.request_id, connector=data.connector,
                issuance_id=data.issuance_id, delivered_serial=verified.serial,
                public_key_sha256=verified.public_key_sha256, detected_at=now), data.certificate_id, now)
            records.append(detected)
            duplicate = duplicates_store.new_duplicate(
                issuance_id=data.issuance_id, certificate_id=data.certificate_id, request_id=data.request_id,
                correlation_id=envelope.correlationid, detected_event_id=message_id(envelope.id, DuplicateDetected.TYPE),
                connector=data.connector, delivered_serial=verified.serial, public_key_sha256=verified.public_key_sha256,
                now=now)
            await self._step(duplicates_store.record_issued_in, data.issuance_id, records, now, duplicate=duplicate,
                             serial=verified.serial, possible_duplicate=True,
                             error_code=ErrorCode.POSSIBLE_DUPLICATE.value, append=append)
        else:
            await self._step(state.record_outcome_in, data.issuance_id, OpState.ISSUED, records, now,
                             serial=verified.serial, possible_duplicate=False, error_code=None, append=append)
        self._crash.reached("after_db_commit")
        await self._emit(records)
        return "issued"

    async def _revoke(self, envelope: Envelope, data: RevokeCertificate, record: InboundRecord, work: Work) -> str:
        op_key = f"revoke:{envelope.id}"
        existing: Operation | None = await self._step(state.load_in, op_key)
        if existing is not None and existing.state is not OpState.SUBMITTING:
            return await self._replay(existing, envelope.type)
        new = self._new_operation(op_key, "revoke", envelope, record, data.certificate_id, data.request_id, data.connector)
        try:
            runtime = await self._pool.get(data.connector)
        except UnknownConnector:
            now = self._clock()
            failure = RevocationFailed(certificate_id=data.certificate_id, serial=data.serial, request_id=data.request_id,
                                       connector=data.connector, error=ErrorInfo(
                                           code=ErrorCode.CONNECTOR_NOT_FOUND, message=f"no connector named {data.connector!r}"))
            await self._settle_without_call(new, envelope, failure, OpState.REVOCATION_FAILED, ErrorCode.CONNECTOR_NOT_FOUND,
                                            now)
            return "revocation_failed"
        while True:
            await self._usable(runtime, None, work)
            connection: EmcaConnection | None = None
            try:
                async with runtime.slot() as connection, work.critical_section():
                    return await self._revoke_once(runtime, connection, envelope, data, new)
            except TransientError as exc:
                await runtime.transient(exc, connection)
            except ConnectorFaultError as exc:
                await runtime.fault(exc, connection)

    async def _revoke_once(self, runtime: ConnectorRuntime, connection: EmcaConnection, envelope: Envelope,
                           data: RevokeCertificate, new: NewOperation) -> str:
        op, _ = await self._step(state.begin_attempt_in, new, self._clock())
        if op.state is not OpState.SUBMITTING:
            return await self._replay(op, envelope.type)
        try:
            revocation = await self._timed(runtime, "revoke", connection.revoke(
                data.serial, data.reason, remarks=f"certrail request {data.request_id}"))
        except RequestPermanentError as exc:
            self._metrics.emca_error(runtime.name, exc)
            self._crash.reached("after_emca_response")
            now = self._clock()
            code = exc.code if exc.code is not ErrorCode.CA_REJECTED else ErrorCode.REVOCATION_REJECTED
            failure = RevocationFailed(certificate_id=data.certificate_id, serial=data.serial, request_id=data.request_id,
                                       connector=data.connector, error=ErrorInfo(code=code, message=first_line(exc.message, 1000)))
            records = [self._event(envelope, failure, data.certificate_id, now)]
            await self._step(state.record_outcome_in, new.op_key, OpState.REVOCATION_FAILED, records, now,
                             error_code=code.value)
            self._crash.reached("after_db_commit")
            await self._emit(records)
            return "revocation_failed"
        self._crash.reached("after_emca_response")
        now = self._clock()
        revoked = CertificateRevoked(certificate_id=data.certificate_id, serial=data.serial, request_id=data.request_id,
                                     connector=data.connector, reason=data.reason, revoked_at=now, replace=data.replace)
        if revocation.already_revoked:
            log.info("serial %s was already revoked at emCA (connector %s)", data.serial, runtime.name)
        records = [self._event(envelope, revoked, data.certificate_id, now)]
        # the hand-over: the check to confirm it on the CA's CRL is stored with the outcome (one transaction)
        check = None if self._confirmer is None else self._confirmer.check_for(envelope, data, new.topic, new.partition, now)
        await self._step(revocation_store.record_revoked_in, new.op_key, records, now, serial=data.serial, check=check)
        self._crash.reached("after_db_commit")
        await self._emit(records)
        if self._confirmer is not None:
            self._confirmer.wake()
        return "revoked"

    # -- pending approvals -------------------------------------------------------------------------------

    async def poll_pending(self, partitions: set[tuple[str, int]]) -> int:
        """Poll the due pending approvals on these partitions; returns how many were polled."""
        now = self._clock()
        due: list[Operation] = await self._db(state.due_pending, partitions, now)
        polled = 0
        for op in due:
            try:
                polled += await self._poll_one(op)
            except (TransientError, ConnectorFaultError):
                continue
        return polled

    async def _poll_one(self, op: Operation) -> int:
        envelope = decode(op.command.encode("utf-8"), CATALOG)
        data = envelope.data
        assert isinstance(data, IssueCertificate | RenewCertificate)

        def failed(code: ErrorCode, message: str) -> IssuanceFailed:
            return IssuanceFailed(issuance_id=data.issuance_id, certificate_id=data.certificate_id,
                                  request_id=data.request_id, connector=data.connector,
                                  error=ErrorInfo(code=code, message=first_line(message, 1000)))

        now = self._clock()
        if now - op.created_at > self._approvals.timeout:
            records = [self._event(envelope, failed(ErrorCode.APPROVAL_TIMED_OUT, f"emCA request {op.ca_request_id} was "
                                                    f"not approved within {self._approvals.timeout}"), data.certificate_id, now)]
            await self._step(state.record_outcome_in, op.op_key, OpState.FAILED, records, now,
                             error_code=ErrorCode.APPROVAL_TIMED_OUT.value, append=True)
            await self._emit(records)
            self._metrics.commands.labels(envelope.type, "failed").inc()
            return 1
        try:
            runtime = await self._pool.get(op.connector)
        except UnknownConnector:
            return 0
        if not runtime.usable.is_set() or op.ca_request_id is None:
            return 0
        connection: EmcaConnection | None = None
        try:
            async with runtime.slot() as connection:
                result = await self._timed(runtime, "poll_request", connection.poll_request(op.ca_request_id))
        except TransientError as exc:
            await runtime.transient(exc, connection)
            raise
        except ConnectorFaultError as exc:
            await runtime.fault(exc, connection)
            raise
        except RequestPermanentError as exc:
            self._metrics.emca_error(runtime.name, exc)
            records = [self._event(envelope, failed(exc.code, exc.message), data.certificate_id, now)]
            await self._step(state.record_outcome_in, op.op_key, OpState.FAILED, records, now, error_code=exc.code.value,
                             append=True)
            await self._emit(records)
            self._metrics.commands.labels(envelope.type, "failed").inc()
            return 1
        if isinstance(result, PendingIssuance):
            delay = min(self._approvals.poll_max_s, self._approvals.poll_initial_s * 2 ** min(op.poll_attempts + 1, 20))
            await self._db(state.schedule_poll, op.op_key, now + timedelta(seconds=delay), now)
            return 1
        outcome = await self._issued(runtime, envelope, data, result, op.possible_duplicate, failed, now, append=True)
        self._metrics.commands.labels(envelope.type, outcome).inc()
        return 1

