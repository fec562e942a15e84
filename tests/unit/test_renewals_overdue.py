"""Renewals overdue (services/gateway/scheduler/plan.py, `overdue`; the gauge certrail_gateway_renewals_overdue and
the CertrailRenewalsOverdue alert): a current certificate past its renewal time by an hour, or by half the time left
to its expiry if sooner, whether its RenewalDue was sent (nobody renewed) or not (rate limit, outage)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from services.common.contracts.topics import Topics
from services.gateway.policy.profile import RenewalPolicy
from services.gateway.scheduler import SchedulerMetrics, SchedulerSettings, Snapshot, WatchedCertificate, plan_tick
from services.gateway.scheduler.plan import overdue
from services.gateway.scheduler.policy import RENEWAL_DUE
from tests.gateway_fixtures import _profile

T0 = datetime(2026, 12, 1, tzinfo=UTC)
DAY = timedelta(days=1)
HALF = RenewalPolicy(renew_at_fraction=0.5)  # 90-day certificate: due at day 45


@pytest.mark.parametrize(("name", "not_after", "now", "late"), [
    ("before its renewal time", T0 + 90 * DAY, T0 + 44 * DAY, False),
    ("due, within the hour", T0 + 90 * DAY, T0 + 45 * DAY + timedelta(minutes=59), False),
    ("an hour past due", T0 + 90 * DAY, T0 + 45 * DAY + timedelta(minutes=61), True),
    ("short-lived: half the time left to expiry", T0 + timedelta(seconds=120), T0 + timedelta(seconds=91), True),
    ("short-lived: not yet", T0 + timedelta(seconds=120), T0 + timedelta(seconds=89), False),
])
def test_overdue(name: str, not_after: datetime, now: datetime, late: bool) -> None:
    assert overdue(HALF, T0, not_after, now) is late, name


def test_a_tick_counts_overdue_certificates_per_connector_asked_or_not() -> None:
    profile = _profile("web", "emca", renewal=HALF)
    certificates = [WatchedCertificate(f"c{i}", f"a{i}", T0, T0 + 90 * DAY, "web", "emca", "ci") for i in range(3)]
    certificates.append(WatchedCertificate("fresh", "b1", T0 + 40 * DAY, T0 + 130 * DAY, "web", "emca", "ci"))
    sent = {("c0", "a0", RENEWAL_DUE)}  # asked, never renewed; c1 and c2 are held back by the rate limit
    snapshot = Snapshot(certificates, {"web": profile}, sent, {"emca": 1}, [])
    settings = SchedulerSettings(jitter_fraction=0.0, max_renewals_per_connector_per_minute=2)
    plan = plan_tick(snapshot, T0 + 46 * DAY, settings, Topics("certrail"))
    assert plan.overdue == {"emca": 3} and len(plan.renewals) == 1 and plan.waiting == {"emca": 1}

    registry = CollectorRegistry()
    metrics = SchedulerMetrics(registry)
    metrics.planned(plan)
    assert registry.get_sample_value("certrail_gateway_renewals_overdue", {"connector": "emca"}) == 3
    metrics.set_leader(False)  # only the active scheduler reports it
    assert registry.get_sample_value("certrail_gateway_renewals_overdue", {"connector": "emca"}) is None
