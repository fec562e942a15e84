"""The renewal scheduler: RenewalDue when a certificate reaches its renewal time,
CertificateExpiring at the expiry thresholds. Every gateway runs one; a lease
in the database (services/gateway/leases.py) makes exactly one of them active.

One tick (``Scheduler.tick``), with the time ``now`` from the injected clock:

1. take or renew the lease; a scheduler that does not hold it does nothing else;
2. read a snapshot (one read transaction): the active, unexpired certificates
   of the gateway's projection of issued serials (services/gateway/issued.py,
   folded from events.issuer; with the gateway's record of each certificate),
   the provisioning profiles, the notices already recorded for their current
   serials, the RenewalDue notices of the last minute per connector (the rate
   window), and the notices recorded but not yet acknowledged by Kafka;
3. decide (pure functions, ``plan_tick``): a certificate is due at
   ``renewal_at()`` = its profile's ``renewal.renewal_time()`` minus a
   deterministic jitter; due certificates without a RenewalDue notice for their
   serial are taken oldest-due first, at most
   ``max_renewals_per_connector_per_minute`` per connector in any sliding
   minute (the rest wait for later ticks); a certificate that crossed expiry
   thresholds gets one CertificateExpiring for the tightest threshold crossed
   (when several are crossed at once, e.g. after an outage or for a short-lived
   certificate, only the tightest is sent and the looser ones are never sent
   later: they would be stale);
4. record (one write transaction that also re-checks the lease): each new
   notice is inserted into ``gateway_notices`` *pending* (``INSERT ... ON
   CONFLICT DO NOTHING``; only the rows actually inserted are published, so two
   schedulers can never both send one), its ``event_id`` prefixed ``pending:``;
5. publish the new notices and the earlier pending ones, then mark them sent
   (strip the prefix).

Publish failures: the notice is left pending and re-published by the next tick
of whichever scheduler holds the lease -- also after a crash between recording
and publishing. The event id is deterministic (RenewalDue: ``renewal_due_id``
of the certificate and serial it replaces; CertificateExpiring:
``certificate_expiring_id`` of the certificate, serial and threshold) and the
event time is the recorded ``sent_at``, so a re-publication is a byte-identical
redelivery of the same event (at-least-once, like every certrail message),
never a second RenewalDue for the serial, and no decided notice is lost. A
pending notice whose certificate was meanwhile renewed (other serial) or is no
longer active is dropped (deleted, logged).

The database work runs in a worker thread (``asyncio.to_thread``), so a tick
never blocks the gateway's event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import Engine, and_, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.common.consumer import Clock, Outbound
from services.common.contracts.envelope import make_event
from services.common.contracts.events import CertificateExpiring, RenewalDue
from services.common.contracts.fields import KeyGeneration
from services.common.contracts.identity import message_id, normalise_serial, renewal_due_id
from services.common.contracts.topics import Topics
from services.common.db import read_session, write_session
from services.common.db_schema import GatewayCertificate, GatewayIssuedSerial, GatewayNotice, GatewayProfile
from services.gateway.leases import acquire_lease, release_lease
from services.gateway.policy.profile import ProvisioningProfile, RenewalPolicy

__all__ = [
    "EXPIRY_BUCKETS",
    "PENDING_PREFIX",
    "RENEWAL_DUE",
    "SOURCE",
    "Plan",
    "PlannedNotice",
    "Publish",
    "Scheduler",
    "SchedulerMetrics",
    "SchedulerSettings",
    "Snapshot",
    "StoredNotice",
    "TickResult",
    "WatchedCertificate",
    "certificate_expiring_id",
    "default_holder",
    "expiring_kind",
    "expiry_bucket",
    "jitter_unit",
    "jitter_window",
    "load_snapshot",
    "plan_tick",
    "renewal_at",
    "tightest_threshold",
]

log = logging.getLogger(__name__)

SOURCE = "/certrail/gateway/scheduler"
RENEWAL_DUE = "renewal_due"
#: ``event_id`` prefix of a notice recorded but not yet acknowledged by Kafka
PENDING_PREFIX = "pending:"
#: how long a recorded notice may wait for its publish before another tick re-publishes it
PENDING_GRACE = timedelta(seconds=10)
RATE_WINDOW = timedelta(minutes=1)
#: (upper bound in days, label) of the days-to-expiry gauge; the last bucket is open
EXPIRY_BUCKETS: tuple[tuple[int | None, str], ...] = (
    (1, "lt_1d"), (7, "1d_7d"), (14, "7d_14d"), (30, "14d_30d"), (60, "30d_60d"), (90, "60d_90d"), (None, "ge_90d"),
)
#: why an active certificate cannot be scheduled for renewal (a bounded label set)
UNSCHEDULABLE_REASONS = ("no_profile", "unknown_profile", "no_connector", "invalid")

Publish = Callable[[Sequence[Outbound]], Awaitable[None]]


class SchedulerSettings(BaseModel):
    """The renewal scheduler's settings (embedded in the gateway's settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    interval_s: float = Field(default=30.0, gt=0, le=3600, description="seconds between ticks")
    lease_ttl_s: float = Field(
        default=90.0, gt=0, le=86400, description="how long a lease lasts unrenewed: the takeover delay after a crash"
    )
    lease_name: str = Field(default="renewal-scheduler", min_length=1, max_length=64)
    jitter_fraction: float = Field(default=0.1, ge=0, lt=1, description="jitter window as a fraction of the lifetime")
    jitter_max: timedelta = Field(default=timedelta(hours=24), description="upper bound of the jitter window")
    expiry_thresholds_days: list[int] = Field(default_factory=lambda: [30, 14, 7], max_length=20)
    max_renewals_per_connector_per_minute: int = Field(default=60, ge=1, le=1_000_000)
    max_expiry_notices_per_tick: int = Field(default=1000, ge=1, le=1_000_000)

    @field_validator("expiry_thresholds_days")
    @classmethod
    def _thresholds(cls, values: list[int]) -> list[int]:
        for value in values:
            if not 1 <= value <= 3650:
                raise ValueError(f"expiry threshold {value} must be between 1 and 3650 days")
        if len(set(values)) != len(values):
            raise ValueError("expiry thresholds must be distinct")
        return sorted(values, reverse=True)

    @field_validator("jitter_max")
    @classmethod
    def _jitter_max(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("jitter_max must not be negative")
        return value

    @model_validator(mode="after")
    def _lease_outlives_interval(self) -> SchedulerSettings:
        if self.lease_ttl_s <= self.interval_s:
            raise ValueError(
                f"lease_ttl_s ({self.lease_ttl_s}) must exceed interval_s ({self.interval_s}),"
                " or the lease lapses between two ticks of its holder"
            )
        return self


# -- pure decisions -------------------------------------------------------------------------------


def expiring_kind(threshold_days: int) -> str:
    return f"expiring:{threshold_days}"


def certificate_expiring_id(certificate_id: str, serial: str, threshold_days: int) -> str:
    """CertificateExpiring's id: one per certificate, serial and threshold (like ``renewal_due_id``)."""
    cause = json.dumps([certificate_id, normalise_serial(serial)], separators=(",", ":"), ensure_ascii=False)
    return message_id(cause, "certificate-expiring", str(threshold_days))


def jitter_unit(certificate_id: str, serial: str) -> float:
    """A number in [0, 1) derived from the certificate and serial (SHA-256): the same
    certificate and serial always get the same value, different ones spread evenly."""
    material = json.dumps([certificate_id, normalise_serial(serial)], separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(material.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def jitter_window(not_before: datetime, not_after: datetime, settings: SchedulerSettings) -> timedelta:
    """How far before its policy time a certificate may be scheduled: a fraction of its lifetime, capped."""
    return min((not_after - not_before) * settings.jitter_fraction, settings.jitter_max)


def renewal_at(
    policy: RenewalPolicy,
    certificate_id: str,
    serial: str,
    not_before: datetime,
    not_after: datetime,
    settings: SchedulerSettings,
) -> datetime:
    """When a certificate is due: the policy's ``renewal_time`` moved *earlier* by its jitter
    (never later, so the policy's margin before expiry always holds), never before ``not_before``."""
    base = policy.renewal_time(not_before, not_after)
    shift = jitter_window(not_before, not_after, settings) * jitter_unit(certificate_id, serial)
    return max(not_before, base - shift)


def tightest_threshold(not_after: datetime, now: datetime, thresholds_days: Iterable[int]) -> int | None:
    """The smallest threshold (days) already crossed at ``now``, or None."""
    remaining = not_after - now
    crossed = [days for days in thresholds_days if remaining <= timedelta(days=days)]
    return min(crossed) if crossed else None


_BUCKET_BOUNDS = [(timedelta(days=bound) if bound is not None else None, label) for bound, label in EXPIRY_BUCKETS]


def expiry_bucket(not_after: datetime, now: datetime) -> str:
    remaining = not_after - now
    for bound, label in _BUCKET_BOUNDS:
        if bound is None or remaining < bound:
            return label
    raise AssertionError("unreachable: the last bucket is open")


# -- the snapshot and the plan ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatchedCertificate:
    """An active certificate: its current serial's values, profile and connector overridden by the gateway's
    record of the certificate (``gateway_certificates``), the requester only from there."""

    certificate_id: str
    serial: str
    not_before: datetime
    not_after: datetime
    profile: str | None
    connector: str | None
    requester: str | None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoredNotice:
    certificate_id: str
    serial: str
    kind: str
    event_id: str  # as stored (pending ones carry PENDING_PREFIX)
    sent_at: datetime

    @property
    def pending(self) -> bool:
        return self.event_id.startswith(PENDING_PREFIX)


@dataclass(frozen=True, slots=True)
class Snapshot:
    certificates: list[WatchedCertificate]
    profiles: dict[str, ProvisioningProfile]
    sent: set[tuple[str, str, str]]  # (certificate_id, serial, kind) recorded for current serials
    recent_renewals: dict[str, int]  # connector -> RenewalDue notices recorded within RATE_WINDOW
    pending: list[tuple[StoredNotice, WatchedCertificate | None]]  # None: no longer active with that serial


@dataclass(frozen=True, slots=True)
class PlannedNotice:
    certificate_id: str
    serial: str
    kind: str
    outbound: Outbound
    connector: str | None = None
    threshold_days: int | None = None

    @property
    def event_id(self) -> str:
        return self.outbound.event.id


@dataclass(frozen=True, slots=True)
class Plan:
    renewals: list[PlannedNotice] = field(default_factory=list)
    expiring: list[PlannedNotice] = field(default_factory=list)
    retries: list[PlannedNotice] = field(default_factory=list)  # pending notices re-published
    dropped: list[StoredNotice] = field(default_factory=list)  # pending notices that became moot
    waiting: dict[str, int] = field(default_factory=dict)  # connector -> due renewals held back
    unschedulable: dict[str, int] = field(default_factory=dict)  # reason -> certificates
    buckets: dict[str, int] = field(default_factory=dict)  # expiry bucket -> certificates


@dataclass(frozen=True, slots=True)
class _Renewable:
    profile: str
    connector: str
    key_generation: KeyGeneration
    policy: RenewalPolicy


def _resolve(cert: WatchedCertificate, profiles: dict[str, ProvisioningProfile]) -> _Renewable | str:
    """What a RenewalDue needs (profile, connector, key generation, policy), or why it cannot be had."""
    if cert.profile is None:
        return "no_profile"
    spec = profiles.get(cert.profile)
    if spec is None:
        return "unknown_profile"
    connector = cert.connector or spec.connector
    if not connector:
        return "no_connector"
    return _Renewable(cert.profile, connector, spec.key_generation, spec.renewal)


def _renewal_due(
    cert: WatchedCertificate, what: _Renewable, settings: SchedulerSettings, topics: Topics, sent_at: datetime
) -> PlannedNotice:
    """The RenewalDue notice -- raises ValueError/ValidationError on data the contracts refuse."""
    due = renewal_at(what.policy, cert.certificate_id, cert.serial, cert.not_before, cert.not_after, settings)
    data = RenewalDue(
        certificate_id=cert.certificate_id,
        serial=cert.serial,
        profile=what.profile,
        connector=what.connector,
        key_generation=what.key_generation,
        renew_at=due,
        not_after=cert.not_after,
        requester=cert.requester,
    )
    event = make_event(
        data, id=renewal_due_id(cert.certificate_id, cert.serial), source=SOURCE, time=sent_at,
        subject=cert.certificate_id, correlationid=cert.request_id,
    )
    outbound = Outbound(topic=topics.topic_of(RenewalDue), event=event, key=cert.certificate_id)
    return PlannedNotice(cert.certificate_id, cert.serial, RENEWAL_DUE, outbound, connector=what.connector)


def _expiring(
    cert: WatchedCertificate, days: int, profiles: dict[str, ProvisioningProfile], topics: Topics, sent_at: datetime
) -> PlannedNotice:
    spec = profiles.get(cert.profile) if cert.profile else None
    connector = cert.connector or (spec.connector if spec else None)
    data = CertificateExpiring(
        certificate_id=cert.certificate_id, serial=cert.serial, not_after=cert.not_after, threshold_days=days,
        profile=cert.profile, connector=connector,
    )
    event = make_event(
        data, id=certificate_expiring_id(cert.certificate_id, cert.serial, days), source=SOURCE, time=sent_at,
        subject=cert.certificate_id, correlationid=cert.request_id,
    )
    outbound = Outbound(topic=topics.topic_of(CertificateExpiring), event=event, key=cert.certificate_id)
    return PlannedNotice(cert.certificate_id, cert.serial, expiring_kind(days), outbound, connector, threshold_days=days)


def plan_tick(snapshot: Snapshot, now: datetime, settings: SchedulerSettings, topics: Topics) -> Plan:
    """What one tick publishes: new RenewalDue (rate-limited per connector, oldest-due first) and
    CertificateExpiring notices, and the re-publication of pending ones. New notices carry ``now``
    as their event time (it becomes ``sent_at``)."""
    # A tick looks at every active certificate: the cheap tests come first, and messages are
    # built only for the notices this tick sends.
    buckets = dict.fromkeys((label for _, label in EXPIRY_BUCKETS), 0)
    unschedulable: Counter[str] = Counter()
    due: list[tuple[datetime, str, WatchedCertificate, _Renewable]] = []
    expiring: list[tuple[datetime, str, WatchedCertificate, int]] = []
    for cert in snapshot.certificates:
        buckets[expiry_bucket(cert.not_after, now)] += 1
        days = tightest_threshold(cert.not_after, now, settings.expiry_thresholds_days)
        if days is not None and (cert.certificate_id, cert.serial, expiring_kind(days)) not in snapshot.sent:
            expiring.append((cert.not_after, cert.certificate_id, cert, days))
        what = _resolve(cert, snapshot.profiles)
        if isinstance(what, str):
            unschedulable[what] += 1
            continue
        if (cert.certificate_id, cert.serial, RENEWAL_DUE) in snapshot.sent:
            continue
        try:
            earliest = what.policy.renewal_time(cert.not_before, cert.not_after) - jitter_window(
                cert.not_before, cert.not_after, settings
            )
            if earliest > now:
                continue  # not due whatever its jitter: skip the hash
            at = renewal_at(what.policy, cert.certificate_id, cert.serial, cert.not_before, cert.not_after, settings)
        except ValueError as exc:
            unschedulable["invalid"] += 1
            log.warning("certificate %s: cannot schedule its renewal: %s", cert.certificate_id, exc)
            continue
        if at <= now:
            due.append((at, cert.certificate_id, cert, what))

    due.sort(key=lambda item: (item[0], item[1]))  # oldest due first
    budget: dict[str, int] = {}
    renewals: list[PlannedNotice] = []
    waiting: Counter[str] = Counter()
    limit = settings.max_renewals_per_connector_per_minute
    for _, _, cert, what in due:
        left = budget.setdefault(what.connector, max(0, limit - snapshot.recent_renewals.get(what.connector, 0)))
        if left == 0:
            waiting[what.connector] += 1
            continue
        try:
            renewals.append(_renewal_due(cert, what, settings, topics, now))
        except (ValueError, ValidationError) as exc:
            unschedulable["invalid"] += 1
            log.warning("certificate %s: cannot build RenewalDue: %s", cert.certificate_id, exc)
            continue
        budget[what.connector] = left - 1

    expiring.sort(key=lambda item: (item[0], item[1]))  # soonest expiry first when capped (e.g. the first run)
    expiry_notices: list[PlannedNotice] = []
    for _, _, cert, days in expiring:
        if len(expiry_notices) >= settings.max_expiry_notices_per_tick:
            break
        try:
            expiry_notices.append(_expiring(cert, days, snapshot.profiles, topics, now))
        except (ValueError, ValidationError) as exc:
            log.warning("certificate %s: cannot build CertificateExpiring: %s", cert.certificate_id, exc)

    retries, dropped = _plan_retries(snapshot, settings, topics)
    return Plan(
        renewals=renewals,
        expiring=expiry_notices,
        retries=retries,
        dropped=dropped,
        waiting=dict(waiting),
        unschedulable=dict(unschedulable),
        buckets=buckets,
    )


def _plan_retries(
    snapshot: Snapshot, settings: SchedulerSettings, topics: Topics
) -> tuple[list[PlannedNotice], list[StoredNotice]]:
    """Rebuild each pending notice (same id, its recorded time); drop those that became moot."""
    retries: list[PlannedNotice] = []
    dropped: list[StoredNotice] = []
    for stored, cert in snapshot.pending:
        notice: PlannedNotice | None = None
        if cert is not None:
            try:
                if stored.kind == RENEWAL_DUE:
                    what = _resolve(cert, snapshot.profiles)
                    if not isinstance(what, str):
                        notice = _renewal_due(cert, what, settings, topics, stored.sent_at)
                elif stored.kind.startswith("expiring:"):
                    days = int(stored.kind.removeprefix("expiring:"))
                    notice = _expiring(cert, days, snapshot.profiles, topics, stored.sent_at)
            except (ValueError, ValidationError) as exc:
                log.warning("pending notice %s of %s cannot be rebuilt: %s", stored.kind, stored.certificate_id, exc)
        if notice is None or PENDING_PREFIX + notice.event_id != stored.event_id:
            log.warning(
                "dropping pending notice %s of certificate %s serial %s: the certificate was renewed, is no"
                " longer active, or its notice can no longer be built", stored.kind, stored.certificate_id, stored.serial,
            )
            dropped.append(stored)
        else:
            retries.append(notice)
    return retries, dropped


# -- metrics ----------------------------------------------------------------------------------------

TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SchedulerMetrics:
    """``certrail_gateway_scheduler_*``; labels bounded (connectors come from the registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.renewals = PromCounter(
            "certrail_gateway_renewals_due_published_total", "RenewalDue events published (first time), by connector.",
            ["connector"], registry=registry,
        )
        self.expiring = PromCounter(
            "certrail_gateway_expiry_notices_published_total",
            "CertificateExpiring events published (first time), by threshold in days.",
            ["threshold_days"], registry=registry,
        )
        self.republished = PromCounter(
            "certrail_gateway_scheduler_notices_republished_total",
            "Notices re-published after a failed or interrupted publication (same id and bytes).", registry=registry,
        )
        self.dropped = PromCounter(
            "certrail_gateway_scheduler_pending_notices_dropped_total",
            "Pending notices dropped because their certificate was renewed or is no longer active.", registry=registry,
        )
        self.publish_failures = PromCounter(
            "certrail_gateway_scheduler_publish_failures_total", "Ticks whose publication failed (retried next tick).",
            registry=registry,
        )
        self.waiting = Gauge(
            "certrail_gateway_renewals_waiting",
            "Certificates due for renewal held back by the per-connector rate limit at the last tick.",
            ["connector"], registry=registry,
        )
        self.unschedulable = Gauge(
            "certrail_gateway_scheduler_unschedulable_certificates",
            "Active certificates whose renewal cannot be scheduled, by reason.", ["reason"], registry=registry,
        )
        self.leader = Gauge(
            "certrail_gateway_scheduler_leader", "1 while this gateway's scheduler holds the lease.", registry=registry,
        )
        self.by_expiry = Gauge(
            "certrail_gateway_certificates_by_days_to_expiry",
            "Active certificates by time left until not_after (set by the active scheduler; 0 elsewhere).",
            ["bucket"], registry=registry,
        )
        self.ticks = PromCounter(
            "certrail_gateway_scheduler_ticks_total", "Scheduler ticks, by outcome (leader, follower, error).",
            ["outcome"], registry=registry,
        )
        self.tick_duration = Histogram(
            "certrail_gateway_scheduler_tick_duration_seconds", "Duration of one scheduler tick.",
            buckets=TICK_BUCKETS, registry=registry,
        )
        for _, label in EXPIRY_BUCKETS:
            self.by_expiry.labels(label).set(0)
        for reason in UNSCHEDULABLE_REASONS:
            self.unschedulable.labels(reason).set(0)

    def set_leader(self, leader: bool) -> None:
        self.leader.set(1 if leader else 0)
        if not leader:
            for _, label in EXPIRY_BUCKETS:
                self.by_expiry.labels(label).set(0)
            self.waiting.clear()

    def planned(self, plan: Plan) -> None:
        for label, count in plan.buckets.items():
            self.by_expiry.labels(label).set(count)
        for reason in UNSCHEDULABLE_REASONS:
            self.unschedulable.labels(reason).set(plan.unschedulable.get(reason, 0))
        self.waiting.clear()
        for connector, count in plan.waiting.items():
            self.waiting.labels(connector).set(count)


# -- the scheduler ----------------------------------------------------------------------------------


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
        self._stopping = asyncio.Event()

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
        """Give the lease up (so another gateway takes over at once instead of after the TTL)."""
        if not self._leader:
            return
        self._set_leader(False)
        try:
            await asyncio.to_thread(self._release)
        except Exception:  # noqa: BLE001 - the lease then simply expires after its TTL
            log.warning("could not release the scheduler lease; it expires by itself", exc_info=True)

    # -- one tick --

    async def _tick(self, now: datetime) -> TickResult:
        leader = await asyncio.to_thread(self._acquire, now)
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
            return load_snapshot(session, now)

    def _claim(
        self, now: datetime, notices: Sequence[PlannedNotice], dropped: Sequence[StoredNotice]
    ) -> list[PlannedNotice] | None:
        """Record the new notices pending (only those nobody recorded first) under a renewed lease."""
        with write_session(self._engine) as session:
            if not acquire_lease(session, self._settings.lease_name, self.holder, now=now, ttl=self._ttl):
                return None
            table = GatewayNotice.__table__
            for stored in dropped:
                session.execute(delete(table).where(*_notice_key(stored), table.c.event_id == stored.event_id))
            return _insert_pending(session, notices, now)

    def _mark_sent(self, notices: Sequence[PlannedNotice]) -> None:
        """Strip the pending prefix (one executemany); a row changed meanwhile is left alone."""
        table = GatewayNotice.__table__
        statement = (
            update(table)
            .where(
                table.c.certificate_id == bindparam("b_certificate_id"),
                table.c.serial == bindparam("b_serial"),
                table.c.kind == bindparam("b_kind"),
                table.c.event_id == bindparam("b_pending"),
            )
            .values(event_id=bindparam("b_event_id"))
        )
        rows = [
            {
                "b_certificate_id": notice.certificate_id,
                "b_serial": notice.serial,
                "b_kind": notice.kind,
                "b_pending": PENDING_PREFIX + notice.event_id,
                "b_event_id": notice.event_id,
            }
            for notice in notices
        ]
        with write_session(self._engine) as session:
            session.connection().execute(statement, rows)


def _notice_key(notice: PlannedNotice | StoredNotice) -> tuple[Any, ...]:
    table = GatewayNotice.__table__
    return (
        table.c.certificate_id == notice.certificate_id,
        table.c.serial == notice.serial,
        table.c.kind == notice.kind,
    )


def _insert_pending(session: Session, notices: Sequence[PlannedNotice], now: datetime) -> list[PlannedNotice]:
    """INSERT ... ON CONFLICT DO NOTHING for every notice, in one executemany (SQLAlchemy's
    "insertmanyvalues"); returns the notices this call inserted, read from RETURNING (psycopg
    reports no rowcount here, and a conflicting row returns nothing)."""
    if not notices:
        return []
    table = GatewayNotice.__table__
    dialect = session.get_bind().dialect.name
    keys = [table.c.certificate_id, table.c.serial, table.c.kind]
    if dialect == "postgresql":
        statement: Any = postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)
    elif dialect == "sqlite":
        statement = sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)
    else:
        raise NotImplementedError(f"scheduler: unsupported database {dialect!r}")
    rows = [
        {
            "certificate_id": notice.certificate_id,
            "serial": notice.serial,
            "kind": notice.kind,
            "event_id": PENDING_PREFIX + notice.event_id,
            "sent_at": now,
        }
        for notice in notices
    ]
    inserted = {tuple(row) for row in session.connection().execute(statement.returning(*keys), rows)}
    return [notice for notice in notices if (notice.certificate_id, notice.serial, notice.kind) in inserted]


def load_snapshot(session: Session, now: datetime) -> Snapshot:
    """What a tick decides on, read in one transaction. A certificate's current serial is its one
    active row of ``gateway_issued_serials`` (services/gateway/issued.py keeps at most one)."""
    s = GatewayIssuedSerial
    gc = GatewayCertificate
    n = GatewayNotice
    columns = (
        s.certificate_id, s.serial, s.not_before, s.not_after, s.status,
        func.coalesce(gc.profile, s.profile), func.coalesce(gc.connector, s.connector), gc.requester, s.request_id,
    )
    active = and_(s.status == "active", s.not_before.is_not(None), s.not_after > now)
    rows = session.execute(
        select(*columns).outerjoin(gc, gc.certificate_id == s.certificate_id).where(active).order_by(s.certificate_id)
    )
    certificates = [_watched(row) for row in rows]

    profiles: dict[str, ProvisioningProfile] = {}
    for name, spec in session.execute(select(GatewayProfile.name, GatewayProfile.spec)):
        try:
            profiles[name] = ProvisioningProfile.model_validate_json(spec)
        except ValidationError as exc:
            log.error("provisioning profile %r is stored invalid; its certificates are not scheduled: %s", name, exc)

    of_notice = and_(s.certificate_id == n.certificate_id, s.serial == n.serial)
    sent = {
        (cid, serial, kind)
        for cid, serial, kind in session.execute(select(n.certificate_id, n.serial, n.kind).join(s, of_notice).where(active))
    }

    connector = func.coalesce(gc.connector, s.connector)
    recent = {
        name: count
        for name, count in session.execute(
            select(connector, func.count())
            .select_from(n)
            .outerjoin(gc, gc.certificate_id == n.certificate_id)
            .outerjoin(s, of_notice)
            .where(n.kind == RENEWAL_DUE, n.sent_at > now - RATE_WINDOW)
            .group_by(connector)
        )
        if name is not None
    }

    pending: list[tuple[StoredNotice, WatchedCertificate | None]] = []
    pending_rows = session.execute(
        select(n.certificate_id, n.serial, n.kind, n.event_id, n.sent_at, *columns)
        .outerjoin(s, of_notice)
        .outerjoin(gc, gc.certificate_id == n.certificate_id)
        # a notice is re-published only once it has been pending a while: a younger one may be in
        # flight in another gateway (its publish not yet acknowledged)
        .where(n.event_id.like(PENDING_PREFIX + "%"), n.sent_at <= now - PENDING_GRACE)
        .order_by(n.sent_at, n.certificate_id, n.kind)
    )
    for row in pending_rows:
        stored = StoredNotice(*row[:5])
        cert_row = row[5:]
        current = cert_row[0] is not None and cert_row[4] == "active" and cert_row[1] == stored.serial
        pending.append((stored, _watched(cert_row) if current and cert_row[2] is not None else None))
    return Snapshot(certificates, profiles, sent, recent, pending)


def _watched(row: Sequence[Any]) -> WatchedCertificate:
    certificate_id, serial, not_before, not_after, _status, profile, connector, requester, request_id = row
    return WatchedCertificate(
        certificate_id=certificate_id, serial=serial, not_before=not_before, not_after=not_after,
        profile=profile, connector=connector, requester=requester, request_id=request_id,
    )
