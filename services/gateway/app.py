"""The gateway: the front door. Requests arrive on ``certrail.requests`` (signed by their
requester; consumed through the shared Dispatcher, so undecodable records are dead-lettered)
and through the HTTP API under ``/v1`` (bearer tokens; services/gateway/api.py). Both go
through one validation path (services/gateway/intake.py) and become commands on the
connector's topic (or ProvisionCertificate for bot-key profiles) plus RequestAccepted, or a
RequestRejected with a stable code. The renewal scheduler runs beside them (one active
instance per database: services/gateway/scheduler/). From ``certrail.events.issuer`` the
gateway folds CertificateIssued and CertificateRevoked into its own projection of issued
certificates (services/gateway/issued.py), which renew, revoke and the scheduler read, every
outcome event into its requests' status (services/gateway/request_status.py), which
``GET /v1/requests/{id}`` reads, and the issuer's connector admin events into its view of the connectors
(services/gateway/connector_view.py), which intake and the profile checks read.
docs/gateway.md explains it all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter

from services.common.admin_outbox import start_relay
from services.common.connectors.secretbox import SecretBox, load_secret_box
from services.common.consumer import CURRENT_RECORD, Handler, Outbound
from services.common.contracts.envelope import Envelope, Message
from services.common.contracts.events import (
    CertificateIssued,
    CertificateRevoked,
    IssuanceFailed,
    IssuancePending,
    RevocationFailed,
)
from services.common.contracts.requests import IssueRequested, RenewRequested, RevokeRequested
from services.common.contracts.revocation import RevokedOutOfBand
from services.common.contracts.topics import Topics
from services.common.runner import run_service
from services.common.runtime.writer import SessionWriter
from services.common.service_app import ServiceRuntime, Subscription, build_service
from services.gateway import connector_view, issued, request_status
from services.gateway.acme import certificates as acme_certificates
from services.gateway.config.outbox import OutboxRelay
from services.gateway.intake import Intake, Outcome, outgoing_records
from services.gateway.out_of_band import on_revoked_out_of_band
from services.gateway.scheduler import Scheduler
from services.gateway.scheduler.metrics import SchedulerMetrics
from services.gateway.settings import GatewaySettings
from services.gateway.store import SqlRequesterKeys

SERVICE = "gateway"
API_PREFIXES = ("/v1", "/docs", "/openapi.json", "/redoc", "/console", "/acme")

log = logging.getLogger(__name__)

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class GatewayRuntime:
    service: ServiceRuntime
    settings: GatewaySettings
    intake: Intake
    box: SecretBox
    publish_records: Callable[[Sequence[Outbound | dict[str, Any]]], Awaitable[None]]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def engine(self) -> Any:
        return self.service.engine

    @property
    def topics(self) -> Topics:
        return self.service.topics

    @property
    def broker(self) -> Any:
        return self.service.broker

    @property
    def registry(self) -> Any:
        return self.service.registry

    async def deliver(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        """`ServiceRuntime.deliver`: one record to the gateway's consumer of ``topic`` (component tests)."""
        await self.service.deliver(topic, value, key)


class PrefixRouter:
    """Sends ``/v1``, the OpenAPI document and the docs to the HTTP API; everything else
    (``/health``, ``/metrics``, the lifespan that starts the broker) to the FastStream app."""

    def __init__(self, service_app: ASGIApp, api_app: ASGIApp | None) -> None:
        self.service_app = service_app
        self.api_app = api_app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.api_app is not None and scope["type"] in ("http", "websocket") and scope["path"].startswith(API_PREFIXES):
            await self.api_app(scope, receive, send)
        else:
            await self.service_app(scope, receive, send)


def create_app(settings: GatewaySettings) -> tuple[Any, GatewayRuntime]:
    topics = Topics(settings.kafka.topic_prefix)
    holder: dict[str, Any] = {}

    async def on_request(envelope: Envelope) -> list[Outbound]:
        record = CURRENT_RECORD.get()
        outcome: Outcome = await holder["intake"].from_kafka(envelope.id, envelope.data, record.value if record else None)
        await holder["publish"](outcome.outbound)
        return []  # published above (stored records are re-published byte for byte)

    async def on_issuer_event(envelope: Envelope) -> list[Outbound]:
        # the gateway's projections of issued certificates (issued.py) and of its requests' outcomes
        # (request_status.py), folded with the other records in flight in one write transaction; publishes nothing
        folded = await holder["issued_writes"].run(_fold_issuer_event, envelope)
        holder["status_folds"].labels(folded.value).inc()
        return []

    async def on_connector_event(envelope: Envelope) -> list[Outbound]:
        # the gateway's view of the connectors (connector_view.py; decision 0034), folded like the projections above
        await holder["issued_writes"].run(connector_view.apply_in, envelope)
        return []

    handlers: dict[type[Message], Handler] = {
        IssueRequested: on_request, RenewRequested: on_request, RevokeRequested: on_request,
        CertificateIssued: on_issuer_event, CertificateRevoked: on_issuer_event, IssuancePending: on_issuer_event,
        IssuanceFailed: on_issuer_event, RevocationFailed: on_issuer_event,
        RevokedOutOfBand: lambda e: on_revoked_out_of_band(holder["engine"], topics, holder["publish"], utc_now, e),
        **{event: on_connector_event for event in connector_view.CONNECTOR_EVENTS},
    }
    subscriptions = [Subscription(topics=[topics.requests]), Subscription(topics=[topics.issuer_events])]
    service_app, service = build_service(SERVICE, settings, subscriptions, handlers)
    # the issuer's other events (ConnectorStatusChanged) are skipped by their ce_type header, unparsed
    service.dispatcher.skip_by_type_header = True
    holder["issued_writes"] = SessionWriter(service.engine, name="gateway-issued")
    holder["engine"] = service.engine
    holder["status_folds"] = request_status.folds_counter(service.registry)
    box = load_secret_box(settings.secrets, create=True)
    requests = Counter("certrail_gateway_requests", "Requests answered, by door (kafka, http), kind (issue, renew, "
                       "revoke), status (accepted, rejected, replayed) and error code (empty when accepted).",
                       ["door", "kind", "status", "code"], registry=service.registry)
    intake = Intake(engine=service.engine, topics=topics, keys=SqlRequesterKeys(service.engine, box), clock=utc_now,
                    deployer_identity=settings.deployer_identity,
                    observe=lambda door, kind, status, code: requests.labels(door, kind, status, code or "").inc())

    async def publish(outbound: Sequence[Outbound | dict[str, Any]]) -> None:
        # sent in order, acknowledged together (inside a consumed batch: before the batch is committed)
        await service.publisher.send_records(outgoing_records(outbound))

    holder["intake"], holder["publish"] = intake, publish
    runtime = GatewayRuntime(service, settings, intake, box, publish)
    api = None
    try:
        from services.gateway.api import create_api
    except ImportError:  # the HTTP API module is optional while it is being built
        create_api = None  # type: ignore[assignment]
    if create_api is not None:
        api = create_api(runtime)
        _drain_acme_validations(service_app, api)
        _close_internal_clients(service_app, api)
    _start_scheduler(service_app, runtime)
    _start_outbox_relay(service_app, runtime)
    return PrefixRouter(service_app, api), runtime


def _fold_issuer_event(session: Any, envelope: Envelope) -> request_status.Fold:
    """One outcome event of events.issuer into both of the gateway's projections (one transaction)."""
    if isinstance(envelope.data, CertificateIssued | CertificateRevoked):
        issued.apply_in(session, envelope)
    if isinstance(envelope.data, CertificateIssued | IssuanceFailed):  # the ACME door's orders follow (issue 22)
        acme_certificates.apply_in(session, envelope)
    return request_status.apply_in(session, envelope)


def _close_internal_clients(service_app: Any, api: Any) -> None:
    """At shutdown, close the pooled connections of the clients of the other services' internal APIs (the auditor's,
    the deployer's, the issuer's): a keep-alive socket is not left to the garbage collector."""

    async def close() -> None:
        for client in getattr(api.state, "internal_clients", []):
            await client.aclose()

    service_app.on_shutdown(close)


def _start_scheduler(service_app: Any, runtime: GatewayRuntime) -> None:
    """Run the renewal scheduler beside the consumer, when this gateway schedules."""
    if not runtime.settings.scheduler_enabled or not runtime.settings.scheduler.enabled:
        # its series at 0 (leader 0): with every gateway's scheduler off, CertrailRenewalSchedulerNotRunning fires
        SchedulerMetrics(runtime.service.registry)
        return
    scheduler = Scheduler(runtime.engine, runtime.topics, runtime.publish_records, utc_now, runtime.settings.scheduler,
                          registry=runtime.service.registry, holder=runtime.service.instance_id)

    async def start() -> None:
        runtime.tasks.append(asyncio.create_task(scheduler.run_forever(), name="gateway-scheduler"))

    async def stop() -> None:
        scheduler.stop()
        try:
            await asyncio.wait_for(asyncio.gather(*runtime.tasks, return_exceptions=True), 10)
        except TimeoutError:
            for task in runtime.tasks:
                task.cancel()

    service_app.after_startup(start)
    service_app.on_shutdown(stop)


def _drain_acme_validations(service_app: Any, api: Any) -> None:
    """At shutdown, await the ACME challenge validations in flight (services/gateway/acme/order_routes.py); while
    running, sweep the challenges a stopped gateway left processing (`Validations.sweep_forever`)."""
    validations = getattr(api.state, "acme_validations", None)
    if validations is None:
        return
    stopped = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        tasks.append(asyncio.create_task(validations.sweep_forever(stopped), name="gateway-acme-sweep"))

    async def drain() -> None:
        stopped.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await validations.drain()

    service_app.after_startup(start)
    service_app.on_shutdown(drain)


def _start_outbox_relay(service_app: Any, runtime: GatewayRuntime) -> None:
    """Publish the admin events of configuration changes still in the outbox (written by the CLI, or
    left by a failed publish): every few seconds, those older than a grace (services/gateway/config/outbox.py)."""
    start_relay(service_app, OutboxRelay(runtime.engine, runtime.topics, runtime.publish_records, utc_now), "gateway-admin-outbox")


def main() -> None:
    settings = GatewaySettings()
    app, _ = create_app(settings)
    run_service(app, settings, tls=settings.tls)
