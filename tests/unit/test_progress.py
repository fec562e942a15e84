"""The progress tracker: when a consumer counts as stalled, what /health and the metrics say."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from services.common.progress import FAILED, RESTART, TRANSIENT, ProgressTracker, retry_delay


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _tracker(stall_after: int = 3) -> tuple[ProgressTracker, CollectorRegistry, Clock]:
    registry = CollectorRegistry()
    clock = Clock()
    tracker = ProgressTracker(registry, "gateway", stall_after=stall_after, clock=clock)
    tracker.register("requests")
    return tracker, registry, clock


def _stalled(registry: CollectorRegistry, consumer: str = "requests") -> float | None:
    return registry.get_sample_value("certrail_consumer_stalled", {"service": "gateway", "consumer": consumer})


def _failures(registry: CollectorRegistry, kind: str) -> float | None:
    return registry.get_sample_value(
        "certrail_consumer_handler_failures_total", {"service": "gateway", "consumer": "requests", "kind": kind}
    )


def test_a_registered_consumer_is_ok_with_zeroed_series() -> None:
    tracker, registry, _ = _tracker()
    assert tracker.checks() == {} and tracker.consumers() == {"requests": "ok"}
    assert _stalled(registry) == 0
    assert _failures(registry, TRANSIENT) == 0 and _failures(registry, FAILED) == 0 and _failures(registry, RESTART) == 0


def test_the_same_offset_failing_n_times_stalls_the_consumer_and_names_it() -> None:
    tracker, registry, clock = _tracker(stall_after=3)
    assert tracker.failed("requests", "certrail.requests", 1, 40, TRANSIENT, "OperationalError: locked") == 1
    assert tracker.failed("requests", "certrail.requests", 1, 40, TRANSIENT, "OperationalError: locked") == 2
    assert _stalled(registry) == 0 and tracker.stalled() == {} and tracker.checks() == {}
    clock.now += 12
    assert tracker.failed("requests", "certrail.requests", 1, 40, TRANSIENT, "OperationalError: gone") == 3
    assert _stalled(registry) == 1
    assert tracker.checks() == {
        "consumer:requests": "stalled: certrail.requests/1@40 failed 3 times in a row for 12s (last: OperationalError: gone)"
    }
    assert _failures(registry, TRANSIENT) == 3


def test_failures_at_different_offsets_do_not_add_up() -> None:
    tracker, registry, _ = _tracker(stall_after=2)
    tracker.failed("requests", "certrail.requests", 0, 1, TRANSIENT, "x")
    tracker.failed("requests", "certrail.requests", 0, 2, TRANSIENT, "x")  # the first one got through
    assert _stalled(registry) == 0


def test_progress_past_the_stuck_offset_clears_the_stall_and_earlier_progress_does_not() -> None:
    tracker, registry, _ = _tracker(stall_after=1)
    tracker.failed("requests", "certrail.requests", 0, 7, TRANSIENT, "x")
    tracker.progressed("requests", "certrail.requests", 0, 7)  # everything before 7: not 7 itself
    tracker.progressed("requests", "certrail.requests", 1, 99)  # another partition
    assert _stalled(registry) == 1
    tracker.progressed("requests", "certrail.requests", 0, 8)
    assert _stalled(registry) == 0 and tracker.checks() == {} and tracker.consumers() == {"requests": "ok"}


def test_a_loop_restarting_in_a_loop_is_stalled_until_it_polls_again() -> None:
    tracker, registry, _ = _tracker(stall_after=2)
    tracker.restarted("requests", "RuntimeError: boom")
    assert _stalled(registry) == 0
    tracker.restarted("requests", "RuntimeError: boom")
    assert _stalled(registry) == 1
    assert "restarted 2 times in a row (last: RuntimeError: boom)" in tracker.consumers()["requests"]
    tracker.polled("requests")
    assert _stalled(registry) == 0 and _failures(registry, RESTART) == 2


def test_lag_per_partition_never_negative() -> None:
    tracker, registry, _ = _tracker()
    tracker.set_lag("requests", "certrail.requests", 3, 12)
    tracker.set_lag("requests", "certrail.requests", 4, -1)
    labels = {"service": "gateway", "consumer": "requests", "topic": "certrail.requests"}
    assert registry.get_sample_value("certrail_consumer_lag_records", {**labels, "partition": "3"}) == 12
    assert registry.get_sample_value("certrail_consumer_lag_records", {**labels, "partition": "4"}) == 0


@pytest.mark.parametrize(("failures", "delay"), [(0, 0.2), (1, 0.2), (2, 0.4), (5, 3.2), (9, 30.0), (10_000, 30.0)])
def test_retry_delay_doubles_up_to_the_cap(failures: int, delay: float) -> None:
    assert retry_delay(failures, initial_s=0.2, max_s=30.0) == pytest.approx(delay)


def test_stall_after_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ProgressTracker(CollectorRegistry(), "x", stall_after=0)
