"""The runtime's fetch-batch mode (the gateway, the deployer, the auditor: decision 0017) and its back-pressure,
without a broker: a fetch is one call across partitions, what is fetched while a batch is handled joins the next
batch, a failing batch is retried in place (never dead-lettered; on transient trouble reported under the record
that failed), its offsets finish together, and a rebalance waits for it without cancelling it. All partitions are
paused once ``max_in_flight`` records are in flight, and the loop then polls without waiting; the lag counts from
the first record fetched before anything is committed. The real broker's side: tests/integration/
test_audit_kafka.py, test_audit_loop_progress.py and test_dispatch_loop.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import OperationalError

from services.common.consumer import InboundRecord, TransientFailure
from services.common.progress import ProgressTracker
from services.common.runtime.fetch_batches import FetchBatchLoop
from services.common.runtime.keyed_loop import InFlight, LoopSettings, Partition, Work
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


class Batches(FetchBatchLoop):
    """A fetch-batch loop whose batches fail (a bug, not transient trouble) while ``failing`` is set."""

    def __init__(self, failing: bool = False, **settings: object) -> None:
        super().__init__(kafka=KafkaSettings(), settings=LoopSettings(group_id="g", retry_backoff_initial_s=0.001,
                                                                      retry_backoff_max_s=0.01, **settings),  # type: ignore[arg-type]
                         consumer_name="batches", topics=["t"], clock=lambda: datetime.now(UTC))
        self.failing = failing
        self.calls: list[list[tuple[int, int]]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def handle_fetch(self, records: list[InboundRecord]) -> None:
        self.calls.append([(record.partition, record.offset) for record in records])
        await self.gate.wait()
        if self.failing:
            raise RuntimeError("a bug, not transient trouble")


async def test_what_is_fetched_while_a_batch_is_handled_joins_the_next_batch() -> None:
    loop = Batches()
    loop.gate.clear()
    loop._start_fetched_all({TP0: records(TP0, 0, 1)})  # type: ignore[dict-item]
    await poll_until(lambda: loop.calls, "the first batch to start", 5)
    loop._start_fetched_all({TP0: records(TP0, 2)})  # type: ignore[dict-item]
    loop._start_fetched_all({TP1: records(TP1, 0), TP0: records(TP0, 3)})  # type: ignore[dict-item]
    await asyncio.sleep(0.05)
    assert loop.calls == [[(0, 0), (0, 1)]]  # the next batch waits for the first
    assert len(loop.partitions[TP0].in_flight) == 4 and loop.partitions[TP0].commit_point() is None
    loop.gate.set()
    await poll_until(lambda: loop.finished == 5, "both batches to finish", 5)
    assert loop.calls == [[(0, 0), (0, 1)], [(0, 2), (1, 0), (0, 3)]]  # two fetches, one batch; TP0 in offset order
    assert loop.partitions[TP0].commit_point() == 4 and loop.partitions[TP1].commit_point() == 1


async def test_a_small_batch_lingers_so_that_what_arrives_meanwhile_joins_it_and_a_large_one_does_not() -> None:
    loop = Batches(batch_linger_s=0.3, linger_below=3)
    loop._start_fetched_all({TP0: records(TP0, 0)})  # type: ignore[dict-item]
    await asyncio.sleep(0.05)
    assert loop.calls == []  # one record: it waits for company
    loop._start_fetched_all({TP1: records(TP1, 0)})  # type: ignore[dict-item]
    await poll_until(lambda: loop.finished == 2, "the lingering batch to be handled", 5)
    assert loop.calls == [[(0, 0), (1, 0)]]  # one batch of both fetches
    loop._start_fetched_all({TP0: records(TP0, 1, 2, 3)})  # type: ignore[dict-item]
    await poll_until(lambda: len(loop.calls) == 2, "a batch of linger_below records to start", 0.2)  # well before 0.3 s
    assert loop.calls[1] == [(0, 1), (0, 2), (0, 3)]


async def test_a_failing_batch_is_retried_in_place_never_dead_lettered() -> None:
    loop = Batches(failing=True, poison_attempts=1)
    loop._start_fetched_all({TP0: records(TP0, 7, 8)})  # type: ignore[dict-item]
    await poll_until(lambda: len(loop.calls) >= 3, "retries", 5)  # past poison_attempts: still not dead-lettered
    assert loop.partitions[TP0].commit_point() is None  # nothing of the failing batch is committed meanwhile
    tried = len(loop.calls)
    loop.failing = False
    await poll_until(lambda: loop.finished == 2, "the failing batch to be handled at last", 5)
    assert loop.calls == [[(0, 7), (0, 8)]] * (tried + 1)  # the same batch each time
    assert loop.partitions[TP0].commit_point() == 9


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


class PollingConsumer(FakeConsumer):
    """A FakeConsumer that records how long each fetch was allowed to wait."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        super().__init__(assigned)
        self.timeouts: list[int] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[FakeRecord]]:  # noqa: ARG002
        self.timeouts.append(timeout_ms)
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    def highwater(self, tp: TopicPartition) -> int | None:  # noqa: ARG002
        return None

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        pass


async def test_with_every_partition_paused_the_loop_waits_for_a_record_and_still_polls_without_waiting() -> None:
    loop = Batches(max_in_flight=1, poll_timeout_ms=50)
    consumer = PollingConsumer({TP0})
    _fill(loop.partitions.setdefault(TP0, Partition()), range(1))  # the bound is reached: TP0 is paused
    loop._apply_pauses(consumer)  # type: ignore[arg-type]
    consuming = asyncio.create_task(loop._consume(consumer))  # type: ignore[arg-type]
    await poll_until(lambda: len(consumer.timeouts) >= 3, "polls while paused", 5)
    assert set(consumer.timeouts) == {0}  # polled (the poll interval stays fresh), never waiting on a fetch
    loop.partitions[TP0].finish(0)
    await poll_until(lambda: consumer.timeouts[-1] == 50, "a real fetch once a record finished", 5)
    loop.stop()
    await asyncio.wait_for(consuming, 5)


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


# -- the fetch-batch mode (the gateway's and the deployer's consumers) ----------------------------------------


class Fetches(FetchBatchLoop):
    def __init__(self, **settings: object) -> None:
        registry = CollectorRegistry()
        self.tracker = ProgressTracker(registry, "svc", stall_after=2)
        super().__init__(kafka=KafkaSettings(), settings=LoopSettings(group_id="g", retry_backoff_initial_s=0.001,
                                                                      retry_backoff_max_s=0.01, **settings),  # type: ignore[arg-type]
                         consumer_name="fetches", topics=["t"], clock=lambda: datetime.now(UTC), progress=self.tracker)
        self.calls: list[list[tuple[int, int]]] = []
        self.failing: InboundRecord | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def handle_fetch(self, records: list[InboundRecord]) -> None:
        self.calls.append([(record.partition, record.offset) for record in records])
        await self.gate.wait()
        if self.failing is not None:
            raise TransientFailure(self.failing, OperationalError("INSERT", {}, Exception("database is locked")))


async def test_a_fetch_is_one_call_across_partitions_and_its_offsets_finish_together() -> None:
    loop = Fetches()
    loop._start_fetched_all({TP0: records(TP0, 0, 1), TP1: records(TP1, 5)})  # type: ignore[dict-item]
    loop._start_fetched_all({TP1: records(TP1, 6)})  # type: ignore[dict-item]
    await poll_until(lambda: loop.finished == 4, "both fetches", 5)
    assert loop.calls == [[(0, 0), (0, 1), (1, 5), (1, 6)]]  # one call; the second fetch came before it started
    assert loop.partitions[TP0].commit_point() == 2 and loop.partitions[TP1].commit_point() == 7


async def test_a_fetch_failing_on_transient_trouble_is_retried_and_reported_under_the_record_that_failed() -> None:
    loop = Fetches()
    loop.failing = InboundRecord(topic="t", partition=1, offset=5, value=b"{}")
    loop._start_fetched_all({TP0: records(TP0, 0), TP1: records(TP1, 5)})  # type: ignore[dict-item]
    await poll_until(lambda: loop.tracker.stalled(), "the consumer to be reported stalled", 5)
    assert loop.tracker.stalled()["fetches"].startswith("stalled: t/1@5 failed ")  # not the fetch's first record
    assert loop.partitions[TP0].commit_point() is None  # nothing of the fetch is committed meanwhile
    loop.failing = None
    await poll_until(lambda: loop.finished == 2, "the fetch to be handled at last", 5)
    assert loop.calls[-1] == [(0, 0), (1, 5)] and len(loop.calls) >= 3


class Committing:
    """Enough of an aiokafka consumer for `release`: what it was asked to commit."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def highwater(self, tp: TopicPartition) -> int | None:  # noqa: ARG002
        return None


async def test_a_rebalance_waits_for_the_fetch_and_commits_it_but_never_cancels_one_that_holds_other_partitions() -> None:
    loop = Fetches(revoke_grace_s=5.0)
    loop.running = True
    loop.gate.clear()
    loop._start_fetched_all({TP0: records(TP0, 0), TP1: records(TP1, 0)})  # type: ignore[dict-item]
    await poll_until(lambda: loop.calls, "the fetch to start", 5)
    consumer = Committing()
    releasing = asyncio.create_task(loop.release(consumer, {TP0}))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert not releasing.done()  # it waits for the fetch holding TP0's record
    loop.gate.set()
    await asyncio.wait_for(releasing, 5)
    assert consumer.commits == [{TP0: 1}]  # committed before the partition moved
    assert TP0 not in loop.partitions and loop.partitions[TP1].commit_point() == 1

    late = Fetches(revoke_grace_s=0.05)
    late.running = True
    late.gate.clear()
    late._start_fetched_all({TP0: records(TP0, 0), TP1: records(TP1, 0)})  # type: ignore[dict-item]
    await poll_until(lambda: late.calls, "the fetch to start", 5)
    await late.release(Committing(), {TP0})  # type: ignore[arg-type]
    (task,) = {entry.task for entry in late.partitions[TP1].in_flight.values()}
    assert not task.done()  # past the grace it goes on: TP1's record is still its to finish
    late.gate.set()
    await poll_until(lambda: late.partitions[TP1].commit_point() == 1, "TP1's record to finish", 5)
