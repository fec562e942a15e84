"""The auditor's consumer: the service runtime's partition-batch loop (services/common/runtime/
partition_batches.py, decision 0017) over every certrail topic.

One consumer in the auditor's group subscribes to every certrail topic by pattern (connector
command topics created later are picked up within ``topic_refresh_interval_ms``). Auto-commit is
off. What one fetch brought of one partition is a batch; the batches in flight on all partitions
are stored together:

    getmany -> per partition: prepare -> chain + insert, with every batch ready meanwhile, in ONE
    database transaction (group commit: `_StoreGroups`) -> the loop commits each partition's
    lowest unfinished offset

so a burst never becomes one commit per record, and an offset is committed only once its record
is in the database. A partition's batches are stored strictly in offset order (the next waits for
the one before); other partitions' batches go on meanwhile.

Preparing a batch (decoding and validating each record, redacting private keys, hashing the
content: services/auditor/records.py) needs no database: in a worker process when
``prepare_processes`` gives one (the only way Python uses a second core), else in the writer
thread with the write.

A batch enters its critical section when it is handed to the writer: when its partition is
revoked before that, it stops (its records are fetched again by the partition's next owner);
after that, it is stored with its group and the rebalance waits for it (the runtime's grace)
before the partition's offsets are committed. If the offset commit still fails (the group
rebalanced meanwhile), the rows are stored and the partition's next owner skips them (store.py
reads the chain head in its transaction). If the database transaction fails, nothing of the group
was stored: each batch in it is retried, in place, with capped backoff, and nothing behind it on
its partition is committed. The auditor never skips a record and never dead-letters one:
undecodable records are stored raw with their error code (preparing never raises:
records.prepare_guarded). At most twice ``max_batch_records`` records are in flight on all
partitions together: beyond that every partition is paused until the writer catches up.

Progress (services/common/progress.py, consumer ``audit``): a batch that fails to be stored
reports its first offset, a loop restart reports itself, so the same offset failing again and
again (or the loop restarting in a loop) turns ``certrail_consumer_stalled`` to 1 and /health to
503; ``certrail_consumer_lag_records`` is kept per partition from the first record not stored.
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
from typing import Any

from aiokafka import AIOKafkaConsumer
from sqlalchemy import Engine

from services.auditor.checkpoints import Checkpointer
from services.auditor.metrics import AuditMetrics
from services.auditor.records import AuditEntry, RawRecord, prepare_batch
from services.auditor.store import BatchResult, store_entries
from services.common.consumer import InboundRecord
from services.common.contracts.topics import Topics
from services.common.progress import ProgressTracker
from services.common.runtime import keyed_loop
from services.common.runtime.keyed_loop import Work
from services.common.runtime.partition_batches import PartitionBatchLoop
from services.common.runtime.writer import ThreadGroups, _Step
from services.common.settings import KafkaSettings

log = logging.getLogger(__name__)

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

    def runtime(self) -> keyed_loop.LoopSettings:
        """The runtime loop's settings: a fetch of ``max_batch_records``, at most two fetches' worth in flight."""
        return keyed_loop.LoopSettings(
            group_id=self.group_id,
            poll_timeout_ms=self.poll_timeout_ms,
            max_poll_records=self.max_batch_records,
            topic_refresh_interval_ms=self.topic_refresh_interval_ms,
            max_in_flight_per_partition=2 * self.max_batch_records,
            max_in_flight=2 * self.max_batch_records,
            retry_backoff_initial_s=self.retry_backoff_initial_s,
            retry_backoff_max_s=self.retry_backoff_max_s,
        )


def raw_of(record: InboundRecord) -> RawRecord:
    return RawRecord(record.topic, record.partition, record.offset, record.timestamp_ms, record.timestamp_type,
                     record.key, record.value, record.headers)


_Batch = tuple[list[RawRecord], list[AuditEntry] | None]


class _StoreGroups(ThreadGroups):
    """The batches handed over meanwhile, stored in one transaction (`AuditConsumer._store`) in one thread
    hop: all of them or, when it fails, none (each caller retries its own)."""

    def __init__(self, consumer: AuditConsumer) -> None:
        super().__init__(name="auditor-store")
        self._consumer = consumer

    async def store(self, records: list[RawRecord], entries: list[AuditEntry] | None) -> None:
        await self._enqueue(lambda: (records, entries))

    def _run_group(self, group: list[_Step]) -> list[tuple[bool, Any]]:
        batches: list[_Batch] = [step.call() for step in group]
        records = [record for batch, _ in batches for record in batch]
        entries: list[AuditEntry] | None = None
        if any(prepared is not None for _, prepared in batches):
            entries = [entry for batch, prepared in batches
                       for entry in (prepared if prepared is not None else self._consumer.prepare(batch))]
        started = time.perf_counter()
        try:
            result = self._consumer._store(records, entries)
        except Exception as exc:  # noqa: BLE001 - every batch of the group is retried by its own task
            log.exception("storing a group of %d records failed; it will be retried", len(records))
            return [(False, exc)] * len(group)
        return [(True, (result, len(records), time.perf_counter() - started))] * len(group)

    def _after_group(self, group: list[_Step], results: list[tuple[bool, Any]]) -> None:
        ok, value = results[0]
        if ok:
            self._consumer.stored(*value)
        else:
            self._consumer.metrics.batch_failures.inc()


class AuditConsumer(PartitionBatchLoop):
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
        super().__init__(kafka=kafka, settings=settings.runtime(), consumer_name=CONSUMER, pattern=topics.all_pattern,
                         clock=clock, progress=progress)
        self._topics = topics
        self._engine = engine
        self.metrics = metrics
        self._checkpointer = checkpointer
        self._pool_factory = prepare_pool
        self._pool: Executor | None = None
        # on SQLite the worker also formats the times as SQLite stores them (off this process's GIL)
        self.prepare = functools.partial(prepare_batch, sqlite_times=engine.dialect.name == "sqlite")
        self._writer = _StoreGroups(self)
        self.batches_stored = 0
        self.records_stored = 0

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    # -- the runtime's hooks ---------------------------------------------------------------------------------

    async def handle_batch(self, records: list[InboundRecord], work: Work) -> None:
        raw = [raw_of(record) for record in records]
        entries = await self._prepared(raw)
        async with work.critical_section():  # handed to the writer: stored with its group, whatever happens
            await self._writer.store(raw, entries)

    def on_assigned(self, consumer: AIOKafkaConsumer) -> None:
        self.metrics.assigned.set(len(consumer.assignment()))

    def on_committed(self, seconds: float) -> None:
        self.metrics.offset_commit_duration.observe(seconds)

    # -- preparing and storing ---------------------------------------------------------------------------------

    async def _prepared(self, records: list[RawRecord]) -> list[AuditEntry] | None:
        """The prepared entries from the worker process (None: none, prepared in the writer thread)."""
        if self._pool_factory is None:
            return None
        if self._pool is None:
            self._pool = self._pool_factory()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self.prepare, records)
        except BrokenProcessPool:
            log.error("the prepare worker process died; starting a new one and preparing this batch in the writer")
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            return None

    def _store(self, records: list[RawRecord], entries: list[AuditEntry] | None) -> BatchResult:
        """In the writer thread: the group's records in one transaction."""
        now = self._clock()
        if entries is None:  # prepared here: prepare_batch never raises (a record it cannot prepare is stored raw)
            entries = self.prepare(records)
        return store_entries(self._engine, entries, inventory_topics=self._topics, now=now)

    def stored(self, result: BatchResult, records: int, seconds: float) -> None:
        """On the event loop: a group was stored."""
        self.metrics.batch_stored(result, records, seconds)
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
        self.batches_stored += 1
        self.records_stored += result.stored
