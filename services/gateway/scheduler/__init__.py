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

The modules, one concern each: ``settings`` (SchedulerSettings), ``policy`` (the pure
decisions: due time with jitter, thresholds, buckets, notice ids), ``plan`` (``plan_tick``:
one tick's decision from a snapshot), ``store`` (the SQL: snapshot, pending, sent),
``metrics`` (Prometheus) and ``loop`` (the lease, the tick and ``run_forever``).
"""

from services.gateway.scheduler.loop import Publish, Scheduler, TickResult, default_holder
from services.gateway.scheduler.metrics import SchedulerMetrics
from services.gateway.scheduler.plan import Plan, PlannedNotice, Snapshot, StoredNotice, WatchedCertificate, plan_tick
from services.gateway.scheduler.policy import (
    EXPIRY_BUCKETS,
    PENDING_GRACE,
    PENDING_PREFIX,
    RENEWAL_DUE,
    SOURCE,
    certificate_expiring_id,
    expiring_kind,
    expiry_bucket,
    jitter_unit,
    jitter_window,
    renewal_at,
    tightest_threshold,
)
from services.gateway.scheduler.settings import SchedulerSettings
from services.gateway.scheduler.store import load_snapshot

__all__ = [
    "EXPIRY_BUCKETS",
    "PENDING_GRACE",
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
