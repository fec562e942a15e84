"""Revocations made outside certrail (issue 20, decision 0030; docs/issuer.md "Revocations made outside certrail").

A background task of the issuer, beside the command loop (never in it). Per round, for each connector whose command
topic's partition 0 this instance holds (`watch_decision.owned_connectors`):

1. re-publish findings stored but not acknowledged (a crash in between);
2. when the connector's watch is due (``interval_s`` after its last good round, ``retry_s`` after a failed one; the
   time is stored, so a restart or a new owner keeps the schedule), add its newly issued serials to the watched
   ones (`watch_store.sync_issued`) and take the live ones (unexpired, not revoked by certrail);
3. read each distribution point they name ONCE, verify the CRL against the connector's pinned issuing CA
   (`crl_check.verify_crl`: the same rules as revocation confirmation), and find the live serials it lists;
4. each one certrail did not ask to revoke (checked again in the transaction that records it) becomes a
   RevokedOutOfBand, stored before it is published, once per serial (its id: the connector and serial).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from services.common.consumer import Outbound
from services.common.contracts.envelope import make_event
from services.common.contracts.identity import message_id
from services.common.contracts.revocation import RevokedOutOfBand
from services.common.contracts.topics import Topics
from services.common.emca.types import EmcaError
from services.issuer.revocation import watch_store
from services.issuer.revocation.crl_check import CrlUntrusted, VerifiedCrl, verify_crl
from services.issuer.revocation.source import CrlSource
from services.issuer.revocation.watch_decision import (
    Finding,
    LiveSerial,
    listed_entries,
    next_watch,
    out_of_band,
    watch_due,
)
from services.issuer.revocation.watch_metrics import WatchMetrics
from services.issuer.state import StoredRecord

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[StoredRecord]], Awaitable[Any]]


@dataclass(frozen=True)
class WatchSettings:
    interval_s: float = 3600.0  # one read of each distribution point per connector per interval
    retry_s: float = 300.0  # after a failed round
    idle_s: float = 5.0  # how often ownership and due watches are looked at


def out_of_band_id(connector: str, serial: str) -> str:
    """RevokedOutOfBand's id: one per connector (CA) and serial."""
    return message_id(f"revoked-out-of-band:{connector}:{serial}", RevokedOutOfBand.TYPE)


class CrlWatcher:
    def __init__(self, *, engine: Engine, source: CrlSource, publish: Publish, topics: Topics, metrics: WatchMetrics,
                 clock: Callable[[], datetime], settings: WatchSettings, owned: Callable[[], set[str]],
                 event_source: str) -> None:
        self._engine = engine
        self._source = source
        self._publish = publish
        self._topics = topics
        self._metrics = metrics
        self._clock = clock
        self._settings = settings
        self._owned = owned
        self._event_source = event_source

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # noqa: BLE001 - database or Kafka trouble: the next round tries again
                log.warning("the out-of-band revocation watch failed; trying again", exc_info=True)
            await asyncio.sleep(self._settings.idle_s)

    async def run_once(self) -> list[str]:
        """One round over the owned connectors; returns the serials found revoked out of band (published)."""
        owned = sorted(self._owned())
        for connector, serial, records in await asyncio.to_thread(watch_store.unpublished, self._engine, owned):
            await self._publish(records)
            await asyncio.to_thread(watch_store.mark_published, self._engine, connector, [serial], self._clock())
        rounds = await asyncio.to_thread(watch_store.rounds, self._engine)
        found: list[str] = []
        for connector in owned:
            self._metrics.known(connector)
            previous = rounds.get(connector)
            if watch_due(previous.next_at if previous else None, self._clock()):
                found += await self._watch(connector)
        self._metrics.report(await asyncio.to_thread(watch_store.rounds, self._engine), self._clock())
        return found

    async def _watch(self, connector: str) -> list[str]:
        now = self._clock()
        while await asyncio.to_thread(watch_store.sync_issued, self._engine, connector, now) == watch_store.SYNC_BATCH:
            pass  # a first round on a large installation: every issued serial, a batch at a time
        live, unchecked = await asyncio.to_thread(watch_store.live_serials, self._engine, connector, now)
        if unchecked:
            log.warning("CRL watch of %s: %d live certificates name no HTTP(S) CRL distribution point", connector, unchecked)
        groups: dict[str, list[LiveSerial]] = {}
        for serial in live:
            groups.setdefault(serial.distribution_point, []).append(serial)
        errors: list[str] = []
        numbers: list[str] = []
        found: list[str] = []
        pin = await self._source.pin(connector) if groups else None
        for url, serials in groups.items():
            if pin is None:
                errors.append(f"no connector named {connector!r}")
                break
            try:
                der = await self._source.fetch(connector, url)
                crl = await asyncio.to_thread(verify_crl, der, pin.chain_pem, pin.sha256)
            except EmcaError as exc:
                errors.append(f"{url}: {exc.code}: {exc.message}")
                continue
            except CrlUntrusted as exc:
                errors.append(f"{url}: {exc.message}")
                continue
            number = None if crl.number is None else str(crl.number)
            if number is not None:
                numbers.append(number)
            found += await self._found(connector, crl, serials, now)
        for error in errors:
            log.error("CRL watch of %s: %s", connector, error)
        ok = not errors
        self._metrics.rounds.labels(connector, "ok" if ok else "failed").inc()
        next_at = next_watch(now, ok=ok, interval_s=self._settings.interval_s, retry_s=self._settings.retry_s)
        await asyncio.to_thread(watch_store.record_round, self._engine, connector, now, next_at,
                                error="; ".join(errors) if errors else None, crl_number=max(numbers, key=int, default=None),
                                live=len(live))
        return found

    async def _found(self, connector: str, crl: VerifiedCrl, serials: list[LiveSerial], now: datetime) -> list[str]:
        listed = await asyncio.to_thread(listed_entries, crl, [s.serial for s in serials])
        findings = out_of_band(serials, listed, set())  # certrail's own revocations: left out in the transaction
        if not findings:
            return []
        number = None if crl.number is None else str(crl.number)
        staged = [(f, self._records(connector, f, number, now), number) for f in findings]
        marked = await asyncio.to_thread(watch_store.record_findings, self._engine, connector, staged, now)
        for finding, records, _ in staged:
            if finding.live.serial not in marked:
                continue
            await self._publish(records)
            self._metrics.out_of_band.labels(connector).inc()
            log.warning("certificate %s serial %s was revoked at the CA outside certrail (%s, %s)",
                        finding.live.certificate_id, finding.live.serial, finding.entry.reason,
                        finding.entry.revoked_at.isoformat())
        await asyncio.to_thread(watch_store.mark_published, self._engine, connector, marked, self._clock())
        return marked

    def _records(self, connector: str, finding: Finding, crl_number: str | None, now: datetime) -> tuple[StoredRecord, ...]:
        live, entry = finding.live, finding.entry
        data = RevokedOutOfBand(certificate_id=live.certificate_id, serial=live.serial, connector=connector,
                                reason=entry.reason, revoked_at_ca=entry.revoked_at, crl_number=crl_number,
                                distribution_point=live.distribution_point, detected_at=now)
        event = make_event(data, id=out_of_band_id(connector, live.serial), source=self._event_source, time=now,
                           subject=live.certificate_id, correlationid=live.request_id)
        return (StoredRecord.of(Outbound(self._topics.topic_of(RevokedOutOfBand), event, key=live.certificate_id)),)
