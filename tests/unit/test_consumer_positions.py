"""Lag, oldest unprocessed record's age and "no progress" per partition, the same for every
consumer (services/common/consumer_positions.py), read at scrape time with the clocks passed in."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry

from services.common.consumer_positions import ConsumerPositions, TopicPartitionLike
from services.common.progress import ProgressTracker


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TP:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition


TOPIC = "certrail.requests"


def _positions(assignment: list[TP] | None = None) -> tuple[ConsumerPositions, CollectorRegistry, Clock, Clock]:
    clock, wall = Clock(100.0), Clock(1_000_000.0)
    positions = ConsumerPositions("gateway", clock=clock, wall=wall)
    registry = CollectorRegistry()
    registry.register(positions)

    def assigned() -> Iterable[TopicPartitionLike] | None:
        return assignment

    positions.track("requests", assigned)
    return positions, registry, clock, wall


def _sample(registry: CollectorRegistry, name: str, partition: int = 0) -> float | None:
    return registry.get_sample_value(name, {"service": "gateway", "consumer": "requests", "topic": TOPIC,
                                            "partition": str(partition)})


def test_a_record_that_never_finishes_ages_and_shows_no_progress_while_the_lag_reads_the_same() -> None:
    positions, registry, clock, wall = _positions()
    positions.progressed("requests", TOPIC, 0, 10)  # caught up at offset 10, long ago
    positions.set_lag("requests", TOPIC, 0, 0)
    clock.now += 3600
    wall.now += 3600
    assert _sample(registry, "certrail_consumer_no_progress_seconds") == 0  # idle is not stuck
    positions.fetched("requests", TOPIC, 0, 10, int((wall.now - 5) * 1000))  # produced 5 s ago, handled now
    positions.set_lag("requests", TOPIC, 0, 1)
    clock.now += 40
    wall.now += 40
    assert _sample(registry, "certrail_consumer_oldest_unprocessed_age_seconds") == 45
    assert _sample(registry, "certrail_consumer_no_progress_seconds") == 40  # counted from when it started waiting
    assert _sample(registry, "certrail_consumer_lag_records") == 1
    positions.fetched("requests", TOPIC, 0, 10, int(wall.now * 1000))  # the same batch fetched again: known
    positions.progressed("requests", TOPIC, 0, 11)
    positions.set_lag("requests", TOPIC, 0, 0)
    assert _sample(registry, "certrail_consumer_oldest_unprocessed_age_seconds") == 0
    assert _sample(registry, "certrail_consumer_no_progress_seconds") == 0


def test_progress_restarts_the_count_and_a_held_partition_is_not_a_stall() -> None:
    positions, registry, clock, _ = _positions()
    positions.set_lag("requests", TOPIC, 0, 50)
    clock.now += 30
    positions.progressed("requests", TOPIC, 0, 20)
    clock.now += 10
    assert _sample(registry, "certrail_consumer_no_progress_seconds") == 10
    positions.progressed("requests", TOPIC, 0, 20)  # the same position again (a commit that did not move)
    clock.now += 10
    assert _sample(registry, "certrail_consumer_no_progress_seconds") == 20
    positions.held("requests", TOPIC, 0)  # paused on purpose (its connector is down)
    clock.now += 5
    assert _sample(registry, "certrail_consumer_no_progress_seconds") == 5


def test_partitions_no_longer_assigned_disappear() -> None:
    assignment = [TP(TOPIC, 0), TP(TOPIC, 1)]
    positions, registry, _, _ = _positions(assignment)
    positions.set_lag("requests", TOPIC, 0, 3)
    positions.set_lag("requests", TOPIC, 1, 4)
    assert _sample(registry, "certrail_consumer_lag_records", 1) == 4
    assignment.pop()
    assert _sample(registry, "certrail_consumer_lag_records", 1) is None
    assert _sample(registry, "certrail_consumer_lag_records", 0) == 3


def test_the_tracker_exports_the_positions_under_its_service() -> None:
    registry = CollectorRegistry(auto_describe=True)
    tracker = ProgressTracker(registry, "deployer")
    tracker.register("provisioning")
    tracker.fetched("provisioning", "certrail.provisioning", 2, 7, None)  # no timestamp: age unknown, 0
    labels = {"service": "deployer", "consumer": "provisioning", "topic": "certrail.provisioning", "partition": "2"}
    assert registry.get_sample_value("certrail_consumer_oldest_unprocessed_age_seconds", labels) == 0
    assert registry.get_sample_value("certrail_consumer_no_progress_seconds", labels) is not None
    tracker.progressed("provisioning", "certrail.provisioning", 2, 8)
    assert registry.get_sample_value("certrail_consumer_no_progress_seconds", labels) == 0
