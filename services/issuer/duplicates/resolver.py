"""Resolving a possible duplicate issuance (issue 20, decision 0032; docs/issuer.md "Possible duplicates").

An operator found the extra certificate at emCA (4.2.x offers no search by applicationId or public key) and gives
its serial; the issuer then:

1. refuses the delivered serial (409) before asking emCA anything;
2. fetches that serial's certificate from emCA (getCertificate); none -> 404 CERTIFICATE_NOT_FOUND;
3. checks it is the extra one (checks.py: same public key as the CSR, another serial, signed by the pinned issuing
   CA) -> 409/422 CERTIFICATE_MISMATCH or 422 CERTIFICATE_UNTRUSTED, audited as DuplicateResolutionRefused;
4. revokes it at emCA as superseded (already revoked counts as done); refused -> 422 REVOCATION_REJECTED (audited);
5. stores the resolution with, in the same transaction, its DuplicateResolved in the issuer's outbox
   (``issuer_admin_outbox``) and the revocation's check, which the revocation confirmation
   (services/issuer/revocation/, decision 0025) polls until the CRL lists the serial (RevocationConfirmed, caused by
   the DuplicateResolved);
6. wakes the issuer's outbox relay (`queued`; registry/outbox.py), which publishes DuplicateResolved: one publisher
   per process, the stored bytes, retried until acknowledged.

Or the operator states there is no extra certificate (``no_extra`` with a note): DuplicateResolved no_extra.
emCA unreachable or the connector unusable -> `Unavailable` (503: try again; nothing is recorded). A resolution
asked again with the same answer returns the stored one; with another answer it is 409 DUPLICATE_REQUEST_CONFLICT.

A background loop (`run_forever`) keeps the gauge certrail_issuer_duplicates_unresolved{connector} (every known
connector at 0 or more) and moves a resolution stored by an earlier version, not yet acknowledged, into the outbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from services.common.consumer import Outbound
from services.common.contracts.duplicates import DuplicateResolution, DuplicateResolutionRefused, DuplicateResolved
from services.common.contracts.envelope import Envelope, Message, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import ErrorInfo, RevocationReason
from services.common.contracts.identity import message_id
from services.common.contracts.topics import Topics
from services.common.emca.types import ConnectorFaultError, RequestPermanentError, TransientError, first_line
from services.issuer.connectors import ConnectorPool, ConnectorRuntime, UnknownConnector
from services.issuer.duplicates import store
from services.issuer.duplicates.checks import Expected, NotTheExtra, check_extra, refuse_delivered, serial_of
from services.issuer.duplicates.store import Duplicate, DuplicateState
from services.issuer.registry.outbox import OUTBOX
from services.issuer.revocation import store as revocation_store
from services.issuer.state import StoredRecord

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[StoredRecord]], Awaitable[Any]]


class Refused(Exception):
    """The resolution is refused: ``code`` and ``status`` are the answer (4xx)."""

    def __init__(self, code: ErrorCode, status: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message


class Unavailable(Exception):
    """emCA or the connector cannot be used now (503; nothing was recorded): try again."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Resolution:
    """What the operator says: the extra serial, or that emCA holds none (with a note)."""

    extra_serial: str | None = None
    no_extra: bool = False
    note: str | None = None
    issuance_id: str | None = None  # which duplicate of the certificate (needed only when it has several unresolved)


@dataclass(frozen=True)
class CheckTiming:
    """The revocation confirmation's timing (CERTRAIL_ISSUER_REVOCATION_CONFIRM_*)."""

    timeout_s: float = 86400.0
    poll_initial_s: float = 5.0


class DuplicateResolver:
    def __init__(self, *, engine: Engine, pool: ConnectorPool, publish: Publish, topics: Topics, gauge: Any,
                 clock: Callable[[], datetime], event_source: str, timing: CheckTiming | None = None,
                 on_check: Callable[[], None] | None = None, refresh_s: float = 5.0) -> None:
        self._engine = engine
        self._pool = pool
        self._publish = publish
        self._topics = topics
        self._gauge = gauge  # certrail_issuer_duplicates_unresolved{connector}
        self._clock = clock
        self._source = event_source
        self._timing = timing or CheckTiming()
        self._on_check = on_check  # wakes the revocation confirmation
        self._refresh_s = refresh_s
        self._gauged: set[str] = set()
        #: wakes the outbox relay after a resolution was stored (services/issuer/app.py sets it to the relay's wake)
        self.queued: Callable[[], None] = lambda: None

    # -- reads -------------------------------------------------------------------------------------------------

    async def listed(self, wanted: DuplicateState | None, certificate_id: str | None = None) -> list[Duplicate]:
        return await asyncio.to_thread(store.listed, self._engine, wanted, certificate_id=certificate_id)

    # -- resolving -----------------------------------------------------------------------------------------------

    async def resolve(self, certificate_id: str, resolution: Resolution, actor: str) -> Duplicate:
        """Resolve the certificate's duplicate; raises `Refused` or `Unavailable`."""
        duplicate = await self._which(certificate_id, resolution.issuance_id)
        serial = None
        if resolution.extra_serial is not None:
            try:
                serial = serial_of(resolution.extra_serial)
            except ValueError as exc:
                raise Refused(ErrorCode.SCHEMA_VIOLATION, 422, str(exc)) from None
        if duplicate.state == DuplicateState.RESOLVED.value:
            return self._same_or_conflict(duplicate, serial)
        if serial is None:
            return await self._no_extra(duplicate, resolution.note, actor)
        try:
            refuse_delivered(serial, self._expected(duplicate))
        except NotTheExtra as exc:
            raise await self._refuse(duplicate, serial, actor, Refused(exc.code, exc.status, exc.message)) from None
        return await self._revoke_extra(duplicate, serial, resolution.note, actor)

    async def _which(self, certificate_id: str, issuance_id: str | None) -> Duplicate:
        found = await asyncio.to_thread(store.listed, self._engine, None, certificate_id=certificate_id)
        if issuance_id is not None:
            found = [d for d in found if d.issuance_id == issuance_id]
        if not found:
            raise Refused(ErrorCode.CERTIFICATE_NOT_FOUND, 404,
                          f"no possible duplicate issuance of {certificate_id}" +
                          (f" with issuance id {issuance_id}" if issuance_id else ""))
        open_ = [d for d in found if d.state == DuplicateState.UNRESOLVED.value]
        if len(open_) > 1:
            raise Refused(ErrorCode.DUPLICATE_REQUEST_CONFLICT, 409,
                          f"{certificate_id} has {len(open_)} unresolved duplicates: name one with issuance_id "
                          f"({', '.join(d.issuance_id for d in open_)})")
        return open_[0] if open_ else found[-1]

    def _same_or_conflict(self, duplicate: Duplicate, serial: str | None) -> Duplicate:
        same = (duplicate.extra_serial == serial) if serial is not None else duplicate.resolution == DuplicateResolution.NO_EXTRA
        if same:
            return duplicate
        said = f"extra serial {duplicate.extra_serial}" if duplicate.extra_serial else "no extra certificate"
        raise Refused(ErrorCode.DUPLICATE_REQUEST_CONFLICT, 409,
                      f"the duplicate issuance {duplicate.issuance_id} of {duplicate.certificate_id} was resolved already "
                      f"({said}, by {duplicate.resolved_by})")

    async def _expected_now(self, duplicate: Duplicate) -> tuple[ConnectorRuntime, Expected]:
        try:
            runtime = await self._pool.get(duplicate.connector)
        except UnknownConnector:
            raise Refused(ErrorCode.CONNECTOR_NOT_FOUND, 404, f"no connector named {duplicate.connector!r}") from None
        if runtime.connector is None or not runtime.usable.is_set():
            raise Unavailable(ErrorCode.CA_UNREACHABLE, f"connector {duplicate.connector} is {runtime.status.value}: "
                                                        "try again when it is up")
        return runtime, self._expected(duplicate, runtime)

    def _expected(self, duplicate: Duplicate, runtime: ConnectorRuntime | None = None) -> Expected:
        connector = runtime.connector if runtime is not None else None
        return Expected(delivered_serial=duplicate.delivered_serial, public_key_sha256=duplicate.public_key_sha256,
                        pinned_chain_pem=connector.pinned_chain_pem if connector else (),
                        pinned_sha256=connector.pinned_ca_sha256 if connector else "")

    async def _revoke_extra(self, duplicate: Duplicate, serial: str, note: str | None, actor: str) -> Duplicate:
        runtime, expected = await self._expected_now(duplicate)
        remarks = f"certrail: extra certificate of duplicate issuance {duplicate.issuance_id} ({duplicate.certificate_id})"
        try:
            async with runtime.slot() as connection:
                try:
                    issued = await connection.get_certificate(serial)
                except RequestPermanentError as exc:
                    raise Refused(ErrorCode.CERTIFICATE_NOT_FOUND, 404,
                                  f"emCA gives no certificate with serial {serial}: {first_line(exc.message, 500)}") from None
                try:
                    check_extra(serial, issued.certificate_pem, expected)
                except NotTheExtra as exc:
                    raise Refused(exc.code, exc.status, exc.message) from None
                try:
                    revocation = await connection.revoke(serial, RevocationReason.SUPERSEDED, remarks=remarks)
                except RequestPermanentError as exc:
                    raise Refused(ErrorCode.REVOCATION_REJECTED, 422,
                                  f"emCA refused to revoke serial {serial}: {first_line(exc.message, 500)}") from None
        except Refused as refused:  # not at emCA, not the extra one, or its revocation refused: audited
            raise await self._refuse(duplicate, serial, actor, refused) from None
        except (TransientError, ConnectorFaultError) as exc:
            log.warning("resolving duplicate %s: connector %s did not answer: %s", duplicate.issuance_id,
                        duplicate.connector, exc.message)
            raise Unavailable(exc.code, f"emCA did not answer ({first_line(exc.message, 300)}): try again") from None
        now = self._clock()
        data = DuplicateResolved(
            certificate_id=duplicate.certificate_id, request_id=duplicate.request_id, connector=duplicate.connector,
            issuance_id=duplicate.issuance_id, delivered_serial=duplicate.delivered_serial,
            resolution=DuplicateResolution.REVOKED, extra_serial=serial, reason=RevocationReason.SUPERSEDED,
            already_revoked=revocation.already_revoked, note=note, actor=actor, resolved_at=now)
        event = self._event(duplicate, data, now)
        check = revocation_store.new_check(
            check_id=self._resolved_id(duplicate), certificate_id=duplicate.certificate_id, serial=serial,
            connector=duplicate.connector, reason=RevocationReason.SUPERSEDED.value, request_id=duplicate.request_id,
            correlation_id=duplicate.correlation_id, topic=duplicate.topic, partition=duplicate.partition, now=now,
            first_check_at=now + timedelta(seconds=min(self._timing.poll_initial_s, self._timing.timeout_s)),
            deadline_at=now + timedelta(seconds=self._timing.timeout_s))

        def with_check(conn: Connection) -> None:
            store.insert_check_in(conn, check)

        log.info("duplicate issuance %s of %s: extra serial %s revoked (superseded) at emCA by %s", duplicate.issuance_id,
                 duplicate.certificate_id, serial, actor)
        return await self._stored(duplicate, event, now, DuplicateResolution.REVOKED, serial, note, actor, with_check)

    async def _no_extra(self, duplicate: Duplicate, note: str | None, actor: str) -> Duplicate:
        if not note or not note.strip():
            raise Refused(ErrorCode.SCHEMA_VIOLATION, 422, "no_extra needs a note: how emCA was searched")
        now = self._clock()
        data = DuplicateResolved(
            certificate_id=duplicate.certificate_id, request_id=duplicate.request_id, connector=duplicate.connector,
            issuance_id=duplicate.issuance_id, delivered_serial=duplicate.delivered_serial,
            resolution=DuplicateResolution.NO_EXTRA, note=note.strip(), actor=actor, resolved_at=now)
        log.info("duplicate issuance %s of %s resolved without an extra certificate by %s", duplicate.issuance_id,
                 duplicate.certificate_id, actor)
        return await self._stored(duplicate, self._event(duplicate, data, now), now, DuplicateResolution.NO_EXTRA, None,
                                  note.strip(), actor, None)

    async def _stored(self, duplicate: Duplicate, event: Envelope, now: datetime, resolution: DuplicateResolution,
                      serial: str | None, note: str | None, actor: str,
                      also: Callable[[Connection], None] | None) -> Duplicate:
        def in_transaction(conn: Connection) -> None:
            OUTBOX.queue_event_in(conn, event, key=duplicate.certificate_id)
            if also is not None:
                also(conn)

        stored = await asyncio.to_thread(store.resolve, self._engine, duplicate.issuance_id, now,
                                         resolution=resolution.value, extra_serial=serial, note=note, actor=actor,
                                         also=in_transaction)
        current = await asyncio.to_thread(store.load, self._engine, duplicate.issuance_id)
        assert current is not None
        if not stored:  # resolved meanwhile by another call
            return self._same_or_conflict(current, serial)
        self.queued()
        if also is not None and self._on_check is not None:
            self._on_check()
        await self.refresh_gauge()
        return current

    async def _refuse(self, duplicate: Duplicate, serial: str | None, actor: str, refused: Refused) -> Refused:
        """Publish the refusal (the audit of it) and return it to raise."""
        now = self._clock()
        data = DuplicateResolutionRefused(
            certificate_id=duplicate.certificate_id, connector=duplicate.connector, issuance_id=duplicate.issuance_id,
            extra_serial=serial, error=ErrorInfo(code=refused.code, message=first_line(refused.message, 1000)),
            actor=actor, refused_at=now)
        event = make_event(data, id=message_id(f"duplicate:{duplicate.issuance_id}:{serial}:{now.isoformat()}", data.TYPE),
                           source=self._source, time=now, subject=duplicate.certificate_id,
                           correlationid=duplicate.correlation_id, causationid=duplicate.detected_event_id)
        await self._publish([StoredRecord.of(Outbound(self._topics.topic_of(type(data)), event, key=duplicate.certificate_id))])
        log.warning("duplicate issuance %s of %s: serial %s refused (%s): %s", duplicate.issuance_id,
                    duplicate.certificate_id, serial, refused.code.value, refused.message)
        return refused

    def _resolved_id(self, duplicate: Duplicate) -> str:
        return message_id(duplicate.detected_event_id, DuplicateResolved.TYPE)

    def _event(self, duplicate: Duplicate, data: Message, now: datetime) -> Envelope:
        return make_event(data, id=self._resolved_id(duplicate), source=self._source, time=now,
                          subject=duplicate.certificate_id, correlationid=duplicate.correlation_id,
                          causationid=duplicate.detected_event_id)

    # -- the background loop ---------------------------------------------------------------------------------------

    async def refresh_gauge(self) -> None:
        counts = await asyncio.to_thread(store.unresolved_by_connector, self._engine)
        self._gauged |= set(counts) | {r.name for r in self._pool.runtimes()}
        for connector in self._gauged:  # every known connector's series exists (decision 0029); resolved -> 0
            self._gauge.labels(connector).set(counts.get(connector, 0))

    async def run_once(self) -> None:
        now = self._clock()
        if await asyncio.to_thread(store.queue_unpublished, self._engine, now):
            self.queued()
        await self.refresh_gauge()

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # noqa: BLE001 - database or Kafka trouble: the next round tries again
                log.warning("refreshing possible duplicates failed; trying again", exc_info=True)
            await asyncio.sleep(self._refresh_s)

