"""The renewal scheduler's lease and no-repeat guarantees on SQLite and on PostgreSQL
(db_settings), against the migrated schema, with a controlled clock."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from services.common import migrate
from services.common.contracts.events import RenewalDue
from services.common.contracts.identity import renewal_due_id
from services.common.db import make_engine, read_session, write_session
from services.common.settings import DatabaseSettings
from services.gateway.leases import acquire_lease, get_lease, release_lease
from services.gateway.scheduler import SchedulerSettings
from tests.unit.test_gateway_scheduler import (
    T0,
    FakeClock,
    add_profile,
    check_pruning,
    make_scheduler,
    notices,
    of_type,
    put_certificate,
)

TTL = timedelta(seconds=90)
SETTINGS = SchedulerSettings(jitter_fraction=0.0, interval_s=30, lease_ttl_s=90)


@pytest.fixture
def engine(db_settings: DatabaseSettings) -> Iterator[Engine]:
    migrate.upgrade(db_settings)
    engine = make_engine(db_settings)
    yield engine
    engine.dispose()


def test_lease_acquire_renew_takeover_release(engine: Engine) -> None:
    def acquire(holder: str, offset_s: float) -> bool:
        with write_session(engine) as session:
            return acquire_lease(session, "lease", holder, now=T0 + timedelta(seconds=offset_s), ttl=TTL)

    assert acquire("a", 0)  # absent: inserted
    assert not acquire("b", 10)
    assert acquire("a", 60)  # renewed until 150 s
    assert not acquire("b", 149)
    assert acquire("b", 151)  # expired: taken over
    assert not acquire("a", 152)
    with write_session(engine) as session:
        assert not release_lease(session, "lease", "a")  # not a's to release
        assert release_lease(session, "lease", "b")
    with read_session(engine) as session:
        assert get_lease(session, "lease") is None
    assert acquire("a", 153)
    with read_session(engine) as session:
        lease = get_lease(session, "lease")
    assert lease is not None and (lease.holder, lease.expires_at) == ("a", T0 + timedelta(seconds=153) + TTL)


def test_concurrent_acquisitions_have_one_winner(engine: Engine) -> None:
    """Eight holders race for an absent lease, then for the expired one: one wins each time."""
    for round_start in (0.0, 1000.0):
        barrier = threading.Barrier(8)

        def race(holder: str, start: float = round_start, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            with write_session(engine) as session:
                return acquire_lease(session, "race", holder, now=T0 + timedelta(seconds=start), ttl=TTL)

        with ThreadPoolExecutor(max_workers=8) as pool:
            won = list(pool.map(race, [f"h{i}" for i in range(8)]))
        assert won.count(True) == 1, won
        with read_session(engine) as session:
            lease = get_lease(session, "race")
        assert lease is not None and lease.holder == f"h{won.index(True)}"


async def test_two_schedulers_one_publishes_then_the_other_takes_over(engine: Engine) -> None:
    add_profile(engine)
    put_certificate(engine, "web/a", "0a")
    put_certificate(engine, "web/b", "0b", not_before=T0 + timedelta(days=1))
    clock = FakeClock(T0 + timedelta(days=60, minutes=1))
    a, sent_a = make_scheduler(engine, clock, SETTINGS, holder="gw-a")
    b, sent_b = make_scheduler(engine, clock, SETTINGS, holder="gw-b")
    for _ in range(3):
        results = await asyncio.gather(a.tick(), b.tick())  # both at once
        assert sorted(r.leader for r in results) == [False, True]
        clock.advance(timedelta(seconds=30))
    assert a.is_leader != b.is_leader
    leader, follower = (sent_a, sent_b) if a.is_leader else (sent_b, sent_a)
    assert [d.certificate_id for d in of_type(leader.sent, RenewalDue)] == ["web/a"] and follower.sent == []

    first, second = (a, b) if a.is_leader else (b, a)
    clock.now = T0 + timedelta(days=61, minutes=1)  # the leader stopped ticking a day ago; web/b is due
    assert (await second.tick()).renewals_due == 1
    assert [d.certificate_id for d in of_type(follower.sent, RenewalDue)] == ["web/b"]
    assert not (await first.tick()).leader


async def test_no_repeated_renewal_due_across_ticks_restarts_and_a_split_brain(engine: Engine) -> None:
    add_profile(engine)
    for i in range(6):
        put_certificate(engine, f"web/{i}", format(0x10 + i, "x"))
    clock = FakeClock(T0 + timedelta(days=61))
    # two schedulers with different lease names: both believe they lead (a split brain); the
    # notices' primary key still lets each RenewalDue through once
    split = SchedulerSettings(jitter_fraction=0.0, lease_name="other")
    a, sent_a = make_scheduler(engine, clock, SETTINGS, holder="gw-a")
    b, sent_b = make_scheduler(engine, clock, split, holder="gw-b")
    results = await asyncio.gather(a.tick(), b.tick())
    assert all(r.leader for r in results)
    due = of_type(sent_a.sent, RenewalDue) + of_type(sent_b.sent, RenewalDue)
    assert sorted(d.certificate_id for d in due) == [f"web/{i}" for i in range(6)]

    for _ in range(2):
        clock.advance(timedelta(seconds=30))
        await asyncio.gather(a.tick(), b.tick())
    await a.release()
    restarted, sent_restarted = make_scheduler(engine, clock, SETTINGS, holder="gw-a2")
    clock.advance(timedelta(seconds=30))
    assert (await restarted.tick()).leader
    assert sent_restarted.sent == []
    total = of_type(sent_a.sent, RenewalDue) + of_type(sent_b.sent, RenewalDue)
    assert len(total) == 6
    recorded = [n for n in notices(engine) if n[2] == "renewal_due"]
    assert sorted(n[3] for n in recorded) == sorted(renewal_due_id(f"web/{i}", format(0x10 + i, "x")) for i in range(6))


async def test_notices_of_long_expired_serials_are_pruned(engine: Engine) -> None:
    await check_pruning(engine)
