"""The runtime's keyed loop with a batch as its unit of work (decision 0017): what one fetch brought of one
partition is handed to the service in one call, ``handle_batch(records, work)``, the records in offset order.

Everything else is the keyed loop's (services/common/runtime/keyed_loop.py): the batches of one partition run
one after the other, those of different partitions concurrently (a service groups them into one transaction
with services/common/runtime/writer.py); each partition commits its lowest unfinished offset; partitions
are paused while they, or all partitions together (``LoopSettings.max_in_flight``), hold too many records in
flight; a revoked partition's batch stops unless it is inside its critical section, which gets the grace to
finish; the progress tracker reports a batch that keeps failing by its first record.

A batch handler never has its records dead-lettered by the loop: it stores or dead-letters each record itself
(the auditor stores even an undecodable record, with its error code). What it raises is retried with backoff
for as long as it fails, and reported stalled meanwhile; nothing past it on its partition is committed.
"""

from __future__ import annotations

from aiokafka import ConsumerRecord, TopicPartition

from services.common.consumer import InboundRecord
from services.common.runtime.keyed_loop import KeyedLoop, Partition, Work, inbound_record


class PartitionBatchLoop(KeyedLoop):
    """A `KeyedLoop` whose service provides `handle_batch` (and no `handle` or `dead_letter`)."""

    async def handle_batch(self, records: list[InboundRecord], work: Work) -> None:
        """Handle one partition's records of one fetch, in offset order (raise `Revoked` to stop)."""
        raise NotImplementedError

    async def dead_letter(self, record: InboundRecord, reason: str) -> bool:  # noqa: ARG002 - never called
        return False

    def _start_fetched(self, tp: TopicPartition, partition: Partition, records: list[ConsumerRecord]) -> None:
        if not records:
            return
        batch = [inbound_record(record) for record in records]
        work = Work()
        self._chain((tp.topic, tp.partition), [(partition, batch)], work, lambda: self.handle_batch(batch, work),
                    poison=False)
