"""Where each consumer stands on each of its partitions, exported at scrape time (so an age keeps
growing while nothing happens, and a partition that moved to another instance disappears). One
metric name and label set ``{service, consumer, topic, partition}`` for every consumer of every
service (fed through `services.common.progress.ProgressTracker`):

- ``certrail_consumer_lag_records``: records between the consumer's position (its first unfinished
  offset) and the end of the partition (the latest reading);
- ``certrail_consumer_oldest_unprocessed_age_seconds``: age (from its Kafka timestamp) of the first
  fetched record not yet finished; 0 when none waits;
- ``certrail_consumer_no_progress_seconds``: how long records have been waiting (lag or a fetched,
  unfinished record) without the position moving; 0 while nothing waits, and restarted while the
  service holds the partition on purpose (the issuer's connector is down or misconfigured: those
  have their own alerts).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LABELS = ["service", "consumer", "topic", "partition"]


class TopicPartitionLike(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...


#: what a consumer says it is assigned (None: it cannot tell; nothing is filtered)
Assignment = Callable[[], Iterable[TopicPartitionLike] | None]


@dataclass
class Position:
    since: float  # monotonic time since which records have waited without the position moving
    lag: int = 0
    position: int | None = None  # the first unfinished offset, as last reported
    fetched: deque[tuple[int, int]] = field(default_factory=deque)  # (offset, timestamp ms) not yet finished

    def waiting(self) -> bool:
        return self.lag > 0 or bool(self.fetched)


class ConsumerPositions(Collector):
    def __init__(self, service: str, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.service = service
        self._clock = clock
        self._wall = wall
        self._positions: dict[tuple[str, str, int], Position] = {}
        self._assignments: dict[str, Assignment] = {}

    def track(self, consumer: str, assignment: Assignment | None) -> None:
        if assignment is not None:
            self._assignments[consumer] = assignment

    def _get(self, consumer: str, topic: str, partition: int) -> Position:
        key = (consumer, topic, partition)
        position = self._positions.get(key)
        if position is None:
            position = self._positions[key] = Position(since=self._clock())
        return position

    def _waits_from_now_if_idle(self, position: Position) -> None:
        if not position.waiting():
            position.since = self._clock()

    def fetched(self, consumer: str, topic: str, partition: int, offset: int, timestamp_ms: int | None) -> None:
        position = self._get(consumer, topic, partition)
        if position.position is not None and offset < position.position:
            return  # already finished (a redelivery)
        if position.fetched and offset <= position.fetched[-1][0]:
            return  # fetched again (a retried batch): known
        self._waits_from_now_if_idle(position)
        position.fetched.append((offset, timestamp_ms if timestamp_ms and timestamp_ms > 0 else 0))

    def progressed(self, consumer: str, topic: str, partition: int, next_offset: int) -> None:
        position = self._get(consumer, topic, partition)
        if position.position is None or next_offset > position.position:
            position.position = next_offset
            position.since = self._clock()
        while position.fetched and position.fetched[0][0] < next_offset:
            position.fetched.popleft()

    def set_lag(self, consumer: str, topic: str, partition: int, records: int) -> None:
        position = self._get(consumer, topic, partition)
        if records > 0:
            self._waits_from_now_if_idle(position)
        position.lag = max(0, records)

    def held(self, consumer: str, topic: str, partition: int) -> None:
        """The service holds this partition on purpose (paused): not a stall."""
        self._get(consumer, topic, partition).since = self._clock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily("certrail_consumer_lag_records", "Records between the consumer's position (its first "
                                "unfinished offset) and the end of the partition.", labels=LABELS)
        age = GaugeMetricFamily("certrail_consumer_oldest_unprocessed_age_seconds", "Age (from its Kafka timestamp) of "
                                "the first fetched record not yet finished; 0 when none waits.", labels=LABELS)
        stuck = GaugeMetricFamily("certrail_consumer_no_progress_seconds", "How long records have waited (lag, or a "
                                  "fetched record not finished) without the consumer's position moving; 0 when none "
                                  "waits or while the service holds the partition on purpose.", labels=LABELS)
        now, wall = self._clock(), self._wall()
        for (consumer, topic, partition), position in self._current():
            labels = [self.service, consumer, topic, str(partition)]
            lag.add_metric(labels, position.lag)
            oldest = position.fetched[0][1] if position.fetched else 0
            age.add_metric(labels, max(0.0, wall - oldest / 1000) if oldest else 0.0)
            stuck.add_metric(labels, max(0.0, now - position.since) if position.waiting() else 0.0)
        yield from (lag, age, stuck)

    def _current(self) -> list[tuple[tuple[str, str, int], Position]]:
        """The positions of partitions still assigned (the others are forgotten)."""
        assigned: dict[str, set[tuple[str, int]] | None] = {}
        for consumer, assignment in list(self._assignments.items()):
            partitions = assignment()
            assigned[consumer] = None if partitions is None else {(tp.topic, tp.partition) for tp in partitions}
        current = []
        for key, position in list(self._positions.items()):
            partitions = assigned.get(key[0])
            if partitions is not None and (key[1], key[2]) not in partitions:
                self._positions.pop(key, None)
                continue
            current.append((key, position))
        return current

    def describe(self) -> list[Any]:
        return []
