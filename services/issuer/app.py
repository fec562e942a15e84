"""The issuer: consumes every connector's command topic (``certrail.commands.*``, by pattern)
with its own aiokafka loop (consumer_loop.py), talks to emCA through the connector registry's
connectors (connectors.py), records intents and outcomes (state.py) and publishes
IssuancePending, CertificateIssued, IssuanceFailed, CertificateRevoked, RevocationFailed and
ConnectorStatusChanged to its own ``certrail.events.issuer`` through an idempotent aiokafka producer of its own
(acks=all; `EventProducer`). After each revocation a background task confirms it on the CA's CRL
(services/issuer/revocation/: RevocationConfirmed or RevocationUnconfirmed), and another watches each connector's
CRL for revocations made outside certrail (RevokedOutOfBand). It owns the connector registry (services/issuer/
registry/, decision 0034): served on ``/internal/v1/connectors``, each change's admin event through its outbox,
published by a relay. FastStream serves ``/health`` and ``/metrics``. docs/issuer.md explains it all.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry, make_asgi_app
from sqlalchemy import Engine

from services.common.admin_outbox import start_relay
from services.common.connectors.secretbox import load_secret_box
from services.common.consumer import Outbound
from services.common.contracts.envelope import declared_type, make_event, record_headers
from services.common.contracts.events import ConnectorStatus, ConnectorStatusChanged
from services.common.contracts.fields import ErrorInfo
from services.common.contracts.identity import message_id
from services.common.contracts.topics import Topics
from services.common.db import make_engine
from services.common.emca.client import connect as emca_connect
from services.common.internal_api import InternalApiSettings, configured_token, mount_internal
from services.common.kafka_config import producer_kwargs
from services.common.kafka_edge import make_broker
from services.common.metrics import PublisherMetrics, service_info
from services.common.progress import ProgressTracker
from services.common.runner import run_service
from services.common.service_app import certrail_version, database_ok, heartbeat_forever, new_instance_id
from services.common.settings import KafkaSettings
from services.issuer.batching import SubmitBatcher
from services.issuer.connectors import ConnectorPool, RuntimeSettings
from services.issuer.consumer_loop import IssuerConsumer, LoopSettings
from services.issuer.duplicates.internal_api import create_internal_app
from services.issuer.duplicates.resolver import CheckTiming, DuplicateResolver
from services.issuer.metrics import IssuerMetrics
from services.issuer.processor import SOURCE, ApprovalSettings, CrashPoints, Processor
from services.issuer.registry.internal_api import connector_router
from services.issuer.registry.internal_api import install as install_connector_routes
from services.issuer.registry.outbox import OutboxRelay
from services.issuer.registry.registry import ConnectorRegistry, KafkaTopicCreator
from services.issuer.revocation.confirmer import ConfirmSettings, RevocationConfirmer
from services.issuer.revocation.metrics import RevocationMetrics
from services.issuer.revocation.source import PoolCrlSource
from services.issuer.revocation.watch_decision import owned_connectors
from services.issuer.revocation.watch_metrics import WatchMetrics
from services.issuer.revocation.watcher import CrlWatcher, WatchSettings
from services.issuer.settings import IssuerSettings
from services.issuer.state import StoredRecord

SERVICE = "issuer"
STOP_TIMEOUT_S = 60.0

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


class EventProducer:
    """Publishes the issuer's records (its events, dead letters) through an idempotent aiokafka producer
    (acks=all) of its own: each record sent in order, then their acknowledgements awaited together.

    Not FastStream's publisher: its per-record work (a publish command, a correlation id, the middleware)
    cost as much CPU again as the send itself (docs/benchmarks.md, "Issuer throughput"). Published records
    are counted in ``certrail_messages_published_total{service="issuer"}``."""

    def __init__(self, settings: KafkaSettings, metrics: PublisherMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(**producer_kwargs(self._settings))  # on the service's event loop
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def publish(self, records: Sequence[StoredRecord]) -> None:
        if self._producer is None:
            raise RuntimeError("the issuer's producer is not started")
        acks = []
        types = []
        for r in records:
            message_type = r.type or declared_type(r.value)  # read back from storage: the body says
            headers = [(name, value.encode()) for name, value in record_headers(message_type).items()]
            key = r.key.encode("utf-8") if r.key is not None else None
            acks.append(await self._producer.send(r.topic, r.value, key=key, headers=headers))
            types.append(message_type or "unknown")
        await asyncio.gather(*acks)
        for message_type in types:
            self._metrics.published_one(message_type)


@dataclass
class IssuerRuntime:
    name: str
    instance_id: str
    settings: IssuerSettings
    topics: Topics
    registry: CollectorRegistry
    broker: KafkaBroker
    engine: Engine
    metrics: IssuerMetrics
    pool: ConnectorPool
    consumer: IssuerConsumer
    producer: EventProducer
    started_at: datetime = field(default_factory=utc_now)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    consumer_task: asyncio.Task[None] | None = None
    confirmer: RevocationConfirmer | None = None
    watcher: CrlWatcher | None = None
    duplicates: DuplicateResolver | None = None

    def consumer_alive(self) -> bool:
        return self.consumer_task is not None and not self.consumer_task.done()

    def db_ok(self) -> bool:
        return database_ok(self.engine)

    async def start(self) -> None:
        await self.producer.start()  # before anything may publish (the consumer, connector status changes)
        self.consumer_task = asyncio.create_task(self.consumer.run(), name="issuer-consumer")
        self.tasks.append(asyncio.create_task(heartbeat_forever(
            self.engine, self.name, self.instance_id, self.started_at, self.settings.heartbeat_interval_s), name="issuer-heartbeat"))
        self.tasks.append(asyncio.create_task(self.pool.refresh_forever(), name="issuer-connectors"))
        if self.confirmer is not None:  # revocations confirmed on the CRL: beside the command loop, never in it
            self.tasks.append(asyncio.create_task(self.confirmer.run_forever(), name="issuer-revocation-checks"))
        if self.watcher is not None:  # revocations made outside certrail: beside the command loop, never in it
            self.tasks.append(asyncio.create_task(self.watcher.run_forever(), name="issuer-crl-watch"))
        if self.duplicates is not None:  # the unresolved-duplicates gauge; resolutions not yet acknowledged
            self.tasks.append(asyncio.create_task(self.duplicates.run_forever(), name="issuer-duplicates"))

    async def stop(self) -> None:
        """Let commands at emCA finish, commit what is finished, leave the group."""
        self.consumer.stop()
        if self.consumer_task is not None:
            try:
                await asyncio.wait_for(self.consumer_task, STOP_TIMEOUT_S)
            except TimeoutError:
                log.error("the consumer did not stop within %.0fs", STOP_TIMEOUT_S)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        await self.pool.close()
        await self.producer.stop()  # after everything that publishes has stopped
        self.engine.dispose()
        log.info("issuer stopped: %d commands finished by this instance", self.consumer.finished)


def create_app(settings: IssuerSettings, internal: InternalApiSettings | None = None) -> tuple[Any, IssuerRuntime]:
    """The issuer's ASGI app (FastStream's, with ``/internal/v1`` mounted: decision 0020) and its runtime."""
    topics = Topics(settings.kafka.topic_prefix)
    registry = CollectorRegistry(auto_describe=True)
    instance_id = new_instance_id()
    service_info(registry, SERVICE, certrail_version(), instance_id)
    broker = make_broker(settings.kafka, registry, SERVICE)
    engine = make_engine(settings.db)
    metrics = IssuerMetrics(registry)
    crash = CrashPoints(settings.test_crash_point)
    if settings.test_crash_point:
        log.warning("TEST CRASH POINT %s is set: this issuer will exit abruptly there", settings.test_crash_point)

    producer = EventProducer(settings.kafka, PublisherMetrics(registry, SERVICE))
    publish_raw = producer.publish  # sent in order, acknowledged together (idempotent producer: order per key holds)

    async def on_status(name: str, status: ConnectorStatus, previous: ConnectorStatus | None, error: ErrorInfo | None) -> None:
        now = utc_now()
        data = ConnectorStatusChanged(connector=name, status=status, previous=previous, error=error, changed_at=now)
        event = make_event(data, id=message_id(f"connector:{name}:{instance_id}", data.TYPE, now.isoformat()),
                           source=SOURCE, time=now, subject=f"connector:{name}")
        await publish_raw([StoredRecord.of(Outbound(topics.topic_of(ConnectorStatusChanged), event, key=f"connector:{name}"))])

    # create=True: on the embedded default, whoever needs the key file first creates it (the CLI does the same)
    # the registry's only writer (decision 0034): validates against emCA, creates command topics, holds the secrets;
    # whether a connector is in use is its caller's check (the gateway's projections), made before a delete
    connector_registry = ConnectorRegistry(engine, load_secret_box(settings.secrets, create=True), connect=emca_connect,
                                           topics=KafkaTopicCreator(settings.kafka), usage_checks=[], clock=utc_now)
    pool = ConnectorPool(
        connector_registry, metrics,
        RuntimeSettings(probe_initial_s=settings.probe_initial_s, probe_max_s=settings.probe_max_s,
                        retry_after_max_s=settings.retry_after_max_s, registry_poll_s=settings.registry_poll_s,
                        rate_per_s=settings.drain_rate_per_s),
        on_status,
    )
    confirmer = RevocationConfirmer(
        engine=engine, source=PoolCrlSource(pool), publish=publish_raw, topics=topics, metrics=RevocationMetrics(registry),
        clock=utc_now, event_source=SOURCE,
        settings=ConfirmSettings(timeout_s=settings.revocation_confirm_timeout_s,
                                 poll_initial_s=settings.revocation_confirm_poll_initial_s,
                                 poll_max_s=settings.revocation_confirm_poll_max_s),
        # the checks of revocations commanded on this instance's partitions (as pending approvals are)
        partitions=lambda: {(tp.topic, tp.partition) for tp in consumer.assigned},
    )
    watcher = CrlWatcher(
        engine=engine, source=PoolCrlSource(pool), publish=publish_raw, topics=topics,
        metrics=WatchMetrics(registry, settings.crl_watch_interval_s), clock=utc_now, event_source=SOURCE,
        settings=WatchSettings(interval_s=settings.crl_watch_interval_s, retry_s=settings.crl_watch_retry_s),
        # the connectors whose command topic's partition 0 this instance holds (decision 0030)
        owned=lambda: owned_connectors(((tp.topic, tp.partition) for tp in consumer.assigned), topics),
    )
    processor = Processor(
        engine=engine, pool=pool, publish=publish_raw, topics=topics, metrics=metrics, clock=utc_now, crash=crash,
        batcher=SubmitBatcher(max_csrs=settings.batch_max_csrs, max_calls=settings.batch_calls,
                              on_call=metrics.emca_batch_csrs.observe),
        approvals=ApprovalSettings(poll_initial_s=settings.approval_poll_initial_s, poll_max_s=settings.approval_poll_max_s,
                                   timeout=timedelta(seconds=settings.approval_timeout_s)),
        confirmer=confirmer,
    )
    consumer = IssuerConsumer(
        kafka=settings.kafka,
        settings=LoopSettings(
            group_id=settings.group_id, poll_timeout_ms=settings.poll_timeout_ms, max_poll_records=settings.max_poll_records,
            topic_refresh_interval_ms=settings.topic_refresh_interval_ms,
            max_in_flight_per_partition=settings.max_in_flight_per_partition, revoke_grace_s=settings.revoke_grace_s,
            poison_attempts=settings.poison_attempts, pending_poll_interval_s=settings.pending_poll_interval_s,
        ),
        topics=topics, processor=processor, pool=pool, metrics=metrics, publish_raw=publish_raw, clock=utc_now,
        engine=engine, progress=ProgressTracker(registry, SERVICE, stall_after=settings.stall_after_failures),
    )
    duplicates = DuplicateResolver(
        engine=engine, pool=pool, publish=publish_raw, topics=topics, gauge=metrics.duplicates_unresolved, clock=utc_now,
        event_source=SOURCE, on_check=confirmer.wake,
        timing=CheckTiming(timeout_s=settings.revocation_confirm_timeout_s,
                           poll_initial_s=settings.revocation_confirm_poll_initial_s))
    runtime = IssuerRuntime(SERVICE, instance_id, settings, topics, registry, broker, engine, metrics, pool, consumer,
                            producer, confirmer=confirmer, watcher=watcher, duplicates=duplicates)

    @get(include_in_schema=False)
    async def health(scope: object) -> AsgiResponse:  # noqa: ARG001
        kafka_ok = await broker.ping(timeout=3.0) and runtime.consumer_alive()
        db_ok = await asyncio.to_thread(runtime.db_ok)
        stalled = consumer.progress.checks() if consumer.progress is not None else {}
        healthy = kafka_ok and db_ok and not stalled
        body = {
            "service": SERVICE,
            "instance_id": instance_id,
            "status": "ok" if healthy else "degraded",
            "checks": {"kafka": "ok" if kafka_ok else "failing", "database": "ok" if db_ok else "failing", **stalled},
            "consumers": consumer.progress.consumers() if consumer.progress is not None else {},
            "consumer": {"running": consumer.running, "assigned_partitions": len(consumer.assigned),
                         "commands_finished": consumer.finished},
            "connectors": {r.name: {"status": r.status.value, "circuit": r.circuit} for r in pool.runtimes()},
        }
        return AsgiResponse(json.dumps(body).encode(), 200 if healthy else 503, headers={"content-type": "application/json"})

    app = AsgiFastStream(
        broker,
        asgi_routes=[("/health", health), ("/metrics", make_asgi_app(registry))],
        after_startup=[runtime.start],
        on_shutdown=[runtime.stop],
    )
    relay = _start_outbox_relay(app, runtime, producer)
    duplicates.queued = relay.wake  # a resolution's DuplicateResolved is in the outbox: publish it now
    token = configured_token(internal) if internal is not None else None  # decision 0020
    internal_app = create_internal_app(duplicates, token)
    install_connector_routes(internal_app, connector_router(connector_registry, engine, utc_now, changed=relay.wake))
    return mount_internal(app, internal_app), runtime


def _start_outbox_relay(app: AsgiFastStream, runtime: IssuerRuntime, producer: EventProducer) -> OutboxRelay:
    """Publish the issuer's outbox (its connector admin events and the duplicates' DuplicateResolved): all at start,
    then every few seconds or when woken after a change or a resolution (registry/outbox.py)."""

    async def send(records: Sequence[tuple[str, str | None, bytes, str]]) -> None:
        await producer.publish([StoredRecord(topic, key, value, event_type) for topic, key, value, event_type in records])

    relay = OutboxRelay(runtime.engine, runtime.topics, send, utc_now)
    start_relay(app, relay, "issuer-admin-outbox")
    return relay


def main() -> None:
    settings = IssuerSettings()
    app, _ = create_app(settings, InternalApiSettings())
    run_service(app, settings)
