"""Handler failures on the real broker, through the shared service bootstrap (build_service: the
runtime's consumer loop, the Dispatcher, /health and /metrics): a record whose handler fails every time is
dead-lettered with HANDLER_FAILED after N attempts and the records behind it are handled; a
transient failure is retried, never dead-lettered, and while it lasts the consumer is reported
stalled (/health 503 naming the partition and offset, certrail_consumer_stalled 1, the lag true),
then healthy again once it passes (issue 17)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from faststream.kafka import KafkaBroker
from sqlalchemy.exc import OperationalError

from services.common.consumer import Outbound
from services.common.contracts.catalog import CATALOG
from services.common.contracts.deadletter import DeadLetter
from services.common.contracts.envelope import Envelope, decode, encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.requests import IssueRequested
from services.common.contracts.topics import Topics
from services.common.kafka_config import consumer_kwargs, faststream_broker_kwargs
from services.common.service_app import ServiceSettings, Subscription, build_service
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.topics_admin import delete_topics, ensure_topics
from tests.conftest import poll_until
from tests.unit.examples import NOW, examples

pytestmark = pytest.mark.integration

REQUEST = examples()[IssueRequested]


@pytest.fixture
async def topics(kafka_settings: KafkaSettings) -> AsyncIterator[Topics]:
    names = Topics(f"test.failures.{uuid.uuid4().hex[:10]}")
    created = [names.requests, names.deadletter]
    await ensure_topics(kafka_settings, created, partitions=1)
    yield names
    await delete_topics(kafka_settings, created)


def _request(request_id: str) -> bytes:
    data = REQUEST.model_copy(update={"request_id": request_id})
    return encode(make_event(data, id=f"evt-{request_id}", source="/t", time=NOW, subject=request_id))


async def _dead_letters(kafka_settings: KafkaSettings, topic: str, *, at_least: int, settle_s: float) -> list[DeadLetter]:
    """The dead letters on ``topic``: at least ``at_least``, and whatever more arrives within ``settle_s`` after."""
    consumer = AIOKafkaConsumer(topic, **consumer_kwargs(kafka_settings, f"dl-{uuid.uuid4().hex[:8]}"))
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        async with asyncio.timeout(60):
            while len(letters) < at_least:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    letters.extend(decode(r.value, CATALOG).data for r in records)  # type: ignore[misc]
        settle_until = time.monotonic() + settle_s
        while time.monotonic() < settle_until:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                letters.extend(decode(r.value, CATALOG).data for r in records)  # type: ignore[misc]
    finally:
        await consumer.stop()
    return letters


def _sample(text: str, name: str, labels: dict[str, str]) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_poison_handler_is_dead_lettered_and_a_transient_failure_stalls_then_recovers(
    kafka_settings: KafkaSettings, topics: Topics, tmp_path: Path
) -> None:
    handled: list[str] = []
    attempts: dict[str, int] = {}
    database_down = asyncio.Event()

    async def on_request(envelope: Envelope) -> list[Outbound]:
        request_id = envelope.data.request_id  # type: ignore[attr-defined]
        attempts[request_id] = attempts.get(request_id, 0) + 1
        if request_id == "poison":
            raise ValueError("this request breaks the handler every time")
        if request_id.startswith("stuck") and database_down.is_set():
            raise OperationalError("UPDATE requests SET x = ?", {"x": "s3cret"}, Exception("database is locked"))
        handled.append(request_id)
        return []

    settings = ServiceSettings(
        group_id=f"failures-{uuid.uuid4().hex[:8]}",
        kafka=kafka_settings.model_copy(update={"topic_prefix": topics.prefix}),
        db=DatabaseSettings(url=f"sqlite:///{tmp_path / 'service.db'}"),
        handler_attempts=3,
        stall_after_failures=2,
        retry_max_s=0.5,
    )
    app, runtime = build_service("gateway", settings, [Subscription(topics=[topics.requests])], {IssueRequested: on_request})
    runtime.dispatcher.handler_retry_initial_s = 0.05
    producer = KafkaBroker(**faststream_broker_kwargs(kafka_settings))
    await producer.start()
    await runtime.broker.start()
    runtime.start_consumers()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service")  # type: ignore[arg-type]
    try:
        # 1. a record whose handler fails every time: dead-lettered after 3 attempts; the next one is handled
        await producer.publish(_request("poison"), topic=topics.requests, key=b"poison")
        await producer.publish(_request("good-1"), topic=topics.requests, key=b"poison")  # right behind it
        await poll_until(lambda: "good-1" in handled, "the request behind the poison one", 60)
        assert attempts["poison"] == 3
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["consumers"] == {"requests": "ok"}

        # 2. a transient failure: retried with backoff (never dead-lettered); after 2 failures the consumer is stalled
        database_down.set()
        await producer.publish(_request("stuck"), topic=topics.requests, key=b"stuck")
        await producer.publish(_request("stuck-behind"), topic=topics.requests, key=b"stuck")  # same certificate
        stuck_offset = 2  # poison 0, good-1 1, stuck 2, stuck-behind 3

        async def stalled_health() -> httpx.Response | None:
            response = await client.get("/health")
            return response if response.status_code == 503 else None

        response = await poll_until(stalled_health, "the consumer to be reported stalled", 60, interval_s=0.2)
        body = response.json()
        verdict = body["checks"]["consumer:requests"]
        assert verdict.startswith(f"stalled: {topics.requests}/0@{stuck_offset} failed ")
        assert "OperationalError: database is locked" in verdict and "s3cret" not in verdict
        assert body["status"] == "degraded" and body["checks"]["kafka"] == "ok" and body["checks"]["database"] == "ok"
        metrics = (await client.get("/metrics")).text
        assert _sample(metrics, "certrail_consumer_stalled", {"service": "gateway", "consumer": "requests"}) == 1
        lag = _sample(metrics, "certrail_consumer_lag_records",
                      {"service": "gateway", "consumer": "requests", "topic": topics.requests, "partition": "0"})
        assert lag == 2  # the stuck record and the one behind it
        partition0 = {"service": "gateway", "consumer": "requests", "topic": topics.requests, "partition": "0"}
        waited = _sample(metrics, "certrail_consumer_no_progress_seconds", partition0)
        assert waited is not None and waited > 0

        async def still_waiting_longer() -> bool:  # measured at scrape time: it grows while nothing moves
            text = (await client.get("/metrics")).text
            return (_sample(text, "certrail_consumer_no_progress_seconds", partition0) or 0) > waited + 0.5 and (
                _sample(text, "certrail_consumer_oldest_unprocessed_age_seconds", partition0) or 0) > 0.5

        await poll_until(still_waiting_longer, "no progress and the stuck record's age to grow", 10, interval_s=0.2)
        transient = _sample(metrics, "certrail_consumer_handler_failures_total",
                            {"service": "gateway", "consumer": "requests", "kind": "transient"})
        assert transient is not None and transient >= 2
        assert "stuck-behind" not in handled  # the same certificate: never before the record ahead of it

        # 3. the database is back: the records are handled, the consumer is healthy again, lag 0
        database_down.clear()
        await poll_until(lambda: {"stuck", "stuck-behind"} <= set(handled), "the stuck records after recovery", 60)
        async def healthy() -> bool:
            return (await client.get("/health")).status_code == 200

        await poll_until(healthy, "the consumer to be healthy again after recovering", 30, interval_s=0.2)
        metrics = (await client.get("/metrics")).text
        assert _sample(metrics, "certrail_consumer_stalled", {"service": "gateway", "consumer": "requests"}) == 0
        assert _sample(metrics, "certrail_consumer_lag_records",
                       {"service": "gateway", "consumer": "requests", "topic": topics.requests, "partition": "0"}) == 0
        assert _sample(metrics, "certrail_consumer_no_progress_seconds", partition0) == 0
        assert _sample(metrics, "certrail_consumer_oldest_unprocessed_age_seconds", partition0) == 0
        failed = _sample(metrics, "certrail_consumer_handler_failures_total",
                         {"service": "gateway", "consumer": "requests", "kind": "failed"})
        assert failed == 3
    finally:
        await client.aclose()
        await runtime.stop_consumers()
        await runtime.broker.stop()
        await producer.stop()
        runtime.engine.dispose()

    # exactly one dead letter, the poison one, with its coordinates; nothing for the transient failure
    letters = await _dead_letters(kafka_settings, topics.deadletter, at_least=1, settle_s=2)
    assert len(letters) == 1
    (letter,) = letters
    assert letter.code is ErrorCode.HANDLER_FAILED and letter.consumer == "gateway"
    assert (letter.source.topic, letter.source.partition, letter.source.offset) == (topics.requests, 0, 0)
    assert letter.reason == "the gateway handler failed 3 times: ValueError: this request breaks the handler every time"
