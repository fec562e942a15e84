"""The auditor: stores every record of every certrail topic in a tamper-evident
audit log, keeps the certificate inventory, and publishes signed checkpoints.

Unlike the gateway and the deployer it does not consume through FastStream and the
shared Dispatcher: it runs on the service runtime's loop in its fetch-batch mode (consumer_loop.py,
services/common/runtime/fetch_batches.py, decision 0017), stores each batch in one
transaction and commits each partition's offsets only after its records are stored, and it stores undecodable records raw instead of dead-lettering them (the other
consumers of those topics dead-letter them). FastStream serves the HTTP side (``/health``,
``/metrics``) and its idempotent producer publishes the checkpoints; ``/internal/v1`` on the same port
serves the inventory and timelines to the gateway (internal_api.py, decision 0020).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry, make_asgi_app
from sqlalchemy import Engine

from services.auditor.checkpoints import Checkpointer
from services.auditor.consumer_loop import AuditConsumer, LoopSettings
from services.auditor.internal_api import create_internal_app
from services.auditor.inventory_read import INVENTORY_STATUSES, inventory_status_counts
from services.auditor.keys import load_or_create_signing_key
from services.auditor.metrics import AuditMetrics
from services.auditor.settings import AuditorSettings
from services.auditor.sql import tune_for_ingest
from services.auditor.verify_runs import latest_run
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session
from services.common.internal_api import InternalApiSettings, configured_token, mount_internal
from services.common.kafka_edge import FastStreamPublisher, make_broker
from services.common.metrics import PublisherMetrics, service_info
from services.common.proc import exit_with_parent
from services.common.progress import ProgressTracker
from services.common.runner import run_service
from services.common.service_app import certrail_version, database_ok, heartbeat_forever, new_instance_id

SERVICE = "auditor"
STOP_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class AuditorRuntime:
    """The wired parts of a running auditor (for tests and the app's hooks)."""

    name: str
    instance_id: str
    settings: AuditorSettings
    topics: Topics
    registry: CollectorRegistry
    broker: KafkaBroker
    engine: Engine
    metrics: AuditMetrics
    checkpointer: Checkpointer
    consumer: AuditConsumer
    signing_key: Ed25519PrivateKey = field(repr=False)
    started_at: datetime = field(default_factory=utc_now)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    consumer_task: asyncio.Task[None] | None = None

    def consumer_alive(self) -> bool:
        return self.consumer_task is not None and not self.consumer_task.done()

    # -- background work -------------------------------------------------------

    def db_ok(self) -> bool:
        return database_ok(self.engine)

    def _refresh_verify_metrics(self) -> None:
        with read_session(self.engine) as session:
            run = latest_run(session)
        if run is not None:
            self.metrics.verify_result(run.ok, run.finished_at, run.problems)

    def _refresh_inventory_metrics(self) -> None:
        with read_session(self.engine) as session:
            counts = inventory_status_counts(session, utc_now())
        for status in INVENTORY_STATUSES:
            self.metrics.inventory.labels(status).set(counts.get(status, 0))

    async def _inventory_loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._refresh_inventory_metrics)
            except Exception:  # noqa: BLE001 - metrics only
                log.warning("counting the inventory failed", exc_info=True)
            await asyncio.sleep(self.settings.inventory_metrics_interval_s)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.checkpoint_interval_s)
            await self.publish_checkpoint()
            try:
                await asyncio.to_thread(self._refresh_verify_metrics)
            except Exception:  # noqa: BLE001 - metrics only
                log.warning("reading the latest verify result failed", exc_info=True)

    async def publish_checkpoint(self, final: bool = False) -> int:
        try:
            sent = await self.checkpointer.publish(final=final)
        except Exception:  # noqa: BLE001 - retried at the next interval; the chains stay verifiable
            log.warning("publishing a checkpoint failed", exc_info=True)
            return 0
        if sent:
            self.metrics.checkpoints.inc(sent)
            self.metrics.last_checkpoint.set(utc_now().timestamp())
        return sent

    async def start(self) -> None:
        log.info("auditor %s signs checkpoints with key id %s", self.instance_id, self.checkpointer.key_id)
        self.consumer_task = asyncio.create_task(self.consumer.run(), name="auditor-consumer")
        self.tasks.append(asyncio.create_task(heartbeat_forever(
            self.engine, self.name, self.instance_id, self.started_at, self.settings.heartbeat_interval_s), name="auditor-heartbeat"))
        self.tasks.append(asyncio.create_task(self._checkpoint_loop(), name="auditor-checkpoints"))
        self.tasks.append(asyncio.create_task(self._inventory_loop(), name="auditor-inventory-metrics"))

    async def stop(self) -> None:
        """Finish the batch in flight, leave the group, publish a last checkpoint, stop."""
        self.consumer.stop()
        if self.consumer_task is not None:
            try:
                await asyncio.wait_for(self.consumer_task, STOP_TIMEOUT_S)
            except TimeoutError:
                log.error("the consumer did not stop within %.0fs", STOP_TIMEOUT_S)
        sent = await self.publish_checkpoint(final=True)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        self.engine.dispose()
        log.info(
            "auditor stopped: %d records stored by this instance, %d final checkpoint message(s) published",
            self.consumer.records_stored, sent,
        )


def prepare_pool_factory(processes: int) -> Callable[[], Executor]:
    """Makes the worker processes that prepare batches (spawned: safe beside threads and the event loop)."""

    def make() -> Executor:
        return ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=exit_with_parent,  # a SIGKILLed auditor must not leave its workers behind
            initargs=(os.getpid(),),
        )

    return make


def create_app(settings: AuditorSettings, internal: InternalApiSettings | None = None) -> tuple[Any, AuditorRuntime]:
    """The auditor; ``internal``: where the internal API's token is (None: no token, every ``/internal/v1``
    request is refused)."""
    topics = Topics(settings.kafka.topic_prefix)
    registry = CollectorRegistry(auto_describe=True)
    instance_id = new_instance_id()
    service_info(registry, SERVICE, certrail_version(), instance_id)
    broker = make_broker(settings.kafka, registry, SERVICE)
    publisher = FastStreamPublisher(broker, PublisherMetrics(registry, SERVICE))
    engine = make_engine(settings.db)
    tune_for_ingest(engine)
    key = load_or_create_signing_key(settings.signing_key_file, settings.signing_key_passphrase)
    metrics = AuditMetrics(registry, topics)
    checkpointer = Checkpointer(
        key, auditor=instance_id, group_id=settings.group_id, topics=topics, publish=publisher.publish, clock=utc_now
    )
    processes = settings.effective_prepare_processes()
    consumer = AuditConsumer(
        prepare_pool=prepare_pool_factory(processes) if processes else None,
        kafka=settings.kafka,
        settings=LoopSettings(
            group_id=settings.group_id,
            max_batch_records=settings.max_batch_records,
            poll_timeout_ms=settings.poll_timeout_ms,
            topic_refresh_interval_ms=settings.topic_refresh_interval_ms,
            retry_backoff_max_s=settings.retry_backoff_max_s,
            batch_linger_s=settings.batch_linger_ms / 1000,
        ),
        topics=topics,
        engine=engine,
        metrics=metrics,
        checkpointer=checkpointer,
        clock=utc_now,
        progress=ProgressTracker(registry, SERVICE, stall_after=settings.stall_after_failures),
    )
    runtime = AuditorRuntime(
        SERVICE, instance_id, settings, topics, registry, broker, engine, metrics, checkpointer, consumer, key
    )
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
            "consumer": {
                "running": runtime.consumer_alive(),
                "assigned_partitions": len(consumer.assigned),
                "records_stored": consumer.records_stored,
            },
        }
        return AsgiResponse(json.dumps(body).encode(), 200 if healthy else 503, headers={"content-type": "application/json"})

    app = AsgiFastStream(
        broker,
        asgi_routes=[("/health", health), ("/metrics", make_asgi_app(registry))],
        after_startup=[runtime.start],
        on_shutdown=[runtime.stop],
    )
    token = configured_token(internal) if internal is not None else None  # decision 0020
    return mount_internal(app, create_internal_app(engine, token, utc_now)), runtime


def main() -> None:
    settings = AuditorSettings()
    app, _ = create_app(settings, InternalApiSettings())
    run_service(app, settings)
