"""The issuer's own aiokafka consumer loop over every connector's command topic.

FastStream's Kafka ack commits everything fetched and its worker pool refuses manual commits,
so this loop is ours (DESIGN.md "While emCA is unreachable"):

- one consumer subscribed to ``certrail.commands.*`` by pattern (a new connector's topic is
  picked up within ``topic_refresh_interval_ms``); auto-commit off;
- every fetched record becomes a task; records with the same key (the certificate id) on a
  topic run one after the other, others concurrently (each connector's concurrency is its
  semaphore in services/issuer/connectors.py);
- each partition commits only its lowest unfinished offset: a command that waits (circuit
  open, connector misconfigured) holds the commit point, so nothing past it is committed;
- the partitions of a connector that is not usable are paused (the loop keeps polling and
  heartbeating); a partition with too many commands in flight is paused too (back-pressure);
- when partitions are revoked, commands not yet at emCA stop, commands inside a critical
  section (an emCA call, recording the outcome, publishing) get ``revoke_grace_s`` to finish,
  and the finished offsets are committed before the partitions move;
- a command that raises unexpectedly is retried with backoff, and after
  ``poison_attempts`` failures (not counting transient trouble: database, Kafka, network,
  services/common/failures.py) it is dead-lettered with HANDLER_FAILED so the partition
  never stalls on it; transient trouble is retried for as long as it lasts, and the
  progress tracker (services/common/progress.py, consumer ``commands``) reports the loop
  stalled when the same command keeps failing or the loop keeps restarting, with the lag
  of every partition (``certrail_consumer_lag_records``);
- pending approvals on this instance's partitions are polled by a side task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from services.common.consumer import InboundRecord, dead_letter_for
from services.common.contracts.errors import ErrorCode
from services.common.contracts.topics import Topics
from services.common.failures import is_transient
from services.common.kafka_config import consumer_kwargs
from services.common.progress import FAILED, TRANSIENT, ProgressTracker, describe
from services.common.settings import KafkaSettings
from services.issuer import state
from services.issuer.connectors import ConnectorPool
from services.issuer.metrics import IssuerMetrics
from services.issuer.processor import SERVICE, Processor, Revoked, Work
from services.issuer.state import StoredRecord

log = logging.getLogger(__name__)

#: the issuer's consumer, as the progress tracker and /health name it
CONSUMER = "commands"


@dataclass(frozen=True)
class LoopSettings:
    group_id: str
    poll_timeout_ms: int = 200
    max_poll_records: int = 500
    topic_refresh_interval_ms: int = 10_000
    max_in_flight_per_partition: int = 200
    revoke_grace_s: float = 20.0
    poison_attempts: int = 5
    retry_backoff_max_s: float = 30.0
    pending_poll_interval_s: float = 2.0
    commit_interval_s: float = 0.2


@dataclass
class _InFlight:
    work: Work
    task: asyncio.Task[None]
    timestamp_ms: int


@dataclass
class _Partition:
    """Offsets fetched on one partition, in order, and which of them are finished."""

    order: list[int] = field(default_factory=list)
    head: int = 0  # index of the first unfinished entry in ``order``
    done: set[int] = field(default_factory=set)
    in_flight: dict[int, _InFlight] = field(default_factory=dict)
    committed: int | None = None  # the offset last committed (the next to read)

    def add(self, offset: int, entry: _InFlight) -> None:
        self.order.append(offset)
        self.in_flight[offset] = entry

    def finish(self, offset: int) -> None:
        self.done.add(offset)
        self.in_flight.pop(offset, None)

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


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, loop: IssuerConsumer, consumer: AIOKafkaConsumer) -> None:
        self._loop = loop
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._loop.release(self._consumer, set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self._loop.partitions.setdefault(tp, _Partition())
        self._loop.metrics.assigned.set(len(self._consumer.assignment()))
        log.info("command partitions assigned: %s", ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(assigned)) or "none")


class IssuerConsumer:
    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        settings: LoopSettings,
        topics: Topics,
        processor: Processor,
        pool: ConnectorPool,
        metrics: IssuerMetrics,
        publish_raw: Callable[[list[StoredRecord]], object],
        clock: Callable[[], datetime],
        engine: object | None = None,
        progress: ProgressTracker | None = None,
    ) -> None:
        self._kafka = kafka
        self._settings = settings
        self._topics = topics
        self._processor = processor
        self._pool = pool
        self.metrics = metrics
        self._publish_raw = publish_raw
        self._clock = clock
        self._engine = engine
        self.progress = progress
        if progress is not None:
            progress.register(CONSUMER)
        self._command_prefix = topics.commands("x")[:-1]
        self.partitions: dict[TopicPartition, _Partition] = {}
        self._tails: dict[tuple[str, bytes], asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._failures = 0
        self._last_commit = 0.0
        self._last_metrics = 0.0
        self.finished = 0
        self.assigned: frozenset[TopicPartition] = frozenset()
        self.running = False

    def connector_of(self, topic: str) -> str:
        return topic[len(self._command_prefix):] if topic.startswith(self._command_prefix) else topic

    def stop(self) -> None:
        self._stopping.set()

    # -- lifecycle -------------------------------------------------------------------------------------

    async def run(self) -> None:
        while not self._stopping.is_set():
            consumer = AIOKafkaConsumer(
                **consumer_kwargs(self._kafka, self._settings.group_id),
                metadata_max_age_ms=self._settings.topic_refresh_interval_ms,
                max_poll_records=self._settings.max_poll_records,
            )
            consumer.subscribe(pattern=self._topics.commands_pattern, listener=_Rebalance(self, consumer))
            pending = asyncio.create_task(self._poll_pending_forever(), name="issuer-approvals")
            try:
                await consumer.start()
                self.running = True
                self._failures = 0
                await self._consume(consumer)
            except KafkaError as exc:
                log.warning("Kafka consumer failed (%s: %s); reconnecting", type(exc).__name__, exc)
                self._restarted(exc)
                await self._backoff()
            except Exception as exc:  # noqa: BLE001 - the issuer must keep running: log, back off, start a new consumer
                log.exception("the issuer's consumer loop failed; restarting it")
                self._restarted(exc)
                await self._backoff()
            finally:
                self.running = False
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
                try:
                    await self.release(consumer, set(self.partitions))
                finally:
                    await consumer.stop()

    def _restarted(self, exc: BaseException) -> None:
        if self.progress is not None:
            self.progress.restarted(CONSUMER, describe(exc))

    async def _backoff(self) -> None:
        delay = min(self._settings.retry_backoff_max_s, 0.5 * 2**self._failures)
        self._failures += 1
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            pass

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping.is_set():
            fetched = await consumer.getmany(timeout_ms=self._settings.poll_timeout_ms,
                                             max_records=self._settings.max_poll_records)
            if self.progress is not None:
                self.progress.polled(CONSUMER)
            for tp, records in fetched.items():
                partition = self.partitions.setdefault(tp, _Partition())
                for record in records:
                    self._start(tp, partition, record)
            self._apply_pauses(consumer)
            await self._commit(consumer)
            self._observe(consumer)

    # -- running commands --------------------------------------------------------------------------------

    def _start(self, tp: TopicPartition, partition: _Partition, record: ConsumerRecord[bytes, bytes]) -> None:
        inbound = InboundRecord(
            topic=record.topic, partition=record.partition, offset=record.offset, value=record.value, key=record.key,
            timestamp_ms=record.timestamp,
            headers=tuple((k, bytes(v or b"")) for k, v in (record.headers or ())),
        )
        work = Work()
        key = (record.topic, record.key or b"")
        previous = self._tails.get(key)
        task = asyncio.create_task(self._run(tp, partition, inbound, work, previous), name=f"command-{tp.topic}-{record.offset}")
        self._tails[key] = task
        task.add_done_callback(lambda done, key=key: self._tails.pop(key) if self._tails.get(key) is done else None)
        partition.add(record.offset, _InFlight(work, task, record.timestamp))

    async def _run(self, tp: TopicPartition, partition: _Partition, record: InboundRecord, work: Work,
                   previous: asyncio.Task[None] | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # per-certificate order; its failure is its own
        failures = transient = poison = 0
        while True:
            try:
                work.check()
                await self._processor.handle(record, work)
                break
            except Revoked:
                return
            except Exception as exc:  # noqa: BLE001 - a bug or a poison command must not stop the partition
                self.metrics.handler_errors.inc()
                failures += 1
                if is_transient(exc):  # database, Kafka, network: retried for as long as it lasts, never dead-lettered
                    transient += 1
                    log.warning("command %s/%d@%d: %s; retrying", record.topic, record.partition, record.offset,
                                describe(exc))
                    self._failed(record, TRANSIENT, exc)
                else:
                    poison += 1
                    log.exception("command %s/%d@%d failed unexpectedly (%d/%d)", record.topic, record.partition,
                                  record.offset, poison, self._settings.poison_attempts)
                    self._failed(record, FAILED, exc)
                    if poison >= self._settings.poison_attempts and await self._poison(record, exc):
                        break
            await asyncio.sleep(min(self._settings.retry_backoff_max_s, 0.2 * 2**min(failures, 10)))
            if work.revoked:
                return
        partition.finish(record.offset)
        self.finished += 1

    def _failed(self, record: InboundRecord, kind: str, exc: BaseException) -> None:
        if self.progress is not None:
            self.progress.failed(CONSUMER, record.topic, record.partition, record.offset, kind, describe(exc))

    async def _poison(self, record: InboundRecord, exc: Exception) -> bool:
        reason = f"the issuer failed on this command {self._settings.poison_attempts} times: {describe(exc)}"
        outbound = dead_letter_for(record, ErrorCode.HANDLER_FAILED, reason, SERVICE, self._topics, self._clock())
        try:
            await self._publish_raw([StoredRecord.of(outbound)])
        except Exception:  # noqa: BLE001 - not dead-lettered: keep retrying the command
            log.exception("dead-lettering a poison command failed")
            return False
        self.metrics.commands.labels("unknown", "dead_lettered").inc()
        return True

    # -- pausing, committing, releasing ---------------------------------------------------------------------

    def _apply_pauses(self, consumer: AIOKafkaConsumer) -> None:
        assigned = consumer.assignment()
        paused = consumer.paused()
        to_pause, to_resume = [], []
        for tp in assigned:
            runtime = self._pool.known(self.connector_of(tp.topic))
            partition = self.partitions.get(tp)
            busy = partition is not None and len(partition.in_flight) >= self._settings.max_in_flight_per_partition
            wait = (runtime is not None and not runtime.usable.is_set()) or busy
            if wait and tp not in paused:
                to_pause.append(tp)
            elif not wait and tp in paused:
                to_resume.append(tp)
        if to_pause:
            consumer.pause(*to_pause)
            log.info("paused %s", ", ".join(f"{tp.topic}/{tp.partition}" for tp in to_pause))
        if to_resume:
            consumer.resume(*to_resume)
            log.info("resumed %s", ", ".join(f"{tp.topic}/{tp.partition}" for tp in to_resume))

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
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # the group moved on: the next owner redoes these commands, and the recorded outcomes make that a replay
            log.warning("offsets not committed (%s)", exc)
            return
        for tp, offset in offsets.items():
            if tp in self.partitions:
                self.partitions[tp].committed = offset
            if self.progress is not None:  # everything before the commit point is finished
                self.progress.progressed(CONSUMER, tp.topic, tp.partition, offset)

    async def release(self, consumer: AIOKafkaConsumer, revoked: set[TopicPartition]) -> None:
        """Partitions are leaving: stop what has not reached emCA, let critical sections finish,
        commit what is finished, forget the rest (the next owner redoes it)."""
        entries = [(tp, entry) for tp in revoked if tp in self.partitions for entry in self.partitions[tp].in_flight.values()]
        for _, entry in entries:
            entry.work.revoked = True
            if entry.work.critical == 0:
                entry.task.cancel()
        critical = [entry.task for _, entry in entries if not entry.task.done()]
        if critical:
            done, still = await asyncio.wait(critical, timeout=self._settings.revoke_grace_s)
            for task in still:
                task.cancel()
            if still:
                log.warning("%d commands did not finish within %.0fs of their partitions being revoked",
                            len(still), self._settings.revoke_grace_s)
                await asyncio.gather(*still, return_exceptions=True)
        await self._commit(consumer, force=True, only=revoked)
        for tp in revoked:
            self.partitions.pop(tp, None)
        if revoked:
            log.info("command partitions released: %d", len(revoked))

    # -- pending approvals --------------------------------------------------------------------------------

    async def _poll_pending_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.pending_poll_interval_s)
            mine = {(tp.topic, tp.partition) for tp in self.partitions}
            try:
                await self._processor.poll_pending(mine)
                if self._engine is not None:
                    self.metrics.pending_approvals.set(await asyncio.to_thread(state.count_pending, self._engine))
            except Exception:  # noqa: BLE001 - retried at the next interval
                log.warning("polling pending approvals failed", exc_info=True)

    # -- metrics ---------------------------------------------------------------------------------------------

    def _observe(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        if now - self._last_metrics < 1.0:
            return
        self._last_metrics = now
        self.assigned = frozenset(consumer.assignment())
        self.metrics.assigned.set(len(self.assigned))
        wall_ms = time.time() * 1000
        oldest: dict[str, float] = defaultdict(float)
        in_flight: dict[str, int] = defaultdict(int)
        lag: dict[str, int] = defaultdict(int)
        paused: dict[str, int] = defaultdict(int)
        paused_set = consumer.paused()
        connectors = {self.connector_of(tp.topic) for tp in self.assigned} | {r.name for r in self._pool.runtimes()}
        for tp in self.assigned:
            connector = self.connector_of(tp.topic)
            partition = self.partitions.get(tp)
            if partition is not None:
                in_flight[connector] += len(partition.in_flight)
                for entry in partition.in_flight.values():
                    if entry.timestamp_ms is not None and entry.timestamp_ms > 0:
                        oldest[connector] = max(oldest[connector], (wall_ms - entry.timestamp_ms) / 1000)
                highwater = consumer.highwater(tp)
                if highwater is not None and partition.committed is not None:
                    lag[connector] += max(0, highwater - partition.committed)
                    if self.progress is not None:  # the committed offset is the first unfinished one
                        self.progress.set_lag(CONSUMER, tp.topic, tp.partition, highwater - partition.committed)
            if tp in paused_set:
                paused[connector] += 1
        for connector in connectors:
            self.metrics.oldest_queued_age.labels(connector).set(oldest.get(connector, 0.0))
            self.metrics.in_flight.labels(connector).set(in_flight.get(connector, 0))
            self.metrics.lag.labels(connector).set(lag.get(connector, 0))
            self.metrics.paused.labels(connector).set(paused.get(connector, 0))
