"""The scheduler's pure decisions: when a certificate is due (policy time minus a deterministic
jitter), which expiry threshold it crossed, its days-to-expiry bucket, and the notices' ids."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime, timedelta

from services.common.contracts.identity import message_id, normalise_serial
from services.gateway.policy.profile import RenewalPolicy
from services.gateway.scheduler.settings import SchedulerSettings

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

