"""The issuer's consumer: the runtime's keyed loop (services/common/runtime/keyed_loop.py,
decision 0017) over every connector's command topic, as DESIGN.md "While emCA is unreachable"
and decision 0007 describe:

- one consumer subscribed to ``certrail.commands.*`` by pattern (a new connector's topic is
  picked up within ``topic_refresh_interval_ms``); records with the same key (the certificate
  id) on a topic run one after the other, others concurrently (each connector's concurrency is
  its semaphore in services/issuer/connectors.py);
- each partition commits only its lowest unfinished offset: a command that waits (circuit
  open, connector misconfigured) holds the commit point, so nothing past it is committed;
- the partitions of a connector that is not usable are paused (`must_wait`; the loop keeps
  polling and heartbeating); a partition with too many commands in flight is paused too;
- when partitions are revoked, commands not yet at emCA stop, commands inside a critical
  section (an emCA call, recording the outcome, publishing) get ``revoke_grace_s`` to finish;
- a poison command is dead-lettered with HANDLER_FAILED after ``poison_attempts`` failures;
  transient trouble is retried for as long as it lasts (progress tracker consumer ``commands``);
- pending approvals on this instance's partitions are polled by a side task;
- the issuer's own metrics per connector (in flight, oldest queued, lag, paused) once a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.common.consumer import InboundRecord, dead_letter_for
from services.common.contracts.errors import ErrorCode
from services.common.contracts.topics import Topics
from services.common.progress import ProgressTracker
from services.common.runtime.keyed_loop import InFlight, KeyedLoop, LoopSettings, Partition, Work
from services.common.settings import KafkaSettings
from services.issuer import state
from services.issuer.connectors import ConnectorPool
from services.issuer.metrics import IssuerMetrics
from services.issuer.processor import SERVICE, Processor
from services.issuer.state import StoredRecord

log = logging.getLogger(__name__)

#: the issuer's consumer, as the progress tracker and /health name it
CONSUMER = "commands"


class IssuerConsumer(KeyedLoop):
    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        settings: LoopSettings,
        topics: Topics,
        processor: Processor,
        pool: ConnectorPool,
        metrics: IssuerMetrics,
        publish_raw: Callable[[list[StoredRecord]], Awaitable[object]],
        clock: Callable[[], datetime],
        engine: object | None = None,
        progress: ProgressTracker | None = None,
    ) -> None:
        super().__init__(kafka=kafka, settings=settings, consumer_name=CONSUMER, pattern=topics.commands_pattern,
                         clock=clock, progress=progress)
        self._topics = topics
        self._processor = processor
        self._pool = pool
        self.metrics = metrics
        self._publish_raw = publish_raw
        self._engine = engine
        self._command_prefix = topics.commands("x")[:-1]

    def connector_of(self, topic: str) -> str:
        return topic[len(self._command_prefix):] if topic.startswith(self._command_prefix) else topic

    # -- the runtime's hooks ---------------------------------------------------------------------------------

    async def handle(self, record: InboundRecord, work: Work) -> None:
        await self._processor.handle(record, work)

    async def dead_letter(self, record: InboundRecord, reason: str) -> bool:
        outbound = dead_letter_for(record, ErrorCode.HANDLER_FAILED, f"the issuer {reason}", SERVICE, self._topics,
                                   self._clock())
        await self._publish_raw([StoredRecord.of(outbound)])
        self.metrics.commands.labels("unknown", "dead_lettered").inc()
        return True

    def must_wait(self, tp: TopicPartition) -> bool:
        runtime = self._pool.known(self.connector_of(tp.topic))
        return runtime is not None and not runtime.usable.is_set()

    def on_error(self) -> None:
        self.metrics.handler_errors.inc()

    def on_assigned(self, consumer: AIOKafkaConsumer) -> None:
        self.metrics.assigned.set(len(consumer.assignment()))

    def side_tasks(self) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        return {"issuer-approvals": self._poll_pending_forever}

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

    def observe(self, consumer: AIOKafkaConsumer) -> None:
        self.metrics.assigned.set(len(self.assigned))
        wall_ms = time.time() * 1000
        oldest: dict[str, float] = defaultdict(float)
        in_flight: dict[str, int] = defaultdict(int)
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
            if tp in paused_set:
                paused[connector] += 1
        for connector in connectors:
            self.metrics.oldest_queued_age.labels(connector).set(oldest.get(connector, 0.0))
            self.metrics.in_flight.labels(connector).set(in_flight.get(connector, 0))
            self.metrics.paused.labels(connector).set(paused.get(connector, 0))


#: the runtime's per-partition bookkeeping, under the names the issuer's unit tests use
_Partition = Partition
_InFlight = InFlight
__all__ = ["CONSUMER", "IssuerConsumer", "LoopSettings"]
