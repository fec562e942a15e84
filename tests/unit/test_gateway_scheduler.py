"""The renewal scheduler on SQLite with a controlled clock: renewal times, jitter,
the per-connector rate limit, no repeated notice, expiry thresholds, the lease
between two schedulers, publication failures and crashes, the loop, metrics.

The helpers at the top are reused by tests/integration/test_gateway_scheduler_db.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr, ValidationError
from sqlalchemy import Engine, select

from services.common.consumer import Outbound
from services.common.contracts.events import CertificateExpiring, RenewalDue
from services.common.contracts.fields import KeyGeneration
from services.common.contracts.identity import renewal_due_id
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import Base, GatewayCertificate, GatewayNotice, GatewayProfile
from services.common.fakes import RecordingPublisher
from services.common.settings import DatabaseSettings
from services.gateway import issued
from services.gateway.leases import get_lease
from services.gateway.policy.profile import ProvisioningProfile, RenewalPolicy
from services.gateway.scheduler import (
    PENDING_GRACE,
    PENDING_PREFIX,
    Scheduler,
    SchedulerSettings,
    certificate_expiring_id,
    jitter_window,
    renewal_at,
    store,
    tightest_threshold,
)
from services.gateway.scheduler.plan import per_tick_allowance
from tests.conftest import poll_until

T0 = datetime(2025, 1, 1, tzinfo=UTC)
TOPICS = Topics("certrail-test")
NO_JITTER = SchedulerSettings(jitter_fraction=0.0)


# -- helpers (shared with the integration test) -----------------------------------------------------


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def profile_spec(name: str = "web", connector: str = "emca-a", **overrides: Any) -> str:
    spec: dict[str, Any] = {
        "name": name,
        "connector": connector,
        "ca_profile": "TLS Server",
        "key_generation": "requester",
        "allowed_requesters": ["ci-pipeline"],
        "domain_rules": {"dns_suffixes": ["example.com"]},
        "validity_days": 90,
    }
    spec.update(overrides)
    return ProvisioningProfile.model_validate_json(json.dumps(spec)).model_dump_json()


def add_profile(engine: Engine, name: str = "web", connector: str = "emca-a", **overrides: Any) -> None:
    with write_session(engine) as session:
        session.merge(
            GatewayProfile(
                name=name, connector=connector, spec=profile_spec(name, connector, **overrides), revision=1,
                created_at=T0, updated_at=T0,
            )
        )


def put_certificate(
    engine: Engine,
    certificate_id: str,
    serial: str,
    *,
    not_before: datetime = T0,
    lifetime: timedelta = timedelta(days=90),
    profile: str | None = "web",
    connector: str | None = "emca-a",
    status: str = "active",
) -> None:
    """The certificate issued with ``serial`` at ``not_before`` (a renewal: the new serial replaces the
    old one), then revoked when ``status`` says so, as the gateway's projection of events.issuer folds it."""
    with write_session(engine) as session:
        issued.fold_issued(session, issued.Issued(
            certificate_id=certificate_id, serial=serial, issuer="CN=CA", not_before=not_before,
            not_after=not_before + lifetime, profile=profile, connector=connector, sans=[],
            request_id=f"req-{certificate_id}-{serial}", issuance_id=None, event_id=f"ev-{serial}", time=not_before,
        ))
        if status == "revoked":
            issued.fold_revoked(session, issued.Revoked(certificate_id, serial, connector, not_before, "keyCompromise"))


def notices(engine: Engine) -> list[tuple[str, str, str, str]]:
    with read_session(engine) as session:
        rows = session.execute(
            select(GatewayNotice.certificate_id, GatewayNotice.serial, GatewayNotice.kind, GatewayNotice.event_id)
            .order_by(GatewayNotice.certificate_id, GatewayNotice.serial, GatewayNotice.kind)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def of_type(sent: Sequence[Outbound], kind: type) -> list[Any]:
    return [m.event.data for m in sent if isinstance(m.event.data, kind)]


def make_scheduler(
    engine: Engine,
    clock: FakeClock,
    settings: SchedulerSettings = NO_JITTER,
    holder: str = "gw-1",
    publisher: RecordingPublisher | None = None,
    registry: CollectorRegistry | None = None,
) -> tuple[Scheduler, RecordingPublisher]:
    publisher = publisher or RecordingPublisher()
    scheduler = Scheduler(engine, TOPICS, publisher.publish, clock, settings, registry=registry, holder=holder)
    return scheduler, publisher


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}"))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


# -- renewal time and jitter (pure) -----------------------------------------------------------------

NB = T0
NA = T0 + timedelta(days=90)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param(RenewalPolicy(), NB + timedelta(days=60), id="default-two-thirds"),
        pytest.param(RenewalPolicy(renew_at_fraction=0.5), NB + timedelta(days=45), id="fraction-half"),
        pytest.param(RenewalPolicy(renew_before=timedelta(days=30)), NA - timedelta(days=30), id="renew-before"),
        pytest.param(RenewalPolicy(renew_before=timedelta(days=200)), NB + timedelta(days=60),
                     id="renew-before-longer-than-lifetime-falls-back-to-two-thirds"),
    ],
)
def test_renewal_time_without_jitter(policy: RenewalPolicy, expected: datetime) -> None:
    assert renewal_at(policy, "web/a", "0a1b", NB, NA, NO_JITTER) == expected


def test_jitter_moves_renewal_earlier_within_its_window() -> None:
    settings = SchedulerSettings()  # 10 % of the lifetime, at most 24 h
    policy = RenewalPolicy(renew_before=timedelta(days=30))
    at = renewal_at(policy, "web/a", "0a1b", NB, NA, settings)
    assert NA - timedelta(days=31) <= at <= NA - timedelta(days=30)
    assert jitter_window(NB, NA, settings) == timedelta(hours=24)  # 9 days capped at 24 h
    assert jitter_window(NB, NB + timedelta(days=1), settings) == timedelta(hours=2.4)  # 10 % of a day


def test_jitter_is_deterministic_and_spreads_certificates_issued_together() -> None:
    settings = SchedulerSettings()
    policy = RenewalPolicy()
    base = policy.renewal_time(NB, NA)
    window = jitter_window(NB, NA, settings)
    times = [renewal_at(policy, f"fleet/host-{i}", format(0x1000 + i, "x"), NB, NA, settings) for i in range(500)]
    assert len(set(times)) == 500  # all distinct
    assert all(base - window <= t <= base for t in times)  # bounded, never later than the policy
    assert max(times) - min(times) > window * 0.9  # spread over (nearly) the whole window
    early = sum(1 for t in times if t < base - window / 2)
    assert 150 < early < 350  # roughly uniform: about half in each half of the window
    again = [renewal_at(policy, f"fleet/host-{i}", format(0x1000 + i, "x"), NB, NA, settings) for i in range(500)]
    assert again == times  # same certificate and serial, same time
    # the serial counts: the renewed certificate gets its own time; its serial is normalised
    assert renewal_at(policy, "fleet/host-0", "1001", NB, NA, settings) != times[0]
    assert renewal_at(policy, "fleet/host-0", "00:10:00", NB, NA, settings) == times[0]


def test_tightest_threshold_crossed() -> None:
    thresholds = [30, 14, 7]
    assert tightest_threshold(NA, NA - timedelta(days=31), thresholds) is None
    assert tightest_threshold(NA, NA - timedelta(days=30), thresholds) == 30
    assert tightest_threshold(NA, NA - timedelta(days=10), thresholds) == 14
    assert tightest_threshold(NA, NA - timedelta(hours=1), thresholds) == 7


def test_settings_are_validated() -> None:
    assert SchedulerSettings(expiry_thresholds_days=[7, 30, 14]).expiry_thresholds_days == [30, 14, 7]
    with pytest.raises(ValidationError, match="must exceed interval_s"):
        SchedulerSettings(interval_s=60, lease_ttl_s=60)
    with pytest.raises(ValidationError, match="distinct"):
        SchedulerSettings(expiry_thresholds_days=[7, 7])
    with pytest.raises(ValidationError, match="between 1 and 3650"):
        SchedulerSettings(expiry_thresholds_days=[0])
    with pytest.raises(ValidationError):
        SchedulerSettings(max_renewals_per_connector_per_minute=0)



def test_settings_come_from_the_environment_one_by_one_or_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.gateway.settings import GatewaySettings

    monkeypatch.setenv("CERTRAIL_GATEWAY_SCHEDULER__INTERVAL_S", "2")
    monkeypatch.setenv("CERTRAIL_GATEWAY_SCHEDULER__LEASE_TTL_S", "10")
    scheduler = GatewaySettings().scheduler
    assert (scheduler.interval_s, scheduler.lease_ttl_s) == (2.0, 10.0)
    monkeypatch.delenv("CERTRAIL_GATEWAY_SCHEDULER__INTERVAL_S")
    monkeypatch.delenv("CERTRAIL_GATEWAY_SCHEDULER__LEASE_TTL_S")
    monkeypatch.setenv("CERTRAIL_GATEWAY_SCHEDULER", '{"interval_s": 3, "lease_ttl_s": 12}')
    scheduler = GatewaySettings().scheduler
    assert (scheduler.interval_s, scheduler.lease_ttl_s) == (3.0, 12.0)
    monkeypatch.setenv("CERTRAIL_GATEWAY_SCHEDULER__LEASE_TTL_S", "1")  # below interval_s: refused, not ignored
    with pytest.raises(ValidationError, match="must exceed interval_s"):
        GatewaySettings()

# -- RenewalDue through the scheduler ---------------------------------------------------------------


async def test_renewal_due_published_once_at_its_time(engine: Engine) -> None:
    add_profile(engine, "bots", "emca-a", key_generation="bot", bot_key_algorithm="EC-P256",
                deployment_target="nginx-edge", renewal={"renew_before": "P30D"})
    put_certificate(engine, "web/a", "0a1b", profile="bots")
    with write_session(engine) as session:  # the gateway's record of the certificate (the requester is only there)
        session.add(GatewayCertificate(
            certificate_id="web/a", profile="bots", connector="emca-a", requester="deployer-bot",
            key_generation="bot", revision=1, sans='["a.example.com"]', created_at=T0, updated_at=T0,
        ))
    clock = FakeClock(T0 + timedelta(days=59, hours=23))
    scheduler, publisher = make_scheduler(engine, clock)

    result = await scheduler.tick()
    assert result.leader and result.renewals_due == 0 and publisher.sent == []

    clock.advance(timedelta(hours=1))  # exactly not_after - 30 days (also the 30-day expiry notice)
    result = await scheduler.tick()
    assert (result.renewals_due, result.expiring) == (1, 1)
    [message] = [m for m in publisher.sent if isinstance(m.event.data, RenewalDue)]
    assert message.topic == TOPICS.gateway_events and message.key == "web/a"
    assert message.event.id == renewal_due_id("web/a", "0a1b")
    assert message.event.time == clock.now and message.event.subject == "web/a"
    data = message.event.data
    assert isinstance(data, RenewalDue)
    assert data.serial == "0a1b" and data.profile == "bots" and data.connector == "emca-a"
    assert data.key_generation is KeyGeneration.BOT
    assert data.requester == "deployer-bot"
    assert data.renew_at == T0 + timedelta(days=60) and data.not_after == T0 + timedelta(days=90)
    expiring_id = certificate_expiring_id("web/a", "0a1b", 30)
    assert notices(engine) == [  # marked sent
        ("web/a", "0a1b", "expiring:30", expiring_id),
        ("web/a", "0a1b", "renewal_due", message.event.id),
    ]

    for _ in range(3):
        clock.advance(timedelta(minutes=5))
        assert (await scheduler.tick()).renewals_due == 0
    assert len(publisher.sent) == 2


async def test_no_repeat_after_a_restart(engine: Engine) -> None:
    add_profile(engine)
    for i in range(3):
        put_certificate(engine, f"web/{i}", format(0x100 + i, "x"))
    clock = FakeClock(T0 + timedelta(days=61))
    first, sent_first = make_scheduler(engine, clock, holder="gw-1")
    assert (await first.tick()).renewals_due == 3
    await first.release()  # a clean stop

    clock.advance(timedelta(seconds=5))
    second, sent_second = make_scheduler(engine, clock, holder="gw-1-restarted")
    result = await second.tick()
    assert result.leader and result.renewals_due == 0 and result.republished == 0
    assert sent_second.sent == []
    assert len(of_type(sent_first.sent, RenewalDue)) == 3


async def test_renewed_certificate_gets_its_own_renewal_due(engine: Engine) -> None:
    add_profile(engine)
    put_certificate(engine, "web/a", "0a1b")
    clock = FakeClock(T0 + timedelta(days=61))
    scheduler, publisher = make_scheduler(engine, clock)
    await scheduler.tick()
    renewed_at = T0 + timedelta(days=62)
    put_certificate(engine, "web/a", "0c2d", not_before=renewed_at)  # the gateway folded the new serial

    clock.now = renewed_at + timedelta(days=1)
    assert (await scheduler.tick()).renewals_due == 0  # the new serial is not due yet
    clock.now = renewed_at + timedelta(days=60)
    assert (await scheduler.tick()).renewals_due == 1
    ids = [m.event.id for m in publisher.sent if isinstance(m.event.data, RenewalDue)]
    assert ids == [renewal_due_id("web/a", "0a1b"), renewal_due_id("web/a", "0c2d")]
    assert [d.serial for d in of_type(publisher.sent, RenewalDue)] == ["0a1b", "0c2d"]


async def test_rate_limit_per_connector_oldest_due_first(engine: Engine) -> None:
    add_profile(engine, "web-a", "emca-a")
    add_profile(engine, "web-b", "emca-b")
    settings = SchedulerSettings(jitter_fraction=0.0, max_renewals_per_connector_per_minute=2)
    # five on emca-a, issued an hour apart (so due an hour apart, oldest first), one on emca-b
    for i in range(5):
        put_certificate(engine, f"a/{i}", format(0xA0 + i, "x"), not_before=T0 + timedelta(hours=4 - i),
                        profile="web-a", connector="emca-a")
    put_certificate(engine, "b/0", "b0", profile="web-b", connector="emca-b")
    clock = FakeClock(T0 + timedelta(days=61))
    scheduler, publisher = make_scheduler(engine, clock, settings)

    result = await scheduler.tick()
    # 2 a minute with a tick every 30 s: 1 a tick (the minute's allowance spread over its ticks, not a burst)
    assert (result.renewals_due, result.waiting) == (2, 4)
    due = of_type(publisher.sent, RenewalDue)
    assert [d.certificate_id for d in due if d.connector == "emca-a"] == ["a/4"]  # the oldest due
    assert [d.certificate_id for d in due if d.connector == "emca-b"] == ["b/0"]  # not limited by emca-a

    clock.advance(timedelta(seconds=30))  # one in the sliding minute: one more allowed
    assert (await scheduler.tick()).renewals_due == 1
    clock.advance(timedelta(seconds=1))  # two in the sliding minute: none
    result = await scheduler.tick()
    assert (result.renewals_due, result.waiting) == (0, 3)
    clock.advance(timedelta(seconds=30))  # the first one left the minute
    assert (await scheduler.tick()).renewals_due == 1
    clock.advance(timedelta(seconds=30))
    result = await scheduler.tick()
    assert (result.renewals_due, result.waiting) == (1, 1)
    clock.advance(timedelta(minutes=5))
    assert (await scheduler.tick()).renewals_due == 1
    clock.advance(timedelta(minutes=5))
    assert (await scheduler.tick()).renewals_due == 0
    a_ids = [d.certificate_id for d in of_type(publisher.sent, RenewalDue) if d.connector == "emca-a"]
    assert a_ids == ["a/4", "a/3", "a/2", "a/1", "a/0"]  # in due order, each once


@pytest.mark.parametrize(("limit", "interval_s", "per_tick"), [(60, 30, 30), (2, 30, 1), (1, 1, 1), (600, 1, 10),
                                                               (100, 120, 100), (7, 20, 3)])
def test_the_allowance_of_a_minute_is_spread_over_its_ticks(limit: int, interval_s: float, per_tick: int) -> None:
    settings = SchedulerSettings(max_renewals_per_connector_per_minute=limit, interval_s=interval_s,
                                 lease_ttl_s=interval_s * 3)
    assert per_tick_allowance(settings) == per_tick


async def test_certificates_not_due_or_not_schedulable(engine: Engine) -> None:
    add_profile(engine)
    put_certificate(engine, "web/revoked", "01", status="revoked")
    put_certificate(engine, "web/expired", "02", not_before=T0 - timedelta(days=100))
    put_certificate(engine, "web/orphan", "03", profile="gone")  # its profile does not exist
    put_certificate(engine, "web/no-profile", "04", profile=None)
    clock = FakeClock(T0 + timedelta(days=61))
    registry = CollectorRegistry()
    scheduler, publisher = make_scheduler(engine, clock, registry=registry)
    result = await scheduler.tick()
    assert result.renewals_due == 0
    # expiry notices need no profile: the two active, unexpired ones are 29 days from expiry
    assert sorted(d.certificate_id for d in of_type(publisher.sent, CertificateExpiring)) == ["web/no-profile", "web/orphan"]
    gauge = "certrail_gateway_scheduler_unschedulable_certificates"
    assert registry.get_sample_value(gauge, {"reason": "unknown_profile"}) == 1
    assert registry.get_sample_value(gauge, {"reason": "no_profile"}) == 1


# -- expiry notices ---------------------------------------------------------------------------------


async def test_expiry_notices_once_per_threshold(engine: Engine) -> None:
    add_profile(engine, renewal={"renew_before": "P1D"})  # no RenewalDue in this test's window
    put_certificate(engine, "web/a", "0a1b")
    not_after = T0 + timedelta(days=90)
    clock = FakeClock(not_after - timedelta(days=31))
    scheduler, publisher = make_scheduler(engine, clock)

    sent_per_tick = []
    for offset in [31, 30, 29, 20, 14, 13.5, 7, 3, 1.5]:
        clock.now = not_after - timedelta(days=offset)
        sent_per_tick.append((await scheduler.tick()).expiring)
    assert sent_per_tick == [0, 1, 0, 0, 1, 0, 1, 0, 0]
    expiring = of_type(publisher.sent, CertificateExpiring)
    assert [d.threshold_days for d in expiring] == [30, 14, 7]
    assert [m.event.id for m in publisher.sent] == [certificate_expiring_id("web/a", "0a1b", d) for d in (30, 14, 7)]
    assert all(d.not_after == not_after and d.profile == "web" and d.connector == "emca-a" for d in expiring)
    assert [n[2] for n in notices(engine)] == ["expiring:14", "expiring:30", "expiring:7"]


async def test_only_the_tightest_threshold_when_several_are_crossed(engine: Engine) -> None:
    add_profile(engine, renewal={"renew_before": "P1D"})
    put_certificate(engine, "web/short", "01", lifetime=timedelta(days=10))  # born inside 30 and 14
    clock = FakeClock(T0 + timedelta(hours=1))
    scheduler, publisher = make_scheduler(engine, clock)
    await scheduler.tick()
    clock.advance(timedelta(days=1))
    await scheduler.tick()
    clock.now = T0 + timedelta(days=3, hours=1)  # 7 days left minus an hour
    await scheduler.tick()
    assert [d.threshold_days for d in of_type(publisher.sent, CertificateExpiring)] == [14, 7]  # never 30


# -- two schedulers, one lease ----------------------------------------------------------------------


async def test_two_schedulers_one_active_and_takeover_after_the_lease_expires(engine: Engine) -> None:
    add_profile(engine)
    put_certificate(engine, "web/a", "0a")
    put_certificate(engine, "web/b", "0b", not_before=T0 + timedelta(days=1))  # due a day later
    settings = SchedulerSettings(jitter_fraction=0.0, interval_s=30, lease_ttl_s=90)
    clock = FakeClock(T0 + timedelta(days=60, minutes=1))
    a, sent_a = make_scheduler(engine, clock, settings, holder="gw-a")
    b, sent_b = make_scheduler(engine, clock, settings, holder="gw-b")

    for _ in range(3):  # both tick every interval; only a publishes
        assert (await a.tick()).leader
        assert not (await b.tick()).leader
        clock.advance(timedelta(seconds=30))
    assert a.is_leader and not b.is_leader
    assert [d.certificate_id for d in of_type(sent_a.sent, RenewalDue)] == ["web/a"] and sent_b.sent == []

    # a stops ticking (hung or killed); web/b becomes due; b keeps ticking
    clock.now = T0 + timedelta(days=61, minutes=1)
    lease_end = clock.now  # a's last tick was long ago: its lease expired
    with read_session(engine) as session:
        lease = get_lease(session, settings.lease_name)
    assert lease is not None and lease.holder == "gw-a" and lease.expires_at < lease_end
    assert (await b.tick()).renewals_due == 1
    assert b.is_leader and [d.certificate_id for d in of_type(sent_b.sent, RenewalDue)] == ["web/b"]
    sent_by_a = len(sent_a.sent)
    assert not (await a.tick()).leader  # a, back, finds the lease taken
    assert len(sent_a.sent) == sent_by_a


async def test_lease_not_taken_over_before_it_expires_and_released_lease_taken_at_once(engine: Engine) -> None:
    settings = SchedulerSettings(interval_s=30, lease_ttl_s=90)
    clock = FakeClock()
    a, _ = make_scheduler(engine, clock, settings, holder="gw-a")
    b, _ = make_scheduler(engine, clock, settings, holder="gw-b")
    assert (await a.tick()).leader
    clock.advance(timedelta(seconds=89))
    assert not (await b.tick()).leader  # a's lease still runs
    assert (await a.tick()).leader  # renewed until +89 s + 90 s
    clock.advance(timedelta(seconds=91))
    assert (await b.tick()).leader  # expired: taken over
    await b.release()
    assert (await a.tick()).leader  # released: taken at once


# -- publication failures and crashes ---------------------------------------------------------------


class FailingPublisher(RecordingPublisher):
    """Fails the first ``failures`` publications with ``error`` (after remembering what it was given)."""

    def __init__(self, failures: int, error: BaseException) -> None:
        super().__init__()
        self.failures = failures
        self.error = error
        self.attempted: list[Outbound] = []

    async def publish(self, messages: Sequence[Outbound]) -> None:
        self.attempted.extend(messages)
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        await super().publish(messages)


async def test_failed_publication_is_retried_next_tick_with_the_same_bytes(engine: Engine) -> None:
    add_profile(engine)
    put_certificate(engine, "web/a", "0a1b")
    clock = FakeClock(T0 + timedelta(days=61))
    registry = CollectorRegistry()
    publisher = FailingPublisher(1, RuntimeError("broker down"))
    scheduler, _ = make_scheduler(engine, clock, publisher=publisher, registry=registry)

    with pytest.raises(RuntimeError, match="broker down"):
        await scheduler.tick()
    first_attempt = [m.value() for m in publisher.attempted]
    assert len(first_attempt) == 2  # RenewalDue and the 30-day notice
    assert all(n[3].startswith(PENDING_PREFIX) for n in notices(engine))  # recorded, not yet sent

    clock.advance(timedelta(seconds=30))
    result = await scheduler.tick()
    assert (result.republished, result.renewals_due, result.expiring) == (2, 0, 0)
    assert sorted(publisher.values()) == sorted(first_attempt)  # byte-identical: same ids, same times
    assert not any(n[3].startswith(PENDING_PREFIX) for n in notices(engine))
    clock.advance(timedelta(seconds=30))
    assert (await scheduler.tick()).republished == 0
    assert len(publisher.sent) == 2
    assert registry.get_sample_value("certrail_gateway_scheduler_publish_failures_total") == 1
    assert registry.get_sample_value("certrail_gateway_scheduler_ticks_total", {"outcome": "error"}) == 1


class Crash(BaseException):
    """Stands for the process dying between recording and publishing (nothing catches it)."""


async def test_crash_between_record_and_publish_the_next_leader_publishes(engine: Engine) -> None:
    add_profile(engine)
    put_certificate(engine, "web/a", "0a1b")
    settings = SchedulerSettings(jitter_fraction=0.0, interval_s=30, lease_ttl_s=90)
    clock = FakeClock(T0 + timedelta(days=61))
    crashing = FailingPublisher(1, Crash())
    a, _ = make_scheduler(engine, clock, settings, holder="gw-a", publisher=crashing)
    b, sent_b = make_scheduler(engine, clock, settings, holder="gw-b")
    with pytest.raises(Crash):
        await a.tick()
    assert crashing.sent == []

    clock.advance(timedelta(seconds=60))
    assert not (await b.tick()).leader
    clock.advance(timedelta(seconds=31))
    result = await b.tick()
    assert (result.leader, result.republished, result.renewals_due) == (True, 2, 0)
    assert sorted(sent_b.values()) == sorted(m.value() for m in crashing.attempted)  # nothing lost, nothing new


async def test_pending_notice_of_a_renewed_certificate_is_dropped(engine: Engine) -> None:
    add_profile(engine)
    put_certificate(engine, "web/a", "0a1b")
    clock = FakeClock(T0 + timedelta(days=61))
    publisher = FailingPublisher(1, RuntimeError("broker down"))
    scheduler, _ = make_scheduler(engine, clock, publisher=publisher)
    with pytest.raises(RuntimeError):
        await scheduler.tick()
    put_certificate(engine, "web/a", "0c2d", not_before=T0 + timedelta(days=61))  # renewed meanwhile
    clock.advance(timedelta(seconds=30))
    result = await scheduler.tick()
    assert (result.republished, result.renewals_due) == (0, 0)
    assert publisher.sent == [] and notices(engine) == []


async def test_notices_of_long_expired_serials_are_pruned_and_pending_ones_kept(engine: Engine) -> None:
    await check_pruning(engine)


async def check_pruning(engine: Engine) -> None:
    """(shared with the integration test, which runs it on PostgreSQL too)"""
    add_profile(engine)
    put_certificate(engine, "web/a", "0a1b")  # lives T0 .. T0 + 90 d
    settings = SchedulerSettings(jitter_fraction=0.0, notice_retention=timedelta(days=30))
    clock = FakeClock(T0 + timedelta(days=61))
    first, _ = make_scheduler(engine, clock, settings)
    assert (await first.tick()).renewals_due == 1
    put_certificate(engine, "web/a", "0c2d", not_before=clock.now)  # renewed: 0c2d lives T0 + 61 d .. T0 + 151 d
    of_0a1b = [row for row in notices(engine) if row[1] == "0a1b"]
    assert of_0a1b and all(not row[3].startswith(PENDING_PREFIX) for row in of_0a1b)

    # 0a1b expired 10 days ago (less than the retention): kept
    registry = CollectorRegistry()
    second, _ = make_scheduler(engine, FakeClock(T0 + timedelta(days=100)), settings, holder="gw-2", registry=registry)
    clock.advance(timedelta(days=39))
    await second.tick()
    assert [row for row in notices(engine) if row[1] == "0a1b"] == of_0a1b
    assert registry.get_sample_value("certrail_gateway_scheduler_notices_pruned_total") == 0

    # 0a1b expired 31 days ago and its notices are older than the retention: gone; the live serial's and the
    # pending one stay
    registry = CollectorRegistry()
    third, _ = make_scheduler(engine, FakeClock(T0 + timedelta(days=121)), settings, holder="gw-3", registry=registry)
    await third.tick()
    remaining = notices(engine)
    assert not [row for row in remaining if row[1] == "0a1b"]
    assert [row for row in remaining if row[1] == "0c2d"]
    assert registry.get_sample_value("certrail_gateway_scheduler_notices_pruned_total") == len(of_0a1b)

    # a notice still pending (recorded, its publication in flight) is never pruned, however old
    with write_session(engine) as session:
        session.add(GatewayNotice(certificate_id="web/old", serial="0e0f", kind="renewal_due",
                                  event_id=PENDING_PREFIX + "ev-old", sent_at=T0))
    with write_session(engine) as session:
        assert store.prune_notices(session, T0 + timedelta(days=365)) == 2  # the two of 0c2d, not the pending one
    assert notices(engine) == [("web/old", "0e0f", "renewal_due", PENDING_PREFIX + "ev-old")]


def test_notice_retention_shorter_than_a_day_is_refused() -> None:
    with pytest.raises(ValidationError, match="notice_retention"):
        SchedulerSettings(notice_retention=timedelta(hours=1))


# -- the loop and the metrics -----------------------------------------------------------------------


async def test_run_forever_survives_failing_ticks_and_releases_the_lease(engine: Engine) -> None:
    add_profile(engine)
    put_certificate(engine, "web/a", "0a1b")
    clock = FakeClock(T0 + timedelta(days=61))
    publisher = FailingPublisher(2, RuntimeError("broker down"))
    scheduler, _ = make_scheduler(engine, clock, publisher=publisher)
    task = asyncio.create_task(scheduler.run_forever(interval_s=0.01))
    try:
        def published_twice() -> bool:
            if len(publisher.sent) >= 2:
                return True
            assert not task.done(), "run_forever ended"
            clock.advance(PENDING_GRACE)  # a failed publish is re-sent once it has been pending a while
            return False

        await poll_until(published_twice, "the loop to go on publishing", 10, interval_s=0.01)
    finally:
        scheduler.stop()
        await asyncio.wait_for(task, timeout=10)
    assert publisher.failures == 0 and len(publisher.sent) == 2
    with read_session(engine) as session:
        assert get_lease(session, NO_JITTER.lease_name) is None  # released on the way out


async def test_metrics(engine: Engine) -> None:
    add_profile(engine, renewal={"renew_before": "P20D"})
    put_certificate(engine, "web/a", "0a")  # 29 days left at the tick: expiring:30
    put_certificate(engine, "web/b", "0b", not_before=T0 - timedelta(days=19))  # 10 days left: RenewalDue, 14
    put_certificate(engine, "web/c", "0c", not_before=T0 + timedelta(days=60), lifetime=timedelta(days=120))  # 119 left
    registry = CollectorRegistry()
    clock = FakeClock(T0 + timedelta(days=61))
    scheduler, _ = make_scheduler(engine, clock, registry=registry)
    await scheduler.tick()

    def value(name: str, labels: dict[str, str] | None = None) -> float | None:
        return registry.get_sample_value(name, labels or {})

    assert value("certrail_gateway_scheduler_leader") == 1
    assert value("certrail_gateway_renewals_due_published_total", {"connector": "emca-a"}) == 1
    assert value("certrail_gateway_expiry_notices_published_total", {"threshold_days": "30"}) == 1
    assert value("certrail_gateway_expiry_notices_published_total", {"threshold_days": "14"}) == 1
    buckets = "certrail_gateway_certificates_by_days_to_expiry"
    assert value(buckets, {"bucket": "7d_14d"}) == 1
    assert value(buckets, {"bucket": "14d_30d"}) == 1
    assert value(buckets, {"bucket": "ge_90d"}) == 1
    assert value(buckets, {"bucket": "lt_1d"}) == 0
    assert value("certrail_gateway_scheduler_ticks_total", {"outcome": "leader"}) == 1
    assert value("certrail_gateway_scheduler_tick_duration_seconds_count") == 1

    other_registry = CollectorRegistry()
    follower, _ = make_scheduler(engine, clock, holder="gw-2", registry=other_registry)
    await follower.tick()
    assert other_registry.get_sample_value("certrail_gateway_scheduler_leader") == 0
    assert other_registry.get_sample_value(buckets, {"bucket": "ge_90d"}) == 0
    assert other_registry.get_sample_value("certrail_gateway_scheduler_ticks_total", {"outcome": "follower"}) == 1


async def test_a_failing_tick_reports_not_leading_and_the_lease_is_still_released_at_stop(engine: Engine) -> None:
    add_profile(engine)
    put_certificate(engine, "web/a", "0a1b")
    registry = CollectorRegistry()
    clock = FakeClock(T0 + timedelta(days=61))
    scheduler, _ = make_scheduler(engine, clock, publisher=FailingPublisher(1, RuntimeError("broker down")),
                                  registry=registry)
    with pytest.raises(RuntimeError):
        await scheduler.tick()  # it took the lease, then failed to publish
    assert registry.get_sample_value("certrail_gateway_scheduler_leader") == 0  # not doing its work
    assert not scheduler.is_leader
    with read_session(engine) as session:
        lease = get_lease(session, NO_JITTER.lease_name)
    assert lease is not None and lease.holder == "gw-1"
    await scheduler.release()  # stopping: the lease it may hold is given up all the same
    with read_session(engine) as session:
        assert get_lease(session, NO_JITTER.lease_name) is None
    clock.advance(timedelta(seconds=30))
    again, _ = make_scheduler(engine, clock, registry=CollectorRegistry())
    assert (await again.tick()).leader


def test_a_gateway_that_does_not_schedule_exports_leader_zero(tmp_path: Path) -> None:
    """With every gateway's scheduler off, the leader gauges sum to 0 and CertrailRenewalSchedulerNotRunning fires
    (a gateway that exported nothing would leave the sum empty and the alert silent)."""
    from services.common.connectors.secretbox import SecretsSettings, generate_key
    from services.common.settings import KafkaSettings
    from services.gateway.app import create_app
    from services.gateway.settings import GatewaySettings

    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'gw.db'}")
    settings = GatewaySettings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"), db=db, scheduler_enabled=False,
                               secrets=SecretsSettings(keys=SecretStr(generate_key())))
    _, runtime = create_app(settings)
    try:
        assert runtime.service.registry.get_sample_value("certrail_gateway_scheduler_leader") == 0
    finally:
        runtime.service.engine.dispose()
