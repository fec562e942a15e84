"""The runtime's keyed loop with a batch of fetched records as its unit of work (decision 0017): the consumers
of the gateway and the deployer, whose `Dispatcher.dispatch_batch` orders a certificate's records across the
topics and partitions of a subscription (services/common/consumer.key_chains) and so needs them in one call, and
the auditor's, which stores a batch in one transaction.

- the batches run one after the other, in fetch order; the loop keeps fetching meanwhile, up to
  ``LoopSettings.max_in_flight`` records in flight (beyond it every partition is paused), and what it
  fetches while a batch is handled joins the next batch (which starts when that one ends), so a batch is
  as large as the load makes it: one fetch when idle, everything that waited under load; a batch of fewer
  than ``LoopSettings.linger_below`` records first waits ``batch_linger_s`` (0: not at all), so that at a
  moderate rate the batches are not all of one or two records;
- a fetch's offsets finish together once `handle_fetch` returns, and each partition commits its lowest
  unfinished offset, so an offset is committed only after its record was handled, ignored or dead-lettered
  and what it published was acknowledged;
- what `handle_fetch` raises is retried in place with backoff for as long as it fails (the Dispatcher
  dead-letters poison records itself; what it raises is transient trouble, `TransientFailure`), reported
  to the progress tracker under the record that failed, so /health shows a consumer stuck on one offset;
- when partitions are revoked, the fetches holding their records get ``revoke_grace_s`` to finish, so that
  their offsets are committed before the partitions move; a fetch is never cancelled for a rebalance (it
  also holds records of partitions that stay): one that outlasts the grace goes on, and the partitions'
  next owner handles those records again, which the handlers' idempotence makes harmless. Stopping the
  loop cancels what is left after the grace.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from services.common.consumer import Dispatcher, InboundRecord, TransientFailure
from services.common.runtime.keyed_loop import InFlight, KeyedLoop, Partition, Work, inbound_record

log = logging.getLogger(__name__)

_FETCHES = ("", -1)  # the key every fetch is chained under: one after the other


@dataclass
class _Waiting:
    """The next batch while it waits for the one before: what is fetched meanwhile joins it."""

    parts: list[tuple[Partition, list[InboundRecord]]]
    work: Work
    started: bool = False
    task: asyncio.Task[None] | None = None


class FetchBatchLoop(KeyedLoop):
    """A `KeyedLoop` whose service provides `handle_fetch` (and no `handle` or `dead_letter`)."""

    _waiting: _Waiting | None = None

    async def handle_fetch(self, records: list[InboundRecord]) -> None:
        """Handle one fetch's records (each partition's in offset order)."""
        raise NotImplementedError

    async def dead_letter(self, record: InboundRecord, reason: str) -> bool:  # noqa: ARG002 - never called
        return False

    def failure(self, exc: BaseException, records: list[InboundRecord]) -> tuple[InboundRecord, bool, BaseException]:
        if isinstance(exc, TransientFailure):
            return exc.record or records[0], True, exc.cause
        return super().failure(exc, records)

    def _start_fetched_all(self, fetched: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        parts = [(self.partitions.setdefault(tp, Partition()), [inbound_record(record) for record in records])
                 for tp, records in fetched.items() if records]
        if not parts:
            return
        waiting = self._waiting
        if waiting is not None and not waiting.started and waiting.task is not None and not waiting.task.done():
            # the batch before is still being handled: what came meanwhile joins the next one, so that the
            # batches stay as large as the load makes them instead of one small batch per fetch
            for partition, records in parts:
                waiting.parts.append((partition, records))
                for record in records:
                    partition.add(record.offset, InFlight(waiting.work, waiting.task, record.timestamp_ms or 0))
                if self.progress is not None:
                    head = records[0]
                    self.progress.fetched(self.consumer_name, head.topic, head.partition, head.offset, head.timestamp_ms)
            return
        waiting = _Waiting(parts, Work())
        self._waiting = waiting
        waiting.task = self._chain(_FETCHES, waiting.parts, waiting.work, functools.partial(self._handle_waiting, waiting),
                                   poison=False)

    async def _handle_waiting(self, waiting: _Waiting) -> None:
        linger = self._settings.batch_linger_s
        if linger > 0 and sum(len(part) for _, part in waiting.parts) < self._settings.linger_below:
            await asyncio.sleep(linger)  # a small batch: what is fetched meanwhile joins it
        waiting.started = True  # nothing joins it from now on
        await self.handle_fetch([record for _, part in waiting.parts for record in part])

    async def release(self, consumer: AIOKafkaConsumer, revoked: set[TopicPartition]) -> None:
        tasks = {entry.task for tp in revoked if tp in self.partitions
                 for entry in self.partitions[tp].in_flight.values() if not entry.task.done()}
        if tasks:
            _, still = await asyncio.wait(tasks, timeout=self._settings.revoke_grace_s)
            if still and self.running:
                log.warning("%d fetches did not finish within %.0fs of their partitions being revoked: they go on, "
                            "and the partitions' next owner handles those records again", len(still),
                            self._settings.revoke_grace_s)
            elif still:  # stopping: nobody will commit them, the next owner redoes them
                for task in still:
                    task.cancel()
                await asyncio.gather(*still, return_exceptions=True)
        await self._commit(consumer, force=True, only=revoked)
        for tp in revoked:
            self.partitions.pop(tp, None)
        self.assigned = self.assigned - revoked


class DispatchLoop(FetchBatchLoop):
    """The loop of a service whose handlers are a `Dispatcher`'s (the gateway, the deployer): each fetch goes to
    `Dispatcher.dispatch_batch`, which returns once everything it published is acknowledged."""

    def __init__(self, dispatcher: Dispatcher, **loop: Any) -> None:
        super().__init__(**loop)
        self.dispatcher = dispatcher

    async def handle_fetch(self, records: list[InboundRecord]) -> None:
        await self.dispatcher.dispatch_batch(records)
