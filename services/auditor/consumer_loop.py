"""The auditor's consumer: the service runtime's loop in its fetch-batch mode (services/common/runtime/
fetch_batches.py, decision 0017) over every certrail topic.

One consumer in the auditor's group subscribes to every certrail topic by pattern (connector
command topics created later are picked up within ``topic_refresh_interval_ms``). Auto-commit is
off. Each batch is:

    fetched records -> prepare -> chain + insert in ONE database transaction -> the loop commits
    each partition's lowest unfinished offset

so a burst never becomes one commit per record, and an offset is committed only once its record
is in the database. Batches are stored strictly in fetch order; while one is stored, the loop keeps
fetching, and what it fetches meanwhile becomes the next batch (at most twice
``max_batch_records`` records in flight: beyond that every partition is paused).

Preparing a batch (decoding and validating each record, redacting private keys, hashing the
content: services/auditor/records.py) needs no database: in a worker process when
``prepare_processes`` gives one (the only way Python uses a second core), else in the writer
thread with the write.

When partitions are revoked, the batch holding their records gets the runtime's grace to be
stored, so that their offsets are committed before the partitions move; a batch is never
cancelled for a rebalance (it holds other partitions' records too). If it outlasts the grace, or
the offset commit fails (the group rebalanced meanwhile), the rows are stored and the partitions'
next owner skips them (store.py reads the chain head in its transaction, locked). If the database
transaction fails, nothing of the batch was stored: it is retried, in place, with capped backoff,
and nothing behind it is committed. The auditor never skips a record and never dead-letters one:
undecodable records are stored raw with their error code (preparing never raises:
records.prepare_guarded).

Progress (services/common/progress.py, consumer ``audit``): a batch that fails to be stored
reports its first record, a loop restart reports itself, so the same offset failing again and
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

from aiokafka import AIOKafkaConsumer
from sqlalchemy import Engine

from services.auditor.checkpoints import Checkpointer
from services.auditor.metrics import AuditMetrics
from services.auditor.records import AuditEntry, RawRecord, prepare_batch, raw_record_of
from services.auditor.store import BatchResult, store_entries
from services.common.consumer import InboundRecord
from services.common.contracts.topics import Topics
from services.common.progress import ProgressTracker
from services.common.runtime import keyed_loop
from services.common.runtime.fetch_batches import FetchBatchLoop
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
    batch_linger_s: float = 0.0

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
            batch_linger_s=self.batch_linger_s,
        )


class AuditConsumer(FetchBatchLoop):
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

    async def handle_fetch(self, records: list[InboundRecord]) -> None:
        raw = [raw_record_of(record) for record in records]
        entries = await self._prepared(raw)
        started = time.perf_counter()
        try:
            result = await asyncio.to_thread(self._store, raw, entries)
        except Exception:
            self.metrics.batch_failures.inc()  # the loop retries the batch, in place, with backoff
            raise
        self.stored(result, len(raw), time.perf_counter() - started)

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
        """In a worker thread: the batch's records in one transaction."""
        now = self._clock()
        if entries is None:  # prepared here: prepare_batch never raises (a record it cannot prepare is stored raw)
            entries = self.prepare(records)
        return store_entries(self._engine, entries, inventory_topics=self._topics, now=now)

    def stored(self, result: BatchResult, records: int, seconds: float) -> None:
        """On the event loop: a batch was stored."""
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
