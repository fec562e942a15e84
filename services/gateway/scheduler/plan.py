"""One tick's decision (``plan_tick``), a pure function of a snapshot and the time: the new
RenewalDue notices (rate-limited per connector, oldest due first), the CertificateExpiring
notices, and the pending notices to publish again or drop."""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydantic import ValidationError

from services.common.consumer import Outbound
from services.common.contracts.envelope import make_event
from services.common.contracts.events import CertificateExpiring, RenewalDue
from services.common.contracts.fields import KeyGeneration
from services.common.contracts.identity import renewal_due_id
from services.common.contracts.topics import Topics
from services.gateway.policy.profile import ProvisioningProfile, RenewalPolicy
from services.gateway.scheduler.policy import (
    EXPIRY_BUCKETS,
    PENDING_PREFIX,
    RENEWAL_DUE,
    SOURCE,
    certificate_expiring_id,
    expiring_kind,
    expiry_bucket,
    jitter_window,
    renewal_at,
    tightest_threshold,
)
from services.gateway.scheduler.settings import SchedulerSettings

log = logging.getLogger(__name__)


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
    overdue: dict[str, int] = field(default_factory=dict)  # connector -> certificates not renewed long past due (`overdue`)


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


#: a renewal is overdue this long after the certificate's renewal time (or halfway to its expiry, if sooner)
OVERDUE_GRACE = timedelta(hours=1)


def overdue(policy: RenewalPolicy, not_before: datetime, not_after: datetime, now: datetime) -> bool:
    """Whether a certificate still current at ``now`` should have been renewed by then: its renewal time (before
    jitter, the latest it can be due) passed by more than OVERDUE_GRACE or half the time left from it to expiry."""
    due = policy.renewal_time(not_before, not_after)
    return now > due + min(OVERDUE_GRACE, (not_after - due) / 2)


def per_tick_allowance(settings: SchedulerSettings) -> int:
    """The minute's allowance spread over the ticks of a minute (at least one per tick), so that a storm is sent
    as an even stream rather than the whole minute's worth in the first tick and nothing in the next ones."""
    return max(1, math.ceil(settings.max_renewals_per_connector_per_minute * min(settings.interval_s, 60.0) / 60.0))


def plan_tick(snapshot: Snapshot, now: datetime, settings: SchedulerSettings, topics: Topics) -> Plan:
    """What one tick publishes: new RenewalDue (rate-limited per connector, oldest-due first) and
    CertificateExpiring notices, and the re-publication of pending ones. New notices carry ``now``
    as their event time (it becomes ``sent_at``)."""
    # A tick looks at every active certificate: the cheap tests come first, and messages are
    # built only for the notices this tick sends.
    buckets = dict.fromkeys((label for _, label in EXPIRY_BUCKETS), 0)
    unschedulable: Counter[str] = Counter()
    late: Counter[str] = Counter()
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
            try:
                if overdue(what.policy, cert.not_before, cert.not_after, now):  # asked, and still not renewed
                    late[what.connector] += 1
            except ValueError:
                pass  # counted as invalid below when it is not sent yet; a sent one was valid then
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
            if overdue(what.policy, cert.not_before, cert.not_after, now):  # not even asked yet (rate limit, outage)
                late[what.connector] += 1

    due.sort(key=lambda item: (item[0], item[1]))  # oldest due first
    budget: dict[str, int] = {}
    renewals: list[PlannedNotice] = []
    waiting: Counter[str] = Counter()
    limit = settings.max_renewals_per_connector_per_minute
    per_tick = per_tick_allowance(settings)
    for _, _, cert, what in due:
        left = budget.setdefault(
            what.connector, min(per_tick, max(0, limit - snapshot.recent_renewals.get(what.connector, 0))))
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
        overdue=dict(late),
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

