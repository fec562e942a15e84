"""Is every consumer making progress? One small tracker per service, fed by the FastStream edge
(gateway, deployer) and by the runtime's keyed loop (issuer, auditor), read by ``GET /health``.

A consumer is *stalled* when the same record (topic, partition, offset) has failed
``stall_after`` times in a row, or when its loop has restarted ``stall_after`` times without
consuming anything in between. Handling that record (or any later offset of that partition),
or a loop that polls again, clears it. Metrics (one name and label set for every service):

- ``certrail_consumer_stalled{service,consumer}``: 1 while stalled, else 0 (alert on it);
- ``certrail_consumer_handler_failures_total{service,consumer,kind}``: ``transient``
  (database, Kafka, network: retried, never dead-lettered), ``failed`` (anything else: retried
  up to the attempt limit, then dead-lettered with HANDLER_FAILED), ``restart`` (the loop died);
- per partition, ``{service,consumer,topic,partition}`` (services/common/consumer_positions.py):
  ``certrail_consumer_lag_records`` (records between the consumer's position, the first unfinished
  offset, and the partition's end), ``certrail_consumer_oldest_unprocessed_age_seconds`` and
  ``certrail_consumer_no_progress_seconds`` (records waiting while the position does not move).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.exc import StatementError

from services.common.consumer_positions import Assignment, ConsumerPositions
from services.common.contracts.redaction import contains_private_key

#: what counts as a failure, for ``certrail_consumer_handler_failures_total``
TRANSIENT = "transient"
FAILED = "failed"
RESTART = "restart"


@dataclass
class Stuck:
    """One partition whose next record keeps failing."""

    topic: str
    partition: int
    offset: int
    failures: int
    error: str  # the last failure's type and message (never a secret: exception texts of our own code)
    since: float


def retry_delay(failures: int, *, initial_s: float = 0.2, max_s: float = 30.0) -> float:
    """Capped exponential backoff before retrying after the ``failures``-th failure in a row."""
    return min(max_s, initial_s * 2.0 ** min(max(failures - 1, 0), 16))


def describe(exc: BaseException) -> str:
    """A failure as the health check, a log line or a dead letter shows it: its type and the first
    line of its message, bounded; for a SQL statement's failure the driver's message only (never
    the statement's parameters, which may hold anything), and private-key blocks never."""
    message = str(getattr(exc, "orig", None) or exc) if isinstance(exc, StatementError) else str(exc)
    first_line = message.strip().splitlines()[0] if message.strip() else ""
    if contains_private_key(first_line.encode("utf-8", errors="replace")) or "PRIVATE KEY" in first_line:
        first_line = "(message withheld: it holds key material)"
    text = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


class ProgressTracker:
    def __init__(
        self, registry: CollectorRegistry, service: str, *, stall_after: int = 3, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if stall_after < 1:
            raise ValueError("stall_after must be at least 1")
        self.service = service
        self.stall_after = stall_after
        self._clock = clock
        self._stuck: dict[str, dict[tuple[str, int], Stuck]] = {}
        self._restarts: dict[str, tuple[int, str]] = {}
        self.stalled_gauge = Gauge(
            "certrail_consumer_stalled",
            "1 while a consumer cannot make progress (the same record failing again and again, or its loop restarting).",
            ["service", "consumer"], registry=registry,
        )
        self.failures = Counter(
            "certrail_consumer_handler_failures_total",
            "Failures handling a consumed record, by kind: transient (retried), failed (dead-lettered after the "
            "attempt limit), restart (the consumer loop restarted).",
            ["service", "consumer", "kind"], registry=registry,
        )
        self.positions = ConsumerPositions(service, clock=clock)
        registry.register(self.positions)

    def register(self, consumer: str, assignment: Assignment | None = None) -> None:
        """Make the consumer's series exist (stalled 0) before anything happens; ``assignment`` says which
        partitions it holds now (the positions of the others are forgotten)."""
        self._stuck.setdefault(consumer, {})
        self.positions.track(consumer, assignment)
        self.stalled_gauge.labels(self.service, consumer).set(0)
        for kind in (TRANSIENT, FAILED, RESTART):
            self.failures.labels(self.service, consumer, kind)

    # -- what the consumers report ------------------------------------------------------------------

    def failed(self, consumer: str, topic: str, partition: int, offset: int, kind: str, error: str) -> int:
        """The record at ``offset`` failed (``kind``); returns how many times in a row it has."""
        self.failures.labels(self.service, consumer, kind).inc()
        stuck = self._stuck.setdefault(consumer, {})
        entry = stuck.get((topic, partition))
        if entry is None or entry.offset != offset:
            entry = Stuck(topic, partition, offset, 0, error, self._clock())
            stuck[(topic, partition)] = entry
        entry.failures += 1
        entry.error = error
        self._refresh(consumer)
        return entry.failures

    def attempt_failed(self, consumer: str, kind: str = FAILED) -> None:
        """A handler attempt failed and is retried in place (counted; the record is not stuck yet)."""
        self.failures.labels(self.service, consumer, kind).inc()

    def progressed(self, consumer: str, topic: str, partition: int, next_offset: int) -> None:
        """Everything before ``next_offset`` of that partition is done."""
        stuck = self._stuck.setdefault(consumer, {})
        entry = stuck.get((topic, partition))
        if entry is not None and next_offset > entry.offset:
            del stuck[(topic, partition)]
        self._restarts.pop(consumer, None)
        self._refresh(consumer)
        self.positions.progressed(consumer, topic, partition, next_offset)

    def fetched(self, consumer: str, topic: str, partition: int, offset: int, timestamp_ms: int | None) -> None:
        """The record at ``offset`` (Kafka timestamp ``timestamp_ms``) was fetched and is not finished yet."""
        self.positions.fetched(consumer, topic, partition, offset, timestamp_ms)

    def held(self, consumer: str, topic: str, partition: int) -> None:
        """The service holds the partition on purpose (paused while its connector is down): not a stall."""
        self.positions.held(consumer, topic, partition)

    def restarted(self, consumer: str, error: str) -> int:
        """The consumer's loop failed and starts again; returns the restarts in a row."""
        self.failures.labels(self.service, consumer, RESTART).inc()
        count = self._restarts.get(consumer, (0, ""))[0] + 1
        self._restarts[consumer] = (count, error)
        self._refresh(consumer)
        return count

    def polled(self, consumer: str) -> None:
        """The consumer's loop fetched from Kafka: it is running, whatever it restarted from."""
        if self._restarts.pop(consumer, None) is not None:
            self._refresh(consumer)

    def set_lag(self, consumer: str, topic: str, partition: int, records: int) -> None:
        self.positions.set_lag(consumer, topic, partition, records)

    # -- what /health reads -------------------------------------------------------------------------

    def stalled(self) -> dict[str, str]:
        """Each stalled consumer and why (for /health: its check fails with this text)."""
        verdicts: dict[str, str] = {}
        for consumer in sorted(set(self._stuck) | set(self._restarts)):
            reasons = [
                f"{entry.topic}/{entry.partition}@{entry.offset} failed {entry.failures} times in a row "
                f"for {self._clock() - entry.since:.0f}s (last: {entry.error})"
                for entry in sorted(self._stuck.get(consumer, {}).values(), key=lambda e: (e.topic, e.partition))
                if entry.failures >= self.stall_after
            ]
            restarts, error = self._restarts.get(consumer, (0, ""))
            if restarts >= self.stall_after:
                reasons.append(f"the consumer loop restarted {restarts} times in a row (last: {error})")
            if reasons:
                verdicts[consumer] = "stalled: " + "; ".join(reasons)
        return verdicts

    def checks(self) -> dict[str, str]:
        """The failing /health checks: ``consumer:<name>`` for each stalled consumer, saying why."""
        return {f"consumer:{name}": verdict for name, verdict in self.stalled().items()}

    def consumers(self) -> dict[str, str]:
        """Every consumer's verdict for /health: ``ok`` or why it is stalled."""
        stalled = self.stalled()
        return {name: stalled.get(name, "ok") for name in sorted(set(self._stuck) | set(self._restarts))}

    def _refresh(self, consumer: str) -> None:
        stuck = any(e.failures >= self.stall_after for e in self._stuck.get(consumer, {}).values())
        restarting = self._restarts.get(consumer, (0, ""))[0] >= self.stall_after
        self.stalled_gauge.labels(self.service, consumer).set(1 if stuck or restarting else 0)
