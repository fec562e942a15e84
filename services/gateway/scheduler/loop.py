"""The scheduler of one gateway instance: the lease, the tick (load, plan, claim, publish, mark
sent) and the loop. The database work runs in a worker thread, so a tick never blocks the
gateway's event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from services.common.consumer import Clock, Outbound
from services.common.contracts.topics import Topics
from services.common.db import read_session, write_session
from services.gateway.leases import acquire_lease, release_lease
from services.gateway.scheduler import store
from services.gateway.scheduler.metrics import SchedulerMetrics
from services.gateway.scheduler.plan import PlannedNotice, Snapshot, StoredNotice, plan_tick
from services.gateway.scheduler.policy import RENEWAL_DUE
from services.gateway.scheduler.settings import SchedulerSettings

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Outbound]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TickResult:
    leader: bool
    renewals_due: int = 0  # new RenewalDue published
    expiring: int = 0  # new CertificateExpiring published
    republished: int = 0  # pending notices published again
    waiting: int = 0  # due renewals held back by the rate limit


def default_holder() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Scheduler:
    """The renewal scheduler of one gateway instance. ``tick()`` does one round;
    ``run_forever()`` ticks every interval until ``stop()``, then releases the lease."""

    def __init__(
        self,
        engine: Engine,
        topics: Topics,
        publish: Publish,
        clock: Clock,
        settings: SchedulerSettings,
        *,
        registry: CollectorRegistry | None = None,
        holder: str | None = None,
    ) -> None:
        self._engine = engine
        self._topics = topics
        self._publish = publish
        self._clock = clock
        self._settings = settings
        self._ttl = timedelta(seconds=settings.lease_ttl_s)
        self.holder = holder or default_holder()
        self.metrics = SchedulerMetrics(registry if registry is not None else CollectorRegistry())
        self._leader = False
        self._may_hold_lease = False  # after a failed tick: released at stop all the same
        self._stopping = asyncio.Event()
        self._next_prune = 0.0  # time.monotonic() of the next prune (the first leader tick prunes)

    @property
    def is_leader(self) -> bool:
        """Whether the last tick held the lease."""
        return self._leader

    async def tick(self) -> TickResult:
        """One round. Raises what went wrong (database, publication); nothing recorded is lost."""
        started = time.perf_counter()
        try:
            result = await self._tick(self._clock())
        except Exception:
            self.metrics.ticks.labels("error").inc()
            # not doing its work, whatever the lease says: reported as not leading (the lease lapses by itself if
            # this goes on, and CertrailRenewalSchedulerNotRunning fires when no scheduler does its work)
            self._may_hold_lease = self._may_hold_lease or self._leader
            self._set_leader(False)
            raise
        finally:
            self.metrics.tick_duration.observe(time.perf_counter() - started)
        self.metrics.ticks.labels("leader" if result.leader else "follower").inc()
        return result

    async def run_forever(self, interval_s: float | None = None) -> None:
        """Tick every ``interval_s`` (default: the settings') until ``stop()``; a failing tick is
        logged and the loop goes on. Releases the lease when it ends."""
        interval = self._settings.interval_s if interval_s is None else interval_s
        try:
            while not self._stopping.is_set():
                try:
                    await self.tick()
                except Exception:  # noqa: BLE001 - the scheduler must keep running; the next tick retries
                    log.exception("renewal scheduler tick failed; retrying in %.1f s", interval)
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=interval)
                except TimeoutError:
                    pass
        finally:
            await self.release()

    def stop(self) -> None:
        self._stopping.set()

    async def release(self) -> None:
        """Give the lease up (so another gateway takes over at once instead of after the TTL). Also after a failed
        tick, which reports this scheduler as not leading while it may still hold the lease."""
        if not (self._leader or self._may_hold_lease):
            return
        self._set_leader(False)
        self._may_hold_lease = False
        try:
            await asyncio.to_thread(self._release)
        except Exception:  # noqa: BLE001 - the lease then simply expires after its TTL
            log.warning("could not release the scheduler lease; it expires by itself", exc_info=True)

    # -- one tick --

    async def _tick(self, now: datetime) -> TickResult:
        leader = await asyncio.to_thread(self._acquire, now)
        self._may_hold_lease = False  # the database just said
        self._set_leader(leader)
        if not leader:
            return TickResult(leader=False)
        snapshot = await asyncio.to_thread(self._load, now)
        plan = plan_tick(snapshot, now, self._settings, self._topics)
        self.metrics.planned(plan)
        new = await asyncio.to_thread(self._claim, now, plan.renewals + plan.expiring, plan.dropped)
        if new is None:  # the lease was taken over while we read: the new holder decides
            self._set_leader(False)
            return TickResult(leader=False)
        self.metrics.dropped.inc(len(plan.dropped))
        outgoing = plan.retries + new
        if outgoing:
            try:
                await self._publish([notice.outbound for notice in outgoing])
            except Exception:
                self.metrics.publish_failures.inc()
                raise  # the notices stay pending: the next tick publishes them again
            await asyncio.to_thread(self._mark_sent, outgoing)
        renewals = [n for n in new if n.kind == RENEWAL_DUE]
        for notice in renewals:
            self.metrics.renewals.labels(notice.connector or "").inc()
        for notice in new:
            if notice.threshold_days is not None:
                self.metrics.expiring.labels(str(notice.threshold_days)).inc()
        self.metrics.republished.inc(len(plan.retries))
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + self._settings.prune_interval_s
            pruned = await asyncio.to_thread(self._prune, now)
            self.metrics.pruned.inc(pruned)
        return TickResult(
            leader=True,
            renewals_due=len(renewals),
            expiring=len(new) - len(renewals),
            republished=len(plan.retries),
            waiting=sum(plan.waiting.values()),
        )

    def _set_leader(self, leader: bool) -> None:
        if leader != self._leader:
            log.info("renewal scheduler %s %s the lease", self.holder, "holds" if leader else "does not hold")
        self._leader = leader
        self.metrics.set_leader(leader)

    # -- database work (worker thread) --

    def _acquire(self, now: datetime) -> bool:
        with write_session(self._engine) as session:
            return acquire_lease(session, self._settings.lease_name, self.holder, now=now, ttl=self._ttl)

    def _release(self) -> None:
        with write_session(self._engine) as session:
            release_lease(session, self._settings.lease_name, self.holder)

    def _load(self, now: datetime) -> Snapshot:
        with read_session(self._engine) as session:
            return store.load_snapshot(session, now)

    def _claim(
        self, now: datetime, notices: Sequence[PlannedNotice], dropped: Sequence[StoredNotice]
    ) -> list[PlannedNotice] | None:
        """Record the new notices pending (only those nobody recorded first) under a renewed lease."""
        with write_session(self._engine) as session:
            if not acquire_lease(session, self._settings.lease_name, self.holder, now=now, ttl=self._ttl):
                return None
            store.delete_dropped(session, dropped)
            return store.insert_pending(session, notices, now)

    def _prune(self, now: datetime) -> int:
        with write_session(self._engine) as session:
            pruned = store.prune_notices(session, now - self._settings.notice_retention)
        if pruned:
            log.info("renewal scheduler deleted %d notices of serials expired over %s ago", pruned,
                     self._settings.notice_retention)
        return pruned

    def _mark_sent(self, notices: Sequence[PlannedNotice]) -> None:
        with write_session(self._engine) as session:
            store.mark_sent(session, notices)
