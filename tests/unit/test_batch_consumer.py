"""Batched consumption (`Dispatcher.dispatch_batch`): one certificate's records in order, different
certificates concurrently, publishes acknowledged together before the batch counts as done, a
failure stops only its certificate's chain and fails the batch, poison records dead-lettered, and
the deployer's skip of records by their ``ce_type`` header."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from sqlalchemy.exc import OperationalError

from services.common.consumer import (
    CURRENT_RECORD,
    PENDING_ACKS,
    Dispatcher,
    InboundRecord,
    InvalidMessage,
    Outbound,
    Outcome,
    TransientFailure,
    key_chains,
)
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import CONTENT_TYPE, Envelope, encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateDeployed, CertificateIssued, IssuancePending, RequestAccepted
from services.common.contracts.topics import Topics
from services.common.fakes import RecordingPublisher
from tests.unit.examples import NOW, examples

EXAMPLES = examples()
TOPICS = Topics()


def _value(data_cls: type, event_id: str) -> bytes:
    return encode(make_event(EXAMPLES[data_cls], id=event_id, source="/t", time=NOW, subject="c"))


def _record(
    key: bytes | None, offset: int, value: bytes | None, *, partition: int = 0, headers: tuple[tuple[str, bytes], ...] = ()
) -> InboundRecord:
    return InboundRecord(topic="certrail.events.issuer", partition=partition, offset=offset, value=value, key=key, headers=headers)


def _issued(*event_ids: str) -> list[InboundRecord]:
    """CertificateIssued records at offsets 0, 1, ..., each keyed by its id's first letter (its certificate)."""
    return [_record(event_id[0].encode(), offset, _value(CertificateIssued, event_id)) for offset, event_id in enumerate(event_ids)]


def _deploying(key_of):  # type: ignore[no-untyped-def]
    """A handler that publishes one CertificateDeployed per record, keyed by ``key_of(envelope)``."""

    async def handler(envelope: Envelope) -> list[Outbound]:
        deployed = make_event(EXAMPLES[CertificateDeployed], id=f"out-{envelope.id}", source="/t", time=NOW, subject="c")
        return [Outbound(topic=TOPICS.deployer_events, event=deployed, key=key_of(envelope))]

    return handler


def _dispatcher(handler, publisher=None, **options) -> tuple[Dispatcher, RecordingPublisher]:  # type: ignore[no-untyped-def]
    publisher = publisher or RecordingPublisher()
    dispatcher = Dispatcher(
        service="deployer",
        catalog=CATALOG,
        topics=TOPICS,
        publisher=publisher,
        handlers={CertificateIssued: handler},
        clock=lambda: NOW,
        **options,
    )
    return dispatcher, publisher


class DeferringPublisher:
    """Like the Kafka publisher: inside a batch it only sends, and the batch awaits the acknowledgements."""

    def __init__(self) -> None:
        self.sent: list[Outbound] = []
        self.acks: list[asyncio.Future[None]] = []

    async def publish(self, messages: Sequence[Outbound]) -> None:
        for message in messages:
            ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.sent.append(message)
            self.acks.append(ack)
            pending = PENDING_ACKS.get()
            if pending is None:
                await ack
            else:
                pending.add(ack)


async def _until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def test_records_of_one_key_run_in_order_and_keys_run_concurrently() -> None:
    log: list[tuple[str, str]] = []
    b_started = asyncio.Event()

    async def handler(envelope: Envelope) -> list[Outbound]:
        record = CURRENT_RECORD.get()
        assert record is not None  # the raw record reaches the handler, as with one record at a time
        log.append(("start", envelope.id))
        if envelope.id == "a0":
            await asyncio.wait_for(b_started.wait(), 5)  # only returns if b's chain runs beside a's
        if envelope.id == "b0":
            b_started.set()
        await asyncio.sleep(0)
        log.append(("end", envelope.id))
        return []

    dispatcher, _ = _dispatcher(handler)
    records = _issued("a0", "a1", "b0", "a2")
    outcomes = await dispatcher.dispatch_batch(records)

    assert outcomes == [Outcome.HANDLED] * 4
    a_events = [entry for entry in log if entry[1].startswith("a")]
    assert a_events == [("start", "a0"), ("end", "a0"), ("start", "a1"), ("end", "a1"), ("start", "a2"), ("end", "a2")]
    assert log.index(("start", "b0")) < log.index(("end", "a0"))  # b ran while a0 waited


async def test_the_batch_returns_only_after_every_publish_is_acknowledged() -> None:
    publisher = DeferringPublisher()
    dispatcher, _ = _dispatcher(_deploying(lambda envelope: envelope.id), publisher)
    records = [_record(str(i).encode(), i, _value(CertificateIssued, f"e{i}")) for i in range(5)]
    batch = asyncio.create_task(dispatcher.dispatch_batch(records))
    await _until(lambda: len(publisher.sent) == 5)  # all five sent before any acknowledgement
    await asyncio.sleep(0)
    assert not batch.done()
    for ack in publisher.acks[:4]:
        ack.set_result(None)
    await asyncio.sleep(0)
    assert not batch.done()  # one acknowledgement still missing: the batch may not be committed
    publisher.acks[4].set_result(None)
    assert await asyncio.wait_for(batch, 5) == [Outcome.HANDLED] * 5


async def test_a_failed_acknowledgement_fails_the_batch() -> None:
    publisher = DeferringPublisher()
    dispatcher, _ = _dispatcher(_deploying(lambda envelope: "c"), publisher)
    batch = asyncio.create_task(
        dispatcher.dispatch_batch(
            [_record(b"c", 0, _value(CertificateIssued, "e0")), _record(b"d", 1, _value(CertificateIssued, "e1"))]
        )
    )
    await _until(lambda: len(publisher.acks) == 2)
    publisher.acks[0].set_exception(ConnectionError("broker gone"))
    publisher.acks[1].set_result(None)
    with pytest.raises(TransientFailure) as raised:
        await asyncio.wait_for(batch, 5)
    assert isinstance(raised.value.cause, ConnectionError) and raised.value.record is None


async def test_a_failure_stops_its_certificate_only_and_fails_the_batch() -> None:
    handled: list[str] = []

    async def handler(envelope: Envelope) -> list[Outbound]:
        if envelope.id == "a1":
            raise OperationalError("UPDATE x", {}, Exception("database is locked"))
        handled.append(envelope.id)
        return []

    dispatcher, _ = _dispatcher(handler)
    records = _issued("a0", "a1", "a2", "b0")
    with pytest.raises(TransientFailure, match="database is locked") as raised:
        await dispatcher.dispatch_batch(records)
    assert raised.value.record == records[1]
    # a2 must not run before a1 succeeded (the redelivered batch redoes a1 then a2); b is independent
    assert sorted(handled) == ["a0", "b0"]


async def test_poison_records_are_dead_lettered_and_the_rest_of_the_batch_handled() -> None:
    async def handler(envelope: Envelope) -> list[Outbound]:
        if envelope.id == "refused":
            raise InvalidMessage("no such profile", ErrorCode.HANDLER_REJECTED)
        return []

    dispatcher, publisher = _dispatcher(handler)
    records = [
        _record(b"a", 0, b"{not json"),
        _record(b"a", 1, _value(CertificateIssued, "refused")),
        _record(b"a", 2, _value(CertificateIssued, "fine")),
        _record(None, 3, None),
    ]
    outcomes = await dispatcher.dispatch_batch(records)
    assert outcomes == [Outcome.DEAD_LETTERED, Outcome.DEAD_LETTERED, Outcome.HANDLED, Outcome.DEAD_LETTERED]
    assert [out.topic for out in publisher.sent] == [TOPICS.deadletter] * 3


async def test_outbound_records_carry_their_type_header() -> None:
    event = make_event(EXAMPLES[RequestAccepted], id="evt-1", source="/t", time=NOW, subject="c")
    assert Outbound(topic=TOPICS.gateway_events, event=event, key="c").headers() == {
        "content-type": CONTENT_TYPE,
        "ce_type": RequestAccepted.TYPE,
    }


@pytest.mark.parametrize(
    ("declared", "value", "expected"),
    [
        pytest.param(IssuancePending.TYPE, b"{not even json", Outcome.IGNORED, id="known-unhandled-type-skipped-unparsed"),
        # a type whose producer does not own the topic is decoded: dead-lettered (PRODUCER_NOT_ALLOWED), never skipped
        pytest.param(RequestAccepted.TYPE, _value(RequestAccepted, "x"), Outcome.DEAD_LETTERED, id="misrouted-type-is-decoded"),
        pytest.param(CertificateIssued.TYPE, b"{not even json", Outcome.DEAD_LETTERED, id="handled-type-is-decoded"),
        pytest.param("io.example.unknown.v1", b"{not even json", Outcome.DEAD_LETTERED, id="unknown-type-is-decoded"),
        pytest.param(None, _value(IssuancePending, "x"), Outcome.IGNORED, id="no-header-decoded-then-ignored"),
    ],
)
async def test_skip_by_type_header(declared: str | None, value: bytes, expected: Outcome) -> None:
    calls: list[str] = []

    async def handler(envelope: Envelope) -> list[Outbound]:
        calls.append(envelope.id)
        return []

    dispatcher, publisher = _dispatcher(handler, skip_by_type_header=True)
    headers = (("content-type", CONTENT_TYPE.encode()),) + ((("ce_type", declared.encode()),) if declared else ())
    assert await dispatcher.dispatch_batch([_record(b"c", 0, value, headers=headers)]) == [expected]
    assert calls == []
    assert len(publisher.sent) == (1 if expected is Outcome.DEAD_LETTERED else 0)


async def test_without_the_option_a_type_header_is_not_trusted() -> None:
    dispatcher, publisher = _dispatcher(lambda envelope: [])
    headers = (("ce_type", RequestAccepted.TYPE.encode()),)
    assert await dispatcher.dispatch(_record(b"c", 0, b"{not even json", headers=headers)) is Outcome.DEAD_LETTERED
    assert [out.topic for out in publisher.sent] == [TOPICS.deadletter]


def test_one_chain_per_key_across_topics_in_production_order() -> None:
    def record(topic: str, partition: int, offset: int, key: bytes | None, ts: int) -> InboundRecord:
        return InboundRecord(topic=topic, partition=partition, offset=offset, value=b"{}", key=key, timestamp_ms=ts)

    records = [
        record("events.issuer", 0, 7, b"web-1", 2_000),  # 0: issued after ...
        record("events.issuer", 0, 8, b"web-2", 1_500),  # 1
        record("events.gateway", 3, 40, b"web-1", 1_000),  # 2: ... its acceptance, fetched later in the batch
        record("events.gateway", 3, 41, b"web-1", 2_500),  # 3
        record("events.issuer", 0, 9, b"web-1", 1_900),  # 4: an older timestamp, yet after offset 7 of its partition
        record("requests", 1, 5, None, 3_000),  # 5: no key: a chain of its partition
        record("requests", 1, 6, None, 100),  # 6
    ]
    chains = sorted(key_chains(records))
    assert chains == sorted([[2, 0, 4, 3], [1], [5, 6]])
