"""One bootstrap shape for the four services.

`build_service` wires a FastStream Kafka broker (its idempotent producer and the
application's lifecycle), the shared Dispatcher with the service's handlers, one
runtime consumer loop per subscription (`DispatchLoop`, services/common/runtime/
fetch_batches.py, decision 0017), a Prometheus registry and the SQL engine into an
`AsgiFastStream` app served by uvicorn, with:

- ``GET /health``: 200 when the broker answers, the database accepts a
  query and no consumer is stalled (services/common/progress.py), 503
  otherwise, with a JSON body naming each check (a stalled consumer adds
  ``consumer:<name>``, saying which topic/partition/offset keeps failing;
  ``consumers`` lists every consumer's verdict);
- ``GET /metrics``: the service's Prometheus registry.

Nothing happens at import time: `create_app(settings)` in each service calls
this; `main()` reads the settings from the environment and runs uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry, make_asgi_app
from pydantic import Field
from pydantic_settings import BaseSettings
from sqlalchemy import Engine, text

from services.common.consumer import Dispatcher, Handler, InboundRecord
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import Message
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import record_heartbeat
from services.common.kafka_edge import FastStreamPublisher, make_broker
from services.common.metrics import ConsumerMetrics, PublisherMetrics, channel_of, service_info
from services.common.progress import ProgressTracker
from services.common.runtime.fetch_batches import DispatchLoop
from services.common.runtime.keyed_loop import LoopSettings
from services.common.settings import DatabaseSettings, KafkaSettings

log = logging.getLogger(__name__)

#: records per fetch of a service's consumer, and how long one fetch waits for them
FETCH_MAX_RECORDS = 500
FETCH_TIMEOUT_MS = 50
#: how long stopping a service waits for its consumers to finish what they fetched (past the revoke grace)
STOP_TIMEOUT_S = 30.0


def certrail_version() -> str:
    try:
        return version("certrail")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def new_instance_id() -> str:
    """This process's instance id (host, pid, random): in heartbeats, /health and service_info."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def database_ok(engine: Engine) -> bool:
    """The health check of the database: a ``SELECT 1`` (failures are logged)."""
    try:
        with read_session(engine) as session:
            session.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means "not healthy"; the reason is logged
        log.warning("database health check failed", exc_info=True)
        return False


async def heartbeat_forever(engine: Engine, service: str, instance_id: str, started_at: datetime, interval_s: float) -> None:
    """This instance's row in ``service_heartbeats``, refreshed every ``interval_s`` until cancelled."""

    def beat() -> None:
        with write_session(engine) as session:
            record_heartbeat(session, service=service, instance_id=instance_id, pid=os.getpid(), hostname=socket.gethostname(),
                             version=certrail_version(), started_at=started_at, now=datetime.now(UTC))

    while True:
        try:
            await asyncio.to_thread(beat)
        except Exception:  # noqa: BLE001 - a failed heartbeat must not stop the service
            log.warning("heartbeat write failed", exc_info=True)
        await asyncio.sleep(interval_s)


class ServiceSettings(BaseSettings):
    """Settings every service has; each service subclasses it with its own
    env prefix (``CERTRAIL_GATEWAY_``, ...) and default port."""

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    group_id: str = Field(default="certrail", min_length=1, max_length=200)
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    handler_attempts: int = Field(default=3, ge=1, le=100, description=(
        "Attempts of a handler failing with a non-transient error before the record is dead-lettered (HANDLER_FAILED)."))
    stall_after_failures: int = Field(default=3, ge=1, description=(
        "Failures in a row of the same record (or loop restarts) after which the consumer counts as stalled."))
    retry_max_s: float = Field(default=30.0, gt=0, description="The longest pause before a batch that failed transiently is retried.")
    rebalance_grace_s: float = Field(default=20.0, ge=0, description=(
        "How long partitions being revoked wait for the batches holding their records, so that their offsets are "
        "committed before the partitions move."))
    batch_linger_ms: int = Field(default=0, ge=0, le=1_000, description=(
        "How long a batch of fewer than 100 records waits before it is handled, so that what arrives meanwhile joins "
        "it (the gateway, the deployer and the auditor; not the issuer, which handles each command on its own): "
        "fewer, larger batches at a moderate rate, for that much latency more per service (docs/benchmarks.md)."))
    log_level: str = "INFO"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    db: DatabaseSettings = Field(default_factory=DatabaseSettings)  # each service: own_database(<name>)


def own_database(service: str) -> DatabaseSettings:
    """The ``db`` field of a service's settings: its own database (``DatabaseSettings.for_service``:
    ``CERTRAIL_<SERVICE>_DB_URL``, else ``CERTRAIL_DB_URL``, else ``var/<service>.db``)."""
    # a FieldInfo at run time; pydantic types Field(default_factory=f) as f's result, for use as a field default
    return Field(default_factory=lambda: DatabaseSettings.for_service(service),
                 description=f"The {service}'s database (CERTRAIL_{service.upper()}_DB_URL, else CERTRAIL_DB_URL, "
                             f"else var/{service}.db).")


@dataclass
class Subscription:
    """What a service consumes: fixed topics or a pattern, in one consumer group."""

    topics: Sequence[str] = ()
    pattern: str | None = None


@dataclass
class ServiceRuntime:
    """The wired parts of a running service, for tests and for the service's own code."""

    name: str
    instance_id: str
    topics: Topics
    registry: CollectorRegistry
    broker: KafkaBroker
    publisher: FastStreamPublisher
    dispatcher: Dispatcher
    engine: Engine
    progress: ProgressTracker
    loops: list[DispatchLoop] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    delivered: dict[str, int] = field(default_factory=dict)  # `deliver`'s next offset per topic
    consuming: list[asyncio.Task[None]] = field(default_factory=list)

    def start_consumers(self) -> None:
        """Start the consumer loops (the app does it once the broker's producer is up)."""
        self.consuming.extend(asyncio.create_task(loop.run(), name=f"{self.name}-{loop.consumer_name}")
                              for loop in self.loops)

    async def stop_consumers(self) -> None:
        """Stop the consumer loops while the producer still runs: what they fetched is finished (within the
        revoke grace) and committed; what is still running after ``STOP_TIMEOUT_S`` is cancelled."""
        for loop in self.loops:
            loop.stop()
        if self.consuming:
            _, late = await asyncio.wait(self.consuming, timeout=STOP_TIMEOUT_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*self.consuming, return_exceptions=True)
            self.consuming.clear()

    async def deliver(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        """Hand one record to the consumer of ``topic`` as a fetch of its own, the next offset of partition 0:
        the in-memory record source of the component tests (what they publish goes to FastStream's test broker)."""
        offset = self.delivered.get(topic, 0)
        self.delivered[topic] = offset + 1
        record = InboundRecord(topic=topic, partition=0, offset=offset, value=value, key=key,
                               timestamp_ms=int(datetime.now(UTC).timestamp() * 1000))
        await self.loop_for(topic).handle_fetch([record])

    def loop_for(self, topic: str) -> DispatchLoop:
        """The consumer loop subscribed to ``topic`` (tests hand it records with `DispatchLoop.handle_fetch`)."""
        for loop in self.loops:
            if topic in loop.subscribed_topics or (loop.pattern is not None and re.fullmatch(loop.pattern, topic)):
                return loop
        raise KeyError(f"no consumer of {self.name} reads {topic}")


def consumer_name(subscription: Subscription, topics: Topics) -> str:
    """The ``consumer`` label and /health check name of a subscription: its channels (or its pattern)."""
    if subscription.pattern:
        return subscription.pattern
    return ",".join(channel_of(topic, topics) for topic in subscription.topics)


def build_service(
    name: str,
    settings: ServiceSettings,
    subscriptions: Sequence[Subscription],
    handlers: Mapping[type[Message], Handler] | None = None,
) -> tuple[AsgiFastStream, ServiceRuntime]:
    topics = Topics(settings.kafka.topic_prefix)
    registry = CollectorRegistry(auto_describe=True)
    instance_id = new_instance_id()
    service_info(registry, name, certrail_version(), instance_id)
    broker = make_broker(settings.kafka, registry, name)
    publisher = FastStreamPublisher(broker, PublisherMetrics(registry, name))
    progress = ProgressTracker(registry, name, stall_after=settings.stall_after_failures)
    consumer_names = {sub_topic: consumer_name(sub, topics) for sub in subscriptions for sub_topic in sub.topics}
    fallback_name = consumer_name(subscriptions[0], topics) if subscriptions else name

    def on_failure(record: InboundRecord, exc: BaseException) -> None:  # noqa: ARG001 - counted; the dead letter names it
        progress.attempt_failed(consumer_names.get(record.topic, fallback_name))

    dispatcher = Dispatcher(
        service=name,
        catalog=CATALOG,
        topics=topics,
        publisher=publisher,
        handlers=dict(handlers or {}),
        observer=ConsumerMetrics(registry, name, topics),
        handler_attempts=settings.handler_attempts,
        on_failure=on_failure,
    )
    loop_settings = LoopSettings(
        group_id=settings.group_id,
        poll_timeout_ms=FETCH_TIMEOUT_MS,
        max_poll_records=FETCH_MAX_RECORDS,
        max_in_flight_per_partition=2 * FETCH_MAX_RECORDS,
        max_in_flight=2 * FETCH_MAX_RECORDS,  # the batch being handled and the next (docs/benchmarks.md)
        revoke_grace_s=settings.rebalance_grace_s,
        retry_backoff_max_s=settings.retry_max_s,
        batch_linger_s=settings.batch_linger_ms / 1000,
    )
    loops = [
        DispatchLoop(dispatcher, kafka=settings.kafka, settings=loop_settings, consumer_name=consumer_name(sub, topics),
                     topics=sub.topics, pattern=sub.pattern, clock=lambda: datetime.now(UTC), progress=progress)
        for sub in subscriptions
    ]
    engine = make_engine(settings.db)
    runtime = ServiceRuntime(name, instance_id, topics, registry, broker, publisher, dispatcher, engine, progress, loops)
    started_at = datetime.now(UTC)

    @get(include_in_schema=False)
    async def health(scope: object) -> AsgiResponse:  # noqa: ARG001
        kafka_ok = await broker.ping(timeout=3.0)
        db_ok = await asyncio.to_thread(database_ok, engine)
        stalled = progress.checks()
        healthy = kafka_ok and db_ok and not stalled
        body = {
            "service": name,
            "instance_id": instance_id,
            "status": "ok" if healthy else "degraded",
            "checks": {"kafka": "ok" if kafka_ok else "failing", "database": "ok" if db_ok else "failing", **stalled},
            "consumers": progress.consumers(),
        }
        return AsgiResponse(json.dumps(body).encode(), 200 if healthy else 503, headers={"content-type": "application/json"})

    async def _start_background() -> None:
        runtime.tasks.append(asyncio.create_task(
            heartbeat_forever(engine, name, instance_id, started_at, settings.heartbeat_interval_s), name=f"{name}-heartbeat"))
        runtime.start_consumers()

    async def _stop_background() -> None:
        await runtime.stop_consumers()  # first, while the producer still runs
        for task in runtime.tasks:
            task.cancel()
        await asyncio.gather(*runtime.tasks, return_exceptions=True)
        runtime.tasks.clear()
        engine.dispose()

    app = AsgiFastStream(
        broker,
        asgi_routes=[("/health", health), ("/metrics", make_asgi_app(registry))],
        after_startup=[_start_background],
        on_shutdown=[_stop_background],
    )
    return app, runtime
