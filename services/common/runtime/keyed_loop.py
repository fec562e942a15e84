"""The keyed consumer loop of the service runtime (decision 0017): an aiokafka consumer whose
records run as tasks, one after the other per key, keys concurrently, committed per partition at
the lowest unfinished offset. Generalised from the issuer's command loop (decision 0007), which
is now built on it (services/issuer/consumer_loop.py).

- one consumer subscribed to fixed topics or a pattern (a new matching topic is picked up within
  ``topic_refresh_interval_ms``); auto-commit off;
- every fetched record becomes a task; records with the same key on a topic run one after the
  other, others concurrently;
- each partition commits only its lowest unfinished offset: a record that waits holds the commit
  point, so nothing past it is committed, and a crash redelivers exactly what was not finished;
- a partition is paused while `KeyedLoop.must_wait` says so (the issuer: the connector of its
  topic is down or misconfigured) or while it has ``max_in_flight_per_partition`` records in
  flight (back-pressure); the loop keeps polling and heartbeating;
- when partitions are revoked, records outside a critical section stop (`Revoked`), records
  inside one (`Work.critical_section`) get ``revoke_grace_s`` to finish, and the finished offsets
  are committed before the partitions move;
- a record whose handler raises is retried with backoff; after ``poison_attempts`` failures that
  are not transient trouble (services/common/failures.py) it is dead-lettered with
  HANDLER_FAILED so the partition never stalls on it; transient trouble is retried for as long
  as it lasts; the progress tracker (services/common/progress.py) reports the loop stalled when
  the same record keeps failing or the loop keeps restarting, with every partition's lag.

A service subclasses `KeyedLoop` and provides `handle` (one record) and `dead_letter`; it may
override `must_wait`, `observe` (its own metrics, once a second), `side_tasks` (coroutines that
run while the consumer runs) and `on_error`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from services.common.consumer import InboundRecord
from services.common.failures import is_transient
from services.common.kafka_config import consumer_kwargs
from services.common.progress import FAILED, TRANSIENT, ProgressTracker, describe
from services.common.settings import KafkaSettings

log = logging.getLogger(__name__)


def inbound_record(record: ConsumerRecord) -> InboundRecord:
    """An aiokafka record as the runtime hands it over."""
    return InboundRecord(
        topic=record.topic, partition=record.partition, offset=record.offset, value=record.value, key=record.key,
        timestamp_ms=record.timestamp, timestamp_type=record.timestamp_type,
        headers=tuple((k, bytes(v or b"")) for k, v in (record.headers or ())),
    )


class Revoked(Exception):
    """The record's partition was revoked before it reached a critical section: the next owner does it."""


class Work:
    """One record in flight. Its partition may be revoked: before a critical section the record
    stops; inside one (an emCA call, recording, publishing) it is left to finish."""

    def __init__(self) -> None:
        self.revoked = False
        self.critical = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def check(self) -> None:
        if self.revoked:
            raise Revoked()

    @asynccontextmanager
    async def critical_section(self) -> Any:
        self.check()
        self.critical += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.critical -= 1
            if self.critical == 0:
                self.idle.set()


@dataclass(frozen=True)
class LoopSettings:
    group_id: str
    poll_timeout_ms: int = 200
    max_poll_records: int = 500
    topic_refresh_interval_ms: int = 10_000
    max_in_flight_per_partition: int = 200
    max_in_flight: int | None = None  # records in flight on all partitions together (None: no bound but theirs)
    revoke_grace_s: float = 20.0
    poison_attempts: int = 5
    retry_backoff_initial_s: float = 0.2
    retry_backoff_max_s: float = 30.0
    pending_poll_interval_s: float = 2.0  # the issuer's approval polling (a side task of its loop)
    commit_interval_s: float = 0.2
    #: fetch-batch mode: a batch of fewer than ``linger_below`` records waits this long before it starts, and what
    #: is fetched meanwhile joins it (fewer, larger batches at moderate load, for that much latency more per stage)
    batch_linger_s: float = 0.0
    linger_below: int = 100


@dataclass
class InFlight:
    work: Work
    task: asyncio.Task[None]
    timestamp_ms: int


@dataclass
class Partition:
    """Offsets fetched on one partition, in order, and which of them are finished."""

    order: list[int] = field(default_factory=list)
    head: int = 0  # index of the first unfinished entry in ``order``
    done: set[int] = field(default_factory=set)
    in_flight: dict[int, InFlight] = field(default_factory=dict)
    committed: int | None = None  # the offset last committed (the next to read)

    def add(self, offset: int, entry: InFlight) -> None:
        self.order.append(offset)
        self.in_flight[offset] = entry

    def finish(self, offset: int) -> None:
        self.done.add(offset)
        self.in_flight.pop(offset, None)

    def position(self) -> int | None:
        """The first offset not finished as far as the lag counts: the committed offset, or, before the first
        commit, the first offset fetched (None: nothing fetched or committed yet)."""
        if self.committed is not None:
            return self.committed
        return self.order[self.head] if self.head < len(self.order) else None

    def commit_point(self) -> int | None:
        """The lowest unfinished offset (or one past the last finished), if it advanced."""
        advanced: int | None = None
        while self.head < len(self.order) and self.order[self.head] in self.done:
            offset = self.order[self.head]
            self.done.discard(offset)
            self.head += 1
            advanced = offset + 1
        if self.head > 1024:  # forget what was committed
            del self.order[: self.head]
            self.head = 0
        if advanced is None or (self.committed is not None and advanced <= self.committed):
            return None
        return advanced


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, loop: KeyedLoop, consumer: AIOKafkaConsumer) -> None:
        self._loop = loop
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._loop.release(self._consumer, set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self._loop.partitions.setdefault(tp, Partition())
        self._loop.assigned = frozenset(self._consumer.assignment())
        self._loop.on_assigned(self._consumer)
        log.info("%s partitions assigned: %s", self._loop.consumer_name,
                 ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(assigned)) or "none")


class KeyedLoop:
    """See the module docstring. ``topics`` or ``pattern`` says what to consume; ``consumer_name``
    is how the progress tracker and /health name it."""

    def __init__(self, *, kafka: KafkaSettings, settings: LoopSettings, consumer_name: str,
                 topics: Sequence[str] = (), pattern: str | None = None, clock: Callable[[], datetime],
                 progress: ProgressTracker | None = None) -> None:
        if bool(topics) == bool(pattern):
            raise ValueError("give the loop topics or a pattern, not both")
        self._kafka = kafka
        self._settings = settings
        self.consumer_name = consumer_name
        self.subscribed_topics = tuple(topics)
        self.pattern = pattern
        self._clock = clock
        self.progress = progress
        self.assigned: frozenset[TopicPartition] = frozenset()
        if progress is not None:
            progress.register(consumer_name, assignment=lambda: self.assigned)
        self.partitions: dict[TopicPartition, Partition] = {}
        self._tails: dict[tuple[str, bytes | int], asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._finished_one = asyncio.Event()  # set when a record (or batch) finishes
        self._consumer: AIOKafkaConsumer | None = None  # while one runs
        self._failures = 0
        self._last_commit = 0.0
        self._last_metrics = 0.0
        self.finished = 0
        self.running = False

    # -- what a service provides -------------------------------------------------------------------------

    async def handle(self, record: InboundRecord, work: Work) -> None:
        """Handle one record (raise `Revoked` to stop it because its partition moved)."""
        raise NotImplementedError

    async def dead_letter(self, record: InboundRecord, reason: str) -> bool:
        """Dead-letter a record that failed ``poison_attempts`` times; False: it was not (retry it)."""
        raise NotImplementedError

    def must_wait(self, tp: TopicPartition) -> bool:  # noqa: ARG002 - a hook
        """Whether ``tp`` must be paused for a reason of the service's (besides back-pressure)."""
        return False

    def on_error(self) -> None:
        """A handler raised (counted by the service)."""

    def failure(self, exc: BaseException, records: list[InboundRecord]) -> tuple[InboundRecord, bool, BaseException]:
        """What a handler's exception says: the record that failed, whether the trouble is transient, its cause."""
        return records[0], is_transient(exc), exc

    def on_assigned(self, consumer: AIOKafkaConsumer) -> None:
        """Partitions were assigned (the service's metrics)."""

    def on_committed(self, seconds: float) -> None:
        """Offsets were committed, taking ``seconds`` (the service's metrics)."""

    def observe(self, consumer: AIOKafkaConsumer) -> None:
        """Once a second: the service's own metrics of the partitions (`partitions`, `assigned`)."""

    def side_tasks(self) -> Mapping[str, Callable[[], Coroutine[Any, Any, None]]]:
        """Coroutines (by task name) that run while a consumer runs, cancelled when it stops."""
        return {}

    # -- lifecycle -------------------------------------------------------------------------------------

    #: how pausing and resuming partitions is logged (a loop paused by back-pressure at every batch logs it at DEBUG)
    _pause_log_level = logging.INFO

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            consumer = AIOKafkaConsumer(  # subscribed below, with the rebalance listener
                **consumer_kwargs(self._kafka, self._settings.group_id),
                metadata_max_age_ms=self._settings.topic_refresh_interval_ms,
                max_poll_records=self._settings.max_poll_records,
            )
            if self.pattern is not None:
                consumer.subscribe(pattern=self.pattern, listener=_Rebalance(self, consumer))
            else:
                consumer.subscribe(topics=list(self.subscribed_topics), listener=_Rebalance(self, consumer))
            sides = [asyncio.create_task(make(), name=name) for name, make in self.side_tasks().items()]
            try:
                await consumer.start()
                self._consumer = consumer
                self.running = True
                self._failures = 0
                await self._consume(consumer)
            except KafkaError as exc:
                log.warning("Kafka consumer %s failed (%s: %s); reconnecting", self.consumer_name, type(exc).__name__, exc)
                self._restarted(exc)
                await self._backoff()
            except Exception as exc:  # noqa: BLE001 - the service must keep running: log, back off, start a new consumer
                log.exception("the consumer loop %s failed; restarting it", self.consumer_name)
                self._restarted(exc)
                await self._backoff()
            finally:
                self.running = False
                self._consumer = None
                for side in sides:
                    side.cancel()
                await asyncio.gather(*sides, return_exceptions=True)
                try:
                    await self.release(consumer, set(self.partitions))
                finally:
                    await consumer.stop()

    def _restarted(self, exc: BaseException) -> None:
        if self.progress is not None:
            self.progress.restarted(self.consumer_name, describe(exc))

    async def _backoff(self) -> None:
        delay = min(self._settings.retry_backoff_max_s, 0.5 * 2**self._failures)
        self._failures += 1
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            pass

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping.is_set():
            assigned = consumer.assignment()
            if assigned and consumer.paused() >= assigned:
                # every partition waits (back-pressure, a connector down): a fetch would wait poll_timeout_ms for
                # nothing, so wait for a record to finish instead; then poll without waiting, which returns at once
                # and keeps the consumer's poll interval (max_poll_interval_ms) fresh however long the wait lasts
                self._finished_one.clear()
                try:
                    await asyncio.wait_for(self._finished_one.wait(), self._settings.poll_timeout_ms / 1000)
                except TimeoutError:
                    pass
                fetched = await consumer.getmany(timeout_ms=0, max_records=self._settings.max_poll_records)
            else:
                fetched = await consumer.getmany(timeout_ms=self._settings.poll_timeout_ms,
                                                 max_records=self._settings.max_poll_records)
            if self.progress is not None:
                self.progress.polled(self.consumer_name)
            self._start_fetched_all(fetched)
            self._apply_pauses(consumer)
            await self._commit(consumer)
            self._observe(consumer)

    # -- running records ---------------------------------------------------------------------------------

    def _start_fetched_all(self, fetched: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Start what a fetch asks for, partition by partition (`_start_fetched`)."""
        for tp, records in fetched.items():
            self._start_fetched(self.partitions.setdefault(tp, Partition()), records)

    def _start_fetched(self, partition: Partition, records: list[ConsumerRecord]) -> None:
        """Start what ``records`` (fetched on one partition, in offset order) ask for: a task per record, chained per key."""
        for record in records:
            inbound = inbound_record(record)
            work = Work()
            self._chain((record.topic, record.key or b""), [(partition, [inbound])], work,
                        functools.partial(self.handle, inbound, work), poison=True)

    def _chain(self, key: tuple[str, bytes | int], parts: list[tuple[Partition, list[InboundRecord]]], work: Work,
               call: Callable[[], Coroutine[Any, Any, None]], *, poison: bool) -> asyncio.Task[None]:
        """One task for the records of ``parts`` (``call()`` handles them; each part: a partition and its
        records in offset order), after the task last chained under ``key``."""
        first = parts[0][1][0]
        previous = self._tails.get(key)
        task = asyncio.create_task(self._run(parts, work, previous, call, poison=poison),
                                   name=f"{self.consumer_name}-{first.topic}-{first.offset}")
        self._tails[key] = task
        task.add_done_callback(lambda done: self._forget_tail(key, done))
        for partition, records in parts:
            for record in records:
                partition.add(record.offset, InFlight(work, task, record.timestamp_ms or 0))
            if self.progress is not None:
                head = records[0]
                self.progress.fetched(self.consumer_name, head.topic, head.partition, head.offset, head.timestamp_ms)
        return task

    def _forget_tail(self, key: tuple[str, bytes | int], done: asyncio.Task[None]) -> None:
        if self._tails.get(key) is done:
            del self._tails[key]

    async def _run(self, parts: list[tuple[Partition, list[InboundRecord]]], work: Work,
                   previous: asyncio.Task[None] | None, call: Callable[[], Coroutine[Any, Any, None]], *,
                   poison: bool) -> None:
        """Runs ``call`` until it succeeds; ``poison``: dead-letter the first record after ``poison_attempts``
        failures that are not transient (else it is retried for as long as it fails, reported stalled)."""
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # per-key order; its failure is its own
        failures = poisoned = 0
        while True:
            try:
                work.check()
                await call()
                break
            except Revoked:
                return
            except Exception as exc:  # noqa: BLE001 - a bug or a poison record must not stop the partition
                self.on_error()
                failures += 1
                # read now: a fetch-batch may have grown while it waited (fetch_batches.py)
                record, transient, cause = self.failure(exc, [record for _, part in parts for record in part])
                if transient:  # database, Kafka, network: retried for as long as it lasts, never dead-lettered
                    log.warning("%s %s/%d@%d: %s; retrying", self.consumer_name, record.topic, record.partition,
                                record.offset, describe(cause))
                    self._failed(record, TRANSIENT, cause)
                else:
                    poisoned += 1
                    log.exception("%s %s/%d@%d failed unexpectedly (%d/%d)", self.consumer_name, record.topic,
                                  record.partition, record.offset, poisoned, self._settings.poison_attempts)
                    self._failed(record, FAILED, cause)
                    if poison and poisoned >= self._settings.poison_attempts and await self._poison(record, exc):
                        break
            await asyncio.sleep(min(self._settings.retry_backoff_max_s,
                                    self._settings.retry_backoff_initial_s * 2**min(failures, 10)))
            if work.revoked:
                return
        for partition, part in parts:
            for done in part:
                partition.finish(done.offset)
            self.finished += len(part)
        self._finished_one.set()

    def _failed(self, record: InboundRecord, kind: str, exc: BaseException) -> None:
        if self.progress is not None:
            self.progress.failed(self.consumer_name, record.topic, record.partition, record.offset, kind, describe(exc))
            if self._consumer is not None:  # the lag behind a stuck record, now rather than at the next refresh
                self._report_lag(self._consumer, TopicPartition(record.topic, record.partition))

    async def _poison(self, record: InboundRecord, exc: Exception) -> bool:
        reason = f"failed on this record {self._settings.poison_attempts} times: {describe(exc)}"
        try:
            return await self.dead_letter(record, reason)
        except Exception:  # noqa: BLE001 - not dead-lettered: keep retrying the record
            log.exception("dead-lettering a poison record failed")
            return False

    # -- pausing, committing, releasing ---------------------------------------------------------------------

    def _apply_pauses(self, consumer: AIOKafkaConsumer) -> None:
        assigned = consumer.assignment()
        paused = consumer.paused()
        to_pause, to_resume = [], []
        bound = self._settings.max_in_flight
        full = bound is not None and sum(len(p.in_flight) for p in self.partitions.values()) >= bound
        for tp in assigned:
            partition = self.partitions.get(tp)
            busy = partition is not None and len(partition.in_flight) >= self._settings.max_in_flight_per_partition
            wait = full or busy or self.must_wait(tp)
            if wait and tp not in paused:
                to_pause.append(tp)
            elif not wait and tp in paused:
                to_resume.append(tp)
        if to_pause:
            consumer.pause(*to_pause)
            log.log(self._pause_log_level, "paused %s", ", ".join(f"{tp.topic}/{tp.partition}" for tp in to_pause))
        if to_resume:
            consumer.resume(*to_resume)
            log.log(self._pause_log_level, "resumed %s", ", ".join(f"{tp.topic}/{tp.partition}" for tp in to_resume))

    async def _commit(self, consumer: AIOKafkaConsumer, *, force: bool = False,
                      only: set[TopicPartition] | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < self._settings.commit_interval_s:
            return
        self._last_commit = now
        offsets: dict[TopicPartition, int] = {}
        for tp, partition in self.partitions.items():
            if only is not None and tp not in only:
                continue
            point = partition.commit_point()
            if point is not None:
                offsets[tp] = point
        if not offsets:
            return
        started = time.perf_counter()
        try:
            await consumer.commit(offsets)
            self.on_committed(time.perf_counter() - started)
        except (CommitFailedError, IllegalStateError) as exc:
            # the group moved on: the next owner redoes these records, and the recorded outcomes make that a replay
            log.warning("offsets not committed (%s)", exc)
            return
        for tp, offset in offsets.items():
            if tp in self.partitions:
                self.partitions[tp].committed = offset
            if self.progress is not None:  # everything before the commit point is finished
                self.progress.progressed(self.consumer_name, tp.topic, tp.partition, offset)
                self._report_lag(consumer, tp)

    async def release(self, consumer: AIOKafkaConsumer, revoked: set[TopicPartition]) -> None:
        """Partitions are leaving: stop what has not reached a critical section, let critical
        sections finish, commit what is finished, forget the rest (the next owner redoes it)."""
        entries = [entry for tp in revoked if tp in self.partitions for entry in self.partitions[tp].in_flight.values()]
        for entry in entries:
            entry.work.revoked = True
            if entry.work.critical == 0:
                entry.task.cancel()
        critical = [entry.task for entry in entries if not entry.task.done()]
        if critical:
            _, still = await asyncio.wait(critical, timeout=self._settings.revoke_grace_s)
            for task in still:
                task.cancel()
            if still:
                log.warning("%d records did not finish within %.0fs of their partitions being revoked",
                            len(still), self._settings.revoke_grace_s)
                await asyncio.gather(*still, return_exceptions=True)
        await self._commit(consumer, force=True, only=revoked)
        for tp in revoked:
            self.partitions.pop(tp, None)
        self.assigned = self.assigned - revoked
        if revoked:
            log.info("%s partitions released: %d", self.consumer_name, len(revoked))

    # -- metrics ---------------------------------------------------------------------------------------------

    def _report_lag(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """``tp``'s lag: records between the first unfinished one and the partition's end."""
        partition = self.partitions.get(tp)
        highwater = consumer.highwater(tp)
        position = partition.position() if partition is not None else None
        if self.progress is not None and highwater is not None and position is not None:
            self.progress.set_lag(self.consumer_name, tp.topic, tp.partition, highwater - position)

    def _observe(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        if now - self._last_metrics < 1.0:
            return
        self._last_metrics = now
        self.assigned = frozenset(consumer.assignment())
        if self.progress is not None:
            for tp in self.assigned:
                self._report_lag(consumer, tp)
                if self.must_wait(tp):  # held on purpose (the issuer: its connector is down): not a stall
                    self.progress.held(self.consumer_name, tp.topic, tp.partition)
        self.observe(consumer)
