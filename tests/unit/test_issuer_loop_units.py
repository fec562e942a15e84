"""The issuer's pure parts: the per-partition commit point, crash point parsing, the critical
section a revoked partition respects, transient-error certainty, and the durable state."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from services.common.db import make_engine
from services.common.emca.types import TransientError
from services.common.migrate import upgrade
from services.common.runtime.keyed_loop import Revoked, Work
from services.common.runtime.writer import StateWriter, ThreadCalls
from services.common.settings import DatabaseSettings
from services.issuer import state
from services.issuer.consumer_loop import _InFlight, _Partition
from services.issuer.processor import CrashPoints
from services.issuer.state import NewOperation, OpState, StoredRecord

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def _entry() -> _InFlight:
    return _InFlight(Work(), None, 0)  # type: ignore[arg-type]


def test_commit_point_is_the_lowest_unfinished_offset() -> None:
    partition = _Partition()
    for offset in (10, 11, 12, 13):
        partition.add(offset, _entry())
    partition.finish(11)
    partition.finish(13)
    assert partition.commit_point() is None  # 10 is unfinished: nothing past it
    partition.finish(10)
    assert partition.commit_point() == 12  # 10 and 11 done, 12 waits
    partition.committed = 12
    assert partition.commit_point() is None
    partition.finish(12)
    assert partition.commit_point() == 14
    assert partition.in_flight == {}


def test_commit_point_handles_gaps_in_offsets() -> None:
    partition = _Partition()
    for offset in (5, 9):  # transaction markers or compaction leave gaps
        partition.add(offset, _entry())
    partition.finish(9)
    partition.finish(5)
    assert partition.commit_point() == 10


def test_crash_points_parse_and_refuse_unknown() -> None:
    assert CrashPoints(None).point is None
    points = CrashPoints("after_db_commit:3")
    assert (points.point, points.remaining) == ("after_db_commit", 3)
    points.reached("after_publish")
    points.reached("after_db_commit")
    assert points.remaining == 2
    with pytest.raises(ValueError, match="unknown crash point 'after_lunch'"):
        CrashPoints("after_lunch")


async def test_a_revoked_command_stops_before_its_critical_section_but_not_inside() -> None:
    work = Work()
    async with work.critical_section():
        work.revoked = True  # revoked while at emCA: it finishes
        assert not work.idle.is_set()
    assert work.idle.is_set()
    with pytest.raises(Revoked):
        async with work.critical_section():
            pass
    await asyncio.sleep(0)


def test_transient_errors_say_whether_emca_may_have_acted() -> None:
    assert not TransientError("refused", unsent=True).may_have_reached_ca
    assert not TransientError("slow down", http_status=429).may_have_reached_ca
    assert TransientError("read timed out").may_have_reached_ca
    assert TransientError("bad gateway", http_status=502).may_have_reached_ca



def _step(engine, step, *args, **kwargs):  # type: ignore[no-untyped-def]
    """One `state` step in a transaction of its own (the service runs them through `StateWriter`)."""
    with engine.begin() as conn:
        return step(conn, *args, **kwargs)


def _new(op_key: str = "iss-1") -> NewOperation:
    return NewOperation(op_key, "issue", "cmd-1", "cert-1", "req-1", "emca", "certrail.commands.emca", 0, "{}")


def test_intent_then_outcome_and_uncertain_attempts(engine) -> None:  # type: ignore[no-untyped-def]
    op, earlier = _step(engine, state.begin_attempt_in, _new(), NOW)
    assert (op.state, op.attempts, op.uncertain, earlier) == (OpState.SUBMITTING, 1, True, False)
    op, earlier = _step(engine, state.begin_attempt_in, _new(), NOW)  # a crash left the first attempt uncertain
    assert (op.attempts, earlier) == (2, True)
    _step(engine, state.attempt_unsent_in, "iss-1", NOW)  # connection refused: certainly not sent
    _, earlier = _step(engine, state.begin_attempt_in, _new(), NOW)
    assert earlier is False
    records = [StoredRecord("certrail.events", "cert-1", b'{"id":"e1"}')]
    _step(engine, state.record_outcome_in, "iss-1", OpState.ISSUED, records, NOW, serial="1f", possible_duplicate=True)
    settled = _step(engine, state.load_in, "iss-1")
    assert settled.settled and settled.outcome == tuple(records) and settled.possible_duplicate and not settled.uncertain
    again, earlier = _step(engine, state.begin_attempt_in, _new(), NOW)  # a settled operation is never attempted again
    assert again.attempts == 3 and again.state is OpState.ISSUED and earlier is False


def test_the_outcome_keeps_what_the_step_does_not_set_on_both_databases(db_settings: DatabaseSettings) -> None:
    """`record_outcome_in` is one UPDATE and `begin_attempt_in` one INSERT for a new operation: an earlier serial and
    emCA request id stay unless given, a possible duplicate stays reported, the error code is the step's; a second
    intent for the same operation reads and updates its row; an outcome for no operation is a LookupError."""
    upgrade(db_settings)
    engine = make_engine(db_settings)
    try:
        first, earlier = _step(engine, state.begin_attempt_in, _new(), NOW)
        assert _step(engine, state.load_in, "iss-1") == first and earlier is False
        again, earlier = _step(engine, state.begin_attempt_in, _new(), NOW + timedelta(seconds=1))
        assert (again.attempts, again.created_at, earlier) == (2, NOW, True)
        pending = [StoredRecord("certrail.events", "cert-1", b'{"pending":1}')]
        _step(engine, state.record_outcome_in, "iss-1", OpState.PENDING, pending, NOW, ca_request_id="R7",
              possible_duplicate=True, next_poll_at=NOW + timedelta(minutes=1), error_code="X")
        held = _step(engine, state.load_in, "iss-1")
        assert (held.ca_request_id, held.possible_duplicate, held.error_code, held.next_poll_at, held.outcome) == (
            "R7", True, "X", NOW + timedelta(minutes=1), tuple(pending))
        later = NOW + timedelta(hours=2)
        final = [StoredRecord("certrail.events", "cert-1", b'{"final":1}')]
        _step(engine, state.record_outcome_in, "iss-1", OpState.ISSUED, final, later, serial="2a")
        done = _step(engine, state.load_in, "iss-1")
        assert (done.state, done.serial, done.ca_request_id, done.possible_duplicate, done.error_code) == (
            OpState.ISSUED, "2a", "R7", True, None)
        assert (done.outcome, done.next_poll_at, done.outcome_at, done.uncertain) == (tuple(final), None, later, False)
        _step(engine, state.record_outcome_in, "iss-1", OpState.ISSUED, final, later)
        assert _step(engine, state.load_in, "iss-1").serial == "2a"  # not given: kept
        with pytest.raises(LookupError):
            _step(engine, state.record_outcome_in, "missing", OpState.ISSUED, final, later)
        assert _step(engine, state.load_in, "missing") is None
    finally:
        engine.dispose()


def test_pending_approvals_are_found_by_partition_and_due_time(engine) -> None:  # type: ignore[no-untyped-def]
    _step(engine, state.begin_attempt_in, _new("a"), NOW)
    _step(engine, state.begin_attempt_in, _new("b"), NOW)
    pending = [StoredRecord("certrail.events", "cert-1", b"{}")]
    _step(engine, state.record_outcome_in, "a", OpState.PENDING, pending, NOW, ca_request_id="R1", next_poll_at=NOW)
    _step(engine, state.record_outcome_in, "b", OpState.PENDING, pending, NOW, ca_request_id="R2", next_poll_at=NOW + timedelta(hours=1))
    assert [op.op_key for op in state.due_pending(engine, {("certrail.commands.emca", 0)}, NOW)] == ["a"]
    assert state.due_pending(engine, {("certrail.commands.emca", 1)}, NOW) == []
    state.schedule_poll(engine, "a", NOW + timedelta(minutes=5), NOW)
    assert state.due_pending(engine, {("certrail.commands.emca", 0)}, NOW) == []
    final = [StoredRecord("certrail.events", "cert-1", b'{"final":1}')]
    _step(engine, state.record_outcome_in, "a", OpState.ISSUED, final, NOW, append=True)
    assert _step(engine, state.load_in, "a").outcome == (pending[0], final[0])


async def test_the_state_writer_commits_the_steps_in_flight_together(engine) -> None:  # type: ignore[no-untyped-def]
    writer = StateWriter(engine)
    keys = [f"iss-{n}" for n in range(40)]
    begun = await asyncio.gather(*(writer.run(state.begin_attempt_in, _new(key), NOW) for key in keys))
    assert [(op.op_key, op.attempts, earlier) for op, earlier in begun] == [(key, 1, False) for key in keys]
    assert writer.steps == 40 and writer.groups < 40  # the first step's group commits alone, the rest together
    records = [StoredRecord("certrail.events", "cert-1", b'{"id":"e1"}')]
    await asyncio.gather(*(writer.run(state.record_outcome_in, key, OpState.ISSUED, records, NOW, serial="1f")
                           for key in keys))
    settled = [_step(engine, state.load_in, key) for key in keys]
    assert all(op.state is OpState.ISSUED and op.outcome == tuple(records) for op in settled)
    stored = _step(engine, state.load_in, "iss-39")  # committed, read back in a transaction of its own
    assert stored is not None and stored.state is OpState.ISSUED and stored.serial == "1f" and not stored.uncertain


async def test_a_failing_step_fails_alone_and_its_group_is_still_written(engine) -> None:  # type: ignore[no-untyped-def]
    writer = StateWriter(engine)
    records = [StoredRecord("certrail.events", "cert-1", b"{}")]
    results = await asyncio.gather(
        writer.run(state.begin_attempt_in, _new("a"), NOW),
        writer.run(state.begin_attempt_in, _new("b"), NOW),
        writer.run(state.record_outcome_in, "missing", OpState.ISSUED, records, NOW),  # no intent: LookupError
        writer.run(state.begin_attempt_in, _new("c"), NOW),
        return_exceptions=True,
    )
    assert isinstance(results[2], LookupError)
    assert [op.op_key for op, _ in (results[0], results[1], results[3])] == ["a", "b", "c"]  # type: ignore[misc]
    assert all(_step(engine, state.load_in, key) is not None for key in ("a", "b", "c"))
    assert _step(engine, state.load_in, "missing") is None


async def test_thread_calls_made_together_share_one_thread_hop_and_keep_their_own_results() -> None:
    """`ThreadCalls` (the issuer verifies the certificates of one emCA answer this way): one worker-thread hop for
    the calls made together, each caller gets its own result, and an exception reaches only its own caller."""
    calls = ThreadCalls()
    threads: list[str] = []

    def work(n: int) -> int:
        threads.append(threading.current_thread().name)
        if n == 3:
            raise ValueError("three")
        return n * n

    results = await asyncio.gather(*(calls.run(work, n) for n in range(6)), return_exceptions=True)
    assert results[:3] == [0, 1, 4] and results[4:] == [16, 25]
    assert isinstance(results[3], ValueError) and str(results[3]) == "three"
    assert calls.groups == 1 and calls.steps == 6  # all six queued in one loop turn: one hop
    assert len(set(threads)) == 1 and threads[0] != threading.current_thread().name  # in a worker thread
    assert await calls.run(work, 7) == 49 and calls.groups == 2  # a later call: a hop of its own
