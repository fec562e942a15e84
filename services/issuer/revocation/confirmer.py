"""Revocation confirmed on the CA's CRL (issue 20, decision 0025; docs/issuer.md "Revocation confirmed").

The command loop hands a revocation over by writing its check with the revocation's outcome
(`check_for` + `store.record_revoked_in`, one transaction) and waking this task; it never waits for it.
A background task of the issuer then, per round:

1. re-publishes the stored outcome of any check settled but not acknowledged (a crash in between);
2. takes the pending checks of the revocations commanded on this instance's partitions, finds each one's
   distribution point once (the stored CertificateIssued, else emCA's copy of the certificate);
3. reads each distribution point that has a due check ONCE (one read serves every pending check of it),
   verifies the CRL against the connector's pinned issuing CA (`crl_check.verify_crl`) and looks up each
   pending check's serial there;
4. listed with the requested reason -> RevocationConfirmed; otherwise the check is polled again after a
   bounded exponential backoff (``poll_initial_s`` doubling up to ``poll_max_s``, never past the deadline),
   and at the deadline -> RevocationUnconfirmed with what it saw last (`UnconfirmedCause`).

Outcomes are stored before they are published (`store.settle`), with deterministic event ids
(the CertificateRevoked's id and the type), so a restart re-publishes the same bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from sqlalchemy import Engine

from services.common.consumer import Outbound
from services.common.contracts.commands import RevokeCertificate
from services.common.contracts.envelope import Envelope, Message, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateRevoked
from services.common.contracts.fields import ErrorInfo, RevocationReason
from services.common.contracts.identity import message_id
from services.common.contracts.revocation import RevocationConfirmed, RevocationUnconfirmed, UnconfirmedCause
from services.common.contracts.topics import Topics
from services.common.emca.types import EmcaError, first_line
from services.issuer.revocation import store
from services.issuer.revocation.crl_check import (
    CrlUntrusted,
    Listed,
    NotListed,
    ReasonMismatch,
    VerifiedCrl,
    distribution_points,
    find_serial,
    verify_crl,
)
from services.issuer.revocation.metrics import RevocationMetrics
from services.issuer.revocation.source import CrlSource
from services.issuer.revocation.store import Check, CheckState
from services.issuer.state import StoredRecord

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[StoredRecord]], Awaitable[Any]]


@dataclass(frozen=True)
class ConfirmSettings:
    timeout_s: float = 86400.0  # from emCA's acceptance to RevocationUnconfirmed
    poll_initial_s: float = 5.0
    poll_max_s: float = 300.0
    idle_s: float = 5.0  # the longest sleep between rounds (new partitions, checks of another instance)


@dataclass(frozen=True)
class _Seen:
    """What one distribution point gave this round: a verified CRL, or why not."""

    crl: VerifiedCrl | None
    cause: UnconfirmedCause | None = None
    error: ErrorInfo | None = None


class RevocationConfirmer:
    def __init__(self, *, engine: Engine, source: CrlSource, publish: Publish, topics: Topics, metrics: RevocationMetrics,
                 clock: Callable[[], datetime], settings: ConfirmSettings, partitions: Callable[[], set[tuple[str, int]]],
                 event_source: str) -> None:
        self._engine = engine
        self._source = source
        self._publish = publish
        self._topics = topics
        self._metrics = metrics
        self._clock = clock
        self._settings = settings
        self._partitions = partitions
        self._event_source = event_source
        self._wake = asyncio.Event()
        self._gauged: set[str] = set()

    # -- the hand-over (from the command loop) ----------------------------------------------------------

    def check_for(self, command: Envelope, data: RevokeCertificate, topic: str, partition: int, now: datetime) -> Check:
        """The check of a revocation emCA accepted now, to store with its outcome (`store.record_revoked_in`)."""
        self._metrics.known(data.connector)
        return store.new_check(
            check_id=message_id(command.id, CertificateRevoked.TYPE), certificate_id=data.certificate_id,
            serial=data.serial, connector=data.connector, reason=data.reason.value, request_id=data.request_id,
            correlation_id=command.correlationid, topic=topic, partition=partition, now=now,
            first_check_at=now + timedelta(seconds=min(self._settings.poll_initial_s, self._settings.timeout_s)),
            deadline_at=now + timedelta(seconds=self._settings.timeout_s))

    def wake(self) -> None:
        self._wake.set()

    # -- the background task ----------------------------------------------------------------------------------

    async def run_forever(self) -> None:
        while True:
            delay = self._settings.idle_s
            try:
                delay = await self.run_once()
            except Exception:  # noqa: BLE001 - database or Kafka trouble: the next round tries again
                log.warning("confirming revocations failed; trying again", exc_info=True)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.05, delay))
            except TimeoutError:
                pass

    async def run_once(self) -> float:
        """One round; returns how long to sleep before the next (at most ``idle_s``)."""
        mine = self._partitions()
        await self._republish(mine)
        pending: list[Check] = await asyncio.to_thread(store.pending_checks, self._engine, mine)
        for connector in {c.connector for c in pending}:  # resumed after a restart: the alert's series exist at 0
            self._metrics.known(connector)
        await self._gauge()
        now = self._clock()
        due = [c for c in pending if c.next_check_at <= now]
        if due:
            due_ids = {c.check_id for c in due}
            pending = await self._resolve(pending, due_ids, now)
            await self._check(pending, due_ids, now)
            pending = await asyncio.to_thread(store.pending_checks, self._engine, mine)
            await self._gauge()
        now = self._clock()
        upcoming = [(c.next_check_at - now).total_seconds() for c in pending]
        return min([self._settings.idle_s, *upcoming])

    async def _gauge(self) -> None:
        counts = await asyncio.to_thread(store.pending_by_connector, self._engine)
        self._gauged |= set(counts)
        for connector in self._gauged:  # a connector whose checks are all settled goes back to 0
            self._metrics.pending.labels(connector).set(counts.get(connector, 0))

    async def _republish(self, mine: set[tuple[str, int]]) -> None:
        left: list[Check] = await asyncio.to_thread(store.unpublished, self._engine, mine)
        for check in left:
            await self._publish(check.records())
            await asyncio.to_thread(store.mark_published, self._engine, [check.check_id], self._clock())

    # -- finding each certificate's distribution point ---------------------------------------------------

    async def _resolve(self, pending: list[Check], due: set[str], now: datetime) -> list[Check]:
        """Pending checks without a distribution point get one (stored), so that the next read of it serves them
        too; a due one that cannot is settled (none in the certificate) or tried again (no certificate yet)."""
        resolved: dict[str, Check] = {}
        for check in pending:
            if check.distribution_point is not None:
                continue
            is_due = check.check_id in due
            pem, error = await self._certificate_pem(check, ask_ca=is_due)  # not due: the issuer's own record only
            urls: tuple[str, ...] | None = None
            if pem is not None:
                try:
                    urls = distribution_points(x509.load_pem_x509_certificate(pem.encode()))
                except ValueError as exc:  # emCA's copy is no certificate: as if it gave none (tried again)
                    error = ErrorInfo(code=ErrorCode.CA_PROTOCOL_ERROR, message=first_line(f"serial {check.serial}: {exc}", 1000))
            if urls:
                await asyncio.to_thread(store.save_progress, self._engine, check.check_id, now, distribution_point=urls[0])
                resolved[check.check_id] = _with(check, distribution_point=urls[0])
            elif not is_due:
                continue
            elif urls is not None:
                await self._unconfirmed(check, now, UnconfirmedCause.NO_DISTRIBUTION_POINT)
            else:
                await self._not_yet(check, now, UnconfirmedCause.CERTIFICATE_UNKNOWN, error=error)
        return [resolved.get(c.check_id, c) for c in pending]

    async def _certificate_pem(self, check: Check, *, ask_ca: bool) -> tuple[str | None, ErrorInfo | None]:
        """The revoked certificate: from the issuer's recorded CertificateIssued, else (``ask_ca``) from emCA."""
        pem = await asyncio.to_thread(store.issued_certificate_pem, self._engine, check.certificate_id, check.serial)
        if pem is not None or not ask_ca:
            return pem, None
        try:
            return await self._source.certificate_pem(check.connector, check.serial), None
        except EmcaError as exc:
            return None, ErrorInfo(code=exc.code, message=first_line(exc.message, 1000))

    # -- reading each distribution point once ------------------------------------------------------------------

    async def _check(self, pending: list[Check], due: set[str], now: datetime) -> None:
        groups: dict[tuple[str, str], list[Check]] = {}
        for check in pending:
            if check.distribution_point is not None:
                groups.setdefault((check.connector, check.distribution_point), []).append(check)
        for (connector, url), checks in groups.items():
            if not any(c.check_id in due for c in checks):
                continue
            seen = await self._read(connector, url)
            for check in checks:
                await self._judge(check, seen, now, due=check.check_id in due)

    async def _read(self, connector: str, url: str) -> _Seen:
        pin = await self._source.pin(connector)
        if pin is None:
            return _Seen(None, UnconfirmedCause.CRL_UNAVAILABLE,
                         ErrorInfo(code=ErrorCode.CONNECTOR_NOT_FOUND, message=f"no connector named {connector!r}"))
        try:
            der = await self._source.fetch(connector, url)
        except EmcaError as exc:
            self._metrics.fetches.labels(connector, "unavailable").inc()
            log.warning("revocation check: the CRL at %s (connector %s) could not be read: %s", url, connector, exc.message)
            return _Seen(None, UnconfirmedCause.CRL_UNAVAILABLE, ErrorInfo(code=exc.code, message=first_line(exc.message, 1000)))
        try:
            crl = await asyncio.to_thread(verify_crl, der, pin.chain_pem, pin.sha256)
        except CrlUntrusted as exc:
            self._metrics.fetches.labels(connector, "untrusted").inc()
            log.error("revocation check: the CRL at %s (connector %s) is refused: %s", url, connector, exc.message)
            return _Seen(None, UnconfirmedCause.CRL_UNTRUSTED,
                         ErrorInfo(code=ErrorCode.CERTIFICATE_UNTRUSTED, message=first_line(f"{url}: {exc.message}", 1000)))
        self._metrics.fetches.labels(connector, "ok").inc()
        return _Seen(crl)

    async def _judge(self, check: Check, seen: _Seen, now: datetime, *, due: bool) -> None:
        reason = RevocationReason(check.reason)
        if seen.crl is None:
            if due:
                await self._not_yet(check, now, seen.cause or UnconfirmedCause.CRL_UNAVAILABLE, error=seen.error)
            return
        found = await asyncio.to_thread(find_serial, seen.crl, check.serial, reason)
        number = None if seen.crl.number is None else str(seen.crl.number)
        if isinstance(found, Listed):
            await self._confirmed(check, seen.crl, found, now)
        elif due and isinstance(found, NotListed):
            await self._not_yet(check, now, UnconfirmedCause.NOT_LISTED, crl_number=number,
                                crl_this_update=seen.crl.this_update)
        elif due and isinstance(found, ReasonMismatch):
            await self._not_yet(check, now, UnconfirmedCause.REASON_MISMATCH, crl_number=number,
                                crl_this_update=seen.crl.this_update, listed_reason=found.listed)

    # -- outcomes --------------------------------------------------------------------------------------------------

    async def _not_yet(self, check: Check, now: datetime, cause: UnconfirmedCause, *, error: ErrorInfo | None = None,
                       **seen: Any) -> None:
        """Not confirmed by this read: poll again after the backoff, or give up at the deadline."""
        updated = _with(check, checks=check.checks + 1, last_cause=cause.value,
                        last_error=error.model_dump_json() if error else None, **seen)
        if now >= check.deadline_at:
            await self._unconfirmed(updated, now, cause)
            return
        delay = min(self._settings.poll_max_s, self._settings.poll_initial_s * 2 ** min(check.checks, 30))
        next_at = min(check.deadline_at, now + timedelta(seconds=delay))
        await asyncio.to_thread(store.save_progress, self._engine, check.check_id, now, next_check_at=next_at,
                                checks=updated.checks, last_cause=updated.last_cause, last_error=updated.last_error,
                                **seen)

    async def _confirmed(self, check: Check, crl: VerifiedCrl, listed: Listed, now: datetime) -> None:
        assert check.distribution_point is not None
        data = RevocationConfirmed(
            certificate_id=check.certificate_id, serial=check.serial, request_id=check.request_id,
            connector=check.connector, reason=RevocationReason(check.reason), distribution_point=check.distribution_point,
            crl_number=None if crl.number is None else str(crl.number), crl_this_update=crl.this_update,
            revoked_at_ca=listed.revoked_at, confirmed_at=now)
        if await self._settle(check, data, CheckState.CONFIRMED, now, checks=check.checks + 1,
                              crl_number=data.crl_number, crl_this_update=crl.this_update, last_cause=None):
            self._metrics.confirmed.labels(check.connector).inc()
            self._metrics.seconds_to_confirm.observe(max(0.0, (now - check.created_at).total_seconds()))
            log.info("revocation of %s serial %s confirmed on CRL %s (%s)", check.certificate_id, check.serial,
                     data.crl_number, check.distribution_point)

    async def _unconfirmed(self, check: Check, now: datetime, cause: UnconfirmedCause) -> None:
        error = ErrorInfo.model_validate_json(check.last_error) if check.last_error else None
        data = RevocationUnconfirmed(
            certificate_id=check.certificate_id, serial=check.serial, request_id=check.request_id,
            connector=check.connector, reason=RevocationReason(check.reason), cause=cause,
            distribution_point=check.distribution_point, crl_number=check.crl_number,
            crl_this_update=check.crl_this_update,
            listed_reason=check.listed_reason if cause is UnconfirmedCause.REASON_MISMATCH else None,
            error=error, checks=check.checks, deadline=check.deadline_at, given_up_at=now)
        if await self._settle(check, data, CheckState.UNCONFIRMED, now, checks=check.checks, last_cause=cause.value,
                              last_error=check.last_error, crl_number=check.crl_number,
                              crl_this_update=check.crl_this_update, listed_reason=check.listed_reason):
            self._metrics.unconfirmed.labels(check.connector, cause.value).inc()
            log.error("revocation of %s serial %s NOT confirmed on the CA's CRL by %s: %s%s", check.certificate_id,
                      check.serial, check.deadline_at.isoformat(), cause.value,
                      f" ({error.code}: {error.message})" if error else "")

    async def _settle(self, check: Check, data: Message, outcome: CheckState, now: datetime, **values: Any) -> bool:
        event = make_event(data, id=message_id(check.check_id, data.TYPE), source=self._event_source, time=now,
                           subject=check.certificate_id, correlationid=check.correlation_id, causationid=check.check_id)
        records = [StoredRecord.of(Outbound(self._topics.topic_of(type(data)), event, key=check.certificate_id))]
        if not await asyncio.to_thread(store.settle, self._engine, check.check_id, outcome, records, now, **values):
            return False  # settled meanwhile by another instance (a rebalance): it publishes its own
        await self._publish(records)
        await asyncio.to_thread(store.mark_published, self._engine, [check.check_id], self._clock())
        return True


def _with(check: Check, **values: Any) -> Check:
    fields = {**check.__dict__, **values}
    return Check(**fields)

