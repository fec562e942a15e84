"""The auditor's own Kafka consumer loop (not FastStream's per-message ack).

One consumer in the auditor's group subscribes to every certrail topic by
pattern (connector command topics created later are picked up within
``topic_refresh_interval_ms``). Auto-commit is off. Each fetched batch is:

    getmany -> prepare -> chain + insert in ONE database transaction -> commit the batch's offsets

so a burst never becomes one commit per record, and an offset is committed
only once its record is in the database.

Preparing a batch (decoding and validating each record, redacting private
keys, hashing the content: services/auditor/records.py) needs no database, so
it runs ahead: while batch N is written, batch N+1 is prepared -- in a worker
process when ``prepare_processes`` gives one (the only way Python uses a
second core), else in the writer thread with the write. Batches are written
strictly in fetch order.

The write and the offset commit run under a lock that the rebalance listener
takes too: when partitions are revoked, the batch being written finishes
(stored and committed) before they move, and batches fetched but not yet
written are dropped (the partitions' positions restart from the committed
offsets, so they are fetched again by whoever owns them). If the offset
commit still fails (the group rebalanced meanwhile), the rows are stored and
the partitions' next owner skips them (store.py reads the chain head in its
transaction). If the database transaction fails, nothing was stored: every
batch in flight is dropped, the partitions are sought back to their first
unstored offsets, and the work is retried with capped backoff. The auditor
never skips a record and never dead-letters one: undecodable records are
stored raw with their error code (preparing never raises: records.prepare_guarded).

Progress (services/common/progress.py, consumer ``audit``): a batch that fails to be
stored reports each of its partitions' first offsets, a loop restart reports itself,
so the same offsets failing again and again (or the loop restarting in a loop) turn
``certrail_consumer_stalled`` to 1 and /health to 503; ``certrail_consumer_lag_records``
is kept per partition from the stored position.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from sqlalchemy import Engine

from services.auditor.checkpoints import Checkpointer
from services.auditor.metrics import AuditMetrics
from services.auditor.records import AuditEntry, RawRecord, prepare_batch, raw_record
from services.auditor.store import BatchResult, store_entries
from services.common.contracts.topics import Topics
from services.common.failures import is_transient
from services.common.kafka_config import consumer_kwargs
from services.common.progress import FAILED, TRANSIENT, ProgressTracker, describe
from services.common.settings import KafkaSettings

log = logging.getLogger(__name__)

PIPELINE_DEPTH = 2  # batches in flight: one being written, one fetched and being prepared
#: the auditor's consumer, as the progress tracker and /health name it
CONSUMER = "audit"


@dataclass(frozen=True)
class LoopSettings:
    group_id: str
    max_batch_records: int = 2000
    poll_timeout_ms: int = 500
    topic_refresh_interval_ms: int = 30_000
    retry_backoff_initial_s: float = 0.5
    retry_backoff_max_s: float = 30.0


@dataclass
class _Batch:
    generation: int  # the rebalance generation it was fetched in
    first: dict[TopicPartition, int]  # first offset per partition
    last: dict[TopicPartition, int]  # last offset per partition
    records: list[RawRecord]
    prepared: asyncio.Future[list[AuditEntry]] | None  # None: prepared in the writer thread


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, loop: AuditConsumer) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Wait for the batch being written: it is stored and its offsets committed
        # before the partitions move. Batches fetched but not written are stale now.
        async with self._loop.lock:
            self._loop.generation += 1
            for tp in revoked:
                self._loop.next_offsets.pop(tp, None)
        log.info("partitions revoked: %d", len(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._loop.metrics.assigned.set(len(assigned))
        log.info("partitions assigned: %s", ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(assigned)) or "none")


class AuditConsumer:
    """Runs until `stop` is called; never exits on an error (it logs, backs off and retries)."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        settings: LoopSettings,
        topics: Topics,
        engine: Engine,
        metrics: AuditMetrics,
        checkpointer: Checkpointer | None,
        clock: Callable[[], datetime],
        prepare_pool: Callable[[], Executor] | None = None,
        progress: ProgressTracker | None = None,
    ) -> None:
        self._kafka = kafka
        self._settings = settings
        self._topics = topics
        self._engine = engine
        self.metrics = metrics
        self._checkpointer = checkpointer
        self._clock = clock
        self.progress = progress
        if progress is not None:  # lag, oldest unstored record's age, no progress: per partition, shared
            progress.register(CONSUMER, assignment=lambda: self.assigned)
        self._pool_factory = prepare_pool
        self._pool: Executor | None = None
        # on SQLite the worker also formats the times as SQLite stores them (off this process's GIL)
        self._prepare = functools.partial(prepare_batch, sqlite_times=engine.dialect.name == "sqlite")
        self.lock = asyncio.Lock()
        self.generation = 0
        self.next_offsets: dict[TopicPartition, int] = {}
        self._stopping = asyncio.Event()
        self._failures = 0
        self._lag_updated = 0.0
        self.batches_stored = 0
        self.records_stored = 0
        self.assigned: frozenset[TopicPartition] = frozenset()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                consumer = AIOKafkaConsumer(
                    **consumer_kwargs(self._kafka, self._settings.group_id),
                    metadata_max_age_ms=self._settings.topic_refresh_interval_ms,
                    max_poll_records=self._settings.max_batch_records,
                )
                consumer.subscribe(pattern=self._topics.all_pattern, listener=_Rebalance(self))
                try:
                    await consumer.start()
                    self._failures = 0
                    await self._consume(consumer)
                except KafkaError as exc:
                    log.warning("Kafka consumer failed (%s: %s); reconnecting", type(exc).__name__, exc)
                    self._restarted(exc)
                    await self._backoff()
                except Exception as exc:  # noqa: BLE001 - the auditor must keep running: log, back off, start a new consumer
                    log.exception("the audit consumer loop failed; restarting it")
                    self._restarted(exc)
                    await self._backoff()
                finally:
                    await consumer.stop()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def _restarted(self, exc: BaseException) -> None:
        if self.progress is not None:
            self.progress.restarted(CONSUMER, describe(exc))

    async def _backoff(self) -> None:
        delay = min(self._settings.retry_backoff_max_s, self._settings.retry_backoff_initial_s * 2**self._failures)
        self._failures += 1
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            pass

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        """A fetcher task keeps batches coming (and being prepared) while this one writes them, in order."""
        queue: asyncio.Queue[_Batch] = asyncio.Queue(maxsize=PIPELINE_DEPTH - 1)
        fetcher = asyncio.create_task(self._fetch(consumer, queue), name="auditor-fetch")
        try:
            while not self._stopping.is_set():
                if fetcher.done():
                    fetcher.result()  # re-raises what stopped it
                    return
                try:
                    batch = await asyncio.wait_for(queue.get(), timeout=self._settings.poll_timeout_ms / 1000)
                except TimeoutError:
                    batch = None
                if batch is not None:
                    await self._write(consumer, batch)
                self.assigned = frozenset(consumer.assignment())
                self._update_lag(consumer)
        finally:
            fetcher.cancel()
            await asyncio.gather(fetcher, return_exceptions=True)
            while not queue.empty():  # fetched but not written: not committed, so fetched again later
                leftover = queue.get_nowait()
                if leftover.prepared is not None:
                    leftover.prepared.cancel()

    async def _fetch(self, consumer: AIOKafkaConsumer, queue: asyncio.Queue[_Batch]) -> None:
        while not self._stopping.is_set():
            fetched = await consumer.getmany(
                timeout_ms=self._settings.poll_timeout_ms, max_records=self._settings.max_batch_records
            )
            if self.progress is not None:
                self.progress.polled(CONSUMER)
            if fetched:
                await queue.put(self._start(fetched))

    def _start(self, fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> _Batch:
        batch = _Batch(self.generation, {}, {}, [], None)
        for tp, records in fetched.items():
            if records:
                batch.first[tp], batch.last[tp] = records[0].offset, records[-1].offset
                if self.progress is not None:
                    self.progress.fetched(CONSUMER, tp.topic, tp.partition, records[0].offset, records[0].timestamp)
                batch.records.extend(raw_record(r) for r in records)
        if self._pool_factory is not None:
            if self._pool is None:
                self._pool = self._pool_factory()
            batch.prepared = asyncio.get_running_loop().run_in_executor(self._pool, self._prepare, batch.records)
        return batch

    async def _entries(self, batch: _Batch) -> list[AuditEntry] | None:
        """The prepared entries (None: prepare them in the writer thread)."""
        if batch.prepared is None:
            return None
        try:
            return await batch.prepared
        except BrokenProcessPool:
            log.error("the prepare worker process died; starting a new one and preparing this batch here")
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            return None

    async def _write(self, consumer: AIOKafkaConsumer, batch: _Batch) -> None:
        entries = await self._entries(batch)
        async with self.lock:
            assigned = consumer.assignment()
            if batch.generation != self.generation:
                return  # fetched before a rebalance or a failed write: those partitions were rewound
            keep = {tp for tp in batch.first if tp in assigned}
            records = batch.records
            if len(keep) < len(batch.first):  # some partitions moved away meanwhile: drop their records
                records = [r for r in records if TopicPartition(r.topic, r.partition) in keep]
                if entries is not None:
                    entries = [e for e in entries if TopicPartition(e.topic, e.partition) in keep]
            if not records:
                return
            started = time.perf_counter()
            try:
                result: BatchResult = await asyncio.to_thread(self._store, records, entries)
            except Exception as exc:  # noqa: BLE001 - never skip a record: log, seek back, retry with backoff
                self.metrics.batch_failures.inc()
                log.exception("storing a batch of %d records failed; it will be retried", len(records))
                if self.progress is not None:
                    kind = TRANSIENT if is_transient(exc) else FAILED
                    for tp in sorted(keep, key=lambda tp: (tp.topic, tp.partition)):
                        self.progress.failed(CONSUMER, tp.topic, tp.partition, batch.first[tp], kind, describe(exc))
                for tp in keep:  # the position the lag counts from: the first record not stored
                    self.next_offsets[tp] = batch.first[tp]
                await self._seek_back(consumer, batch, assigned)
                await self._backoff()
                return
            self._failures = 0
            self.metrics.batch_stored(result, len(records), time.perf_counter() - started)
            for gap in result.gaps:
                log.warning(
                    "Kafka delivered no record for %s/%d offsets %d..%d (transaction markers or compaction?); "
                    "`certrail audit verify` checks them against Kafka",
                    gap.topic,
                    gap.partition,
                    gap.first_missing,
                    gap.last_missing,
                )
            for (topic, message_type), count in result.misrouted.items():
                log.warning("%d %s record(s) on %s, a topic their producer does not own: stored, not folded into "
                            "the inventory (PRODUCER_NOT_ALLOWED)", count, message_type, topic)
            if self._checkpointer is not None:
                self._checkpointer.advanced(result.heads.values())
            offsets = {tp: batch.last[tp] + 1 for tp in keep}
            committed_at = time.perf_counter()
            try:
                await consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                log.warning("offsets not committed (%s); the rows are stored and the partitions' next owner skips them", exc)
            self.metrics.offset_commit_duration.observe(time.perf_counter() - committed_at)
            self.next_offsets.update(offsets)
            if self.progress is not None:
                for tp, offset in offsets.items():
                    self.progress.progressed(CONSUMER, tp.topic, tp.partition, offset)
            self.batches_stored += 1
            self.records_stored += result.stored

    def _store(self, records: list[RawRecord], entries: list[AuditEntry] | None) -> BatchResult:
        now = self._clock()
        if entries is None:  # prepared here: prepare_batch never raises (a record it cannot prepare is stored raw)
            entries = self._prepare(records)
        return store_entries(self._engine, entries, inventory_topics=self._topics, now=now)

    async def _seek_back(self, consumer: AIOKafkaConsumer, failed: _Batch, assigned: set[TopicPartition]) -> None:
        """Rewind every assigned partition to its first record not stored: the failed batch's to its
        first offsets, the others to where storing stopped (or, where this instance stored nothing
        yet, to the group's committed offset). Batches fetched after the failed one are stale (a new
        generation) whatever partitions they hold, and aiokafka drops records it buffered from before
        the seek; rewinding only the failed batch's partitions skipped the records of the others
        that a stale batch held (found by certrail_consumer_no_progress_seconds, issue 23)."""
        self.generation += 1
        for tp in assigned:
            offset = failed.first.get(tp, self.next_offsets.get(tp))
            if offset is None:
                offset = await consumer.committed(tp)
            if offset is not None:
                consumer.seek(tp, offset)
            else:  # nothing committed by the group either: from the beginning (auto_offset_reset=earliest)
                await consumer.seek_to_beginning(tp)

    def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        if now - self._lag_updated < 1.0:
            return
        self._lag_updated = now
        if self.progress is None:
            return
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = self.next_offsets.get(tp)
            if highwater is not None and position is not None:
                self.progress.set_lag(CONSUMER, tp.topic, tp.partition, highwater - position)
