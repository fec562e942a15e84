"""The runtime's partition-batch mode and its back-pressure (decision 0017), without a broker: a partition's
batches run one after the other, a failing batch is retried in place and never dead-lettered, its offsets finish
together; all partitions are paused once ``max_in_flight`` records are in flight; the lag counts from the first
record fetched before anything is committed. The real broker's side is tests/integration/test_audit_kafka.py and
test_audit_loop_progress.py (the auditor runs on this mode)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import TopicPartition

from services.common.consumer import InboundRecord
from services.common.runtime.keyed_loop import InFlight, LoopSettings, Partition, Work
from services.common.runtime.partition_batches import PartitionBatchLoop
from services.common.settings import KafkaSettings
from tests.conftest import poll_until

TP0 = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


@dataclass
class FakeRecord:
    """The fields of an aiokafka ConsumerRecord the runtime reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = b"k"
    value: bytes | None = b"{}"
    timestamp: int = 1_700_000_000_000
    timestamp_type: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def records(tp: TopicPartition, *offsets: int) -> list[FakeRecord]:
    return [FakeRecord(tp.topic, tp.partition, offset) for offset in offsets]


class Batches(PartitionBatchLoop):
    def __init__(self, failing: bool = False, **settings: object) -> None:
        super().__init__(kafka=KafkaSettings(), settings=LoopSettings(group_id="g", retry_backoff_initial_s=0.001,
                                                                      retry_backoff_max_s=0.01, **settings),  # type: ignore[arg-type]
                         consumer_name="batches", topics=["t"], clock=lambda: datetime.now(UTC))
        self.failing = failing  # the batches of partition 0 fail while it is set
        self.calls: list[tuple[int, list[int]]] = []
        self.gate: dict[int, asyncio.Event] = {}

    async def handle_batch(self, records: list[InboundRecord], work: Work) -> None:  # noqa: ARG002
        offsets = [record.offset for record in records]
        self.calls.append((records[0].partition, offsets))
        gate = self.gate.get(offsets[0])
        if gate is not None:
            await gate.wait()
        if self.failing and records[0].partition == 0:
            raise RuntimeError("a bug, not transient trouble")


async def test_a_partitions_batches_run_in_order_and_finish_together() -> None:
    loop = Batches()
    partition = loop.partitions.setdefault(TP0, Partition())
    loop.gate[0] = asyncio.Event()
    loop._start_fetched(TP0, partition, records(TP0, 0, 1, 2))  # type: ignore[arg-type]
    loop._start_fetched(TP0, partition, records(TP0, 3, 4))  # type: ignore[arg-type]
    await poll_until(lambda: loop.calls == [(0, [0, 1, 2])], "the first batch to start", 5)
    await asyncio.sleep(0.05)
    assert loop.calls == [(0, [0, 1, 2])]  # the second waits for the first
    assert partition.commit_point() is None and len(partition.in_flight) == 5
    loop.gate[0].set()
    await poll_until(lambda: loop.finished == 5, "both batches to finish", 5)
    assert loop.calls == [(0, [0, 1, 2]), (0, [3, 4])]
    assert partition.commit_point() == 5 and partition.in_flight == {}


async def test_a_failing_batch_is_retried_in_place_never_dead_lettered_and_holds_its_partition_only() -> None:
    loop = Batches(failing=True, poison_attempts=1)
    p0 = loop.partitions.setdefault(TP0, Partition())
    p1 = loop.partitions.setdefault(TP1, Partition())
    loop._start_fetched(TP0, p0, records(TP0, 7, 8))  # type: ignore[arg-type]
    await poll_until(lambda: len(loop.calls) >= 3, "retries", 5)  # past poison_attempts: still not dead-lettered
    loop._start_fetched(TP1, p1, records(TP1, 0))  # type: ignore[arg-type]
    await poll_until(lambda: loop.finished == 1, "the other partition's batch", 5)
    assert p1.commit_point() == 1
    assert p0.commit_point() is None  # nothing of the failing batch is committed meanwhile
    tried = len([call for call in loop.calls if call[0] == 0])
    loop.failing = False
    await poll_until(lambda: loop.finished == 3, "the failing batch to be stored at last", 5)
    assert [call for call in loop.calls if call[0] == 0] == [(0, [7, 8])] * (tried + 1)  # the same batch each time
    assert p0.commit_point() == 9


class FakeConsumer:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self._assigned = assigned
        self._paused: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *tps: TopicPartition) -> None:
        self._paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused.difference_update(tps)


def _fill(partition: Partition, offsets: range) -> None:
    for offset in offsets:
        partition.add(offset, InFlight(Work(), None, 0))  # type: ignore[arg-type]


def test_every_partition_pauses_once_max_in_flight_records_are_in_flight_and_resumes_below() -> None:
    loop = Batches(max_in_flight=10, max_in_flight_per_partition=100)
    consumer = FakeConsumer({TP0, TP1})
    p0 = loop.partitions.setdefault(TP0, Partition())
    _fill(p0, range(9))
    loop._apply_pauses(consumer)  # type: ignore[arg-type]
    assert consumer.paused() == set()
    _fill(p0, range(9, 10))
    loop._apply_pauses(consumer)  # type: ignore[arg-type]
    assert consumer.paused() == {TP0, TP1}  # TP1 holds nothing, yet it waits too: the bound is the process's
    p0.finish(0)
    loop._apply_pauses(consumer)  # type: ignore[arg-type]
    assert consumer.paused() == set()


def test_the_lag_counts_from_the_first_record_fetched_until_something_is_committed() -> None:
    partition = Partition()
    assert partition.position() is None
    _fill(partition, range(4, 7))
    assert partition.position() == 4
    partition.finish(4)
    assert partition.commit_point() == 5
    assert partition.position() == 5  # the first unfinished, not yet committed
    partition.committed = 5
    assert partition.position() == 5
