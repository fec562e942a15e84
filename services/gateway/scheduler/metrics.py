"""The scheduler's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter

from services.gateway.scheduler.plan import Plan
from services.gateway.scheduler.policy import EXPIRY_BUCKETS, UNSCHEDULABLE_REASONS

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
        self.pruned = PromCounter(
            "certrail_gateway_scheduler_notices_pruned_total",
            "Sent notices deleted once their serial had expired longer ago than the retention.", registry=registry,
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
        self.overdue = Gauge(
            "certrail_gateway_renewals_overdue", "Current certificates not renewed an hour (or half the time left to "
            "expiry, if sooner) after their renewal time, asked or not (set by the active scheduler; 0 elsewhere).",
            ["connector"], registry=registry,
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
            self.overdue.clear()

    def planned(self, plan: Plan) -> None:
        for label, count in plan.buckets.items():
            self.by_expiry.labels(label).set(count)
        for reason in UNSCHEDULABLE_REASONS:
            self.unschedulable.labels(reason).set(plan.unschedulable.get(reason, 0))
        self.waiting.clear()
        for connector, count in plan.waiting.items():
            self.waiting.labels(connector).set(count)
        self.overdue.clear()
        for connector, count in plan.overdue.items():
            self.overdue.labels(connector).set(count)

