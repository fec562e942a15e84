"""The deployer: consumes certrail.provisioning and the gateway's and the issuer's events
(certrail.events.gateway, certrail.events.issuer; not its own) through the shared Dispatcher
(invalid records, and a type arriving on a topic its producer does not own, are dead-lettered) and

- CertificateIssued -> installs the certificate on every target bound to its profile
  (handlers/deploy.py): CertificateDeployed or DeploymentFailed per target;
- ProvisionCertificate, RenewalDue (bot-held keys), CertificateRevoked with replace ->
  a fresh key, stored encrypted, and its CSR as a signed request (handlers/bot.py);
- RequestAccepted, connector and profile admin events -> its own projection of what it may
  trust (handlers/projection.py; docs/decisions/0011-deployer-trusts-nothing.md).

Bot-held keys no longer needed are destroyed by a retention sweep on a timer (retirement.py; at once for
a keyCompromise revocation, whether certrail asked for it or a RevokedOutOfBand reports it), each with a BotKeyDestroyed through the outbox below (decision 0026).

Its deployment targets and bindings change through one path (config/) that records an admin event in
``deployer_admin_outbox``; a relay publishes those to its events topic (config/outbox.py). ``/internal/v1``
on its HTTP port serves and changes them (internal_api.py, decision 0020).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from faststream.asgi import AsgiFastStream

from services.common.admin_outbox import start_relay
from services.common.consumer import Handler, Outbound, utc_now
from services.common.contracts.admin import (
    ConnectorCreated,
    ConnectorDeleted,
    ConnectorUpdated,
    ProfileCreated,
    ProfileDeleted,
    ProfileUpdated,
)
from services.common.contracts.commands import ProvisionCertificate
from services.common.contracts.envelope import Envelope, Message
from services.common.contracts.events import CertificateIssued, CertificateRevoked, RenewalDue, RequestAccepted
from services.common.contracts.revocation import RevokedOutOfBand
from services.common.contracts.topics import Topics
from services.common.internal_api import InternalApiSettings, configured_token, mount_internal
from services.common.runner import run_service
from services.common.service_app import ServiceRuntime, Subscription, build_service
from services.deployer.config.outbox import OutboxRelay
from services.deployer.context import DeployerContext
from services.deployer.handlers.bot import on_provision, on_renewal_due, on_revoked, on_revoked_out_of_band
from services.deployer.handlers.deploy import on_certificate_issued
from services.deployer.handlers.parked import sweep_forever
from services.deployer.handlers.projection import on_connector_event, on_profile_event, on_request_accepted
from services.deployer.internal_api import create_internal_app
from services.deployer.keys import deployer_box, request_signing_key
from services.deployer.metrics import DeployerMetrics
from services.deployer.retirement import sweep_keys_forever
from services.deployer.runner import RetryPolicy
from services.deployer.settings import DeployerSettings
from services.deployer.targets.factory import build_target
from services.deployer.targets.localfs import LocalFileSystem

SERVICE = "deployer"


def handlers(ctx: DeployerContext) -> dict[type[Message], Handler]:
    table: dict[type[Message], Callable[[DeployerContext, Envelope], Awaitable[list[Outbound]]]] = {
        CertificateIssued: on_certificate_issued,
        ProvisionCertificate: on_provision,
        RenewalDue: on_renewal_due,
        CertificateRevoked: on_revoked,
        RevokedOutOfBand: on_revoked_out_of_band,
        RequestAccepted: on_request_accepted,
        ConnectorCreated: on_connector_event,
        ConnectorUpdated: on_connector_event,
        ConnectorDeleted: on_connector_event,
        ProfileCreated: on_profile_event,
        ProfileUpdated: on_profile_event,
        ProfileDeleted: on_profile_event,
    }
    return {cls: partial(handler, ctx) for cls, handler in table.items()}


def create_app(settings: DeployerSettings, internal: InternalApiSettings | None = None) -> tuple[Any, ServiceRuntime]:
    """The deployer; ``internal``: where the internal API's token is (None: no token, every ``/internal/v1``
    request is refused). The first element serves ``/internal/v1`` and passes the rest (``/health``,
    ``/metrics``, the lifespan) to the FastStream app, its ``service_app``."""
    topics = Topics(settings.kafka.topic_prefix)
    app, runtime = build_service(SERVICE, settings, [Subscription(topics=[topics.provisioning, topics.gateway_events, topics.issuer_events])])
    ctx = DeployerContext(
        engine=runtime.engine, box=deployer_box(settings), topics=topics, metrics=DeployerMetrics(runtime.registry),
        requester=settings.requester, request_key_id=settings.request_key_id, request_key=request_signing_key(settings),
        retry=RetryPolicy(settings.attempts, settings.backoff_initial_s, settings.backoff_max_s),
        park_s=settings.park_seconds, key_retention_s=settings.key_retention_s,
        build_target=partial(build_target, fs=LocalFileSystem(settings.file_sync)),  # one disk: a batch's installs grouped
    )
    runtime.dispatcher.handlers = handlers(ctx)
    if ctx.park_s > 0:
        interval = min(5.0, max(0.5, ctx.park_s / 10))

        async def start_sweep() -> None:
            runtime.tasks.append(asyncio.create_task(sweep_forever(ctx, runtime.publisher.publish, interval),
                                                     name="deployer-parked-sweep"))
        app.after_startup(start_sweep)
    # IssuancePending, CertificateDeployed and the like are not for the deployer: skip them
    # by their ce_type header, unparsed (docs/decisions/0010-batched-consumption-and-ce-type-header.md)
    runtime.dispatcher.skip_by_type_header = True
    relay = _start_outbox_relay(app, runtime)
    ctx.wake_outbox = relay.wake  # a destroyed key's BotKeyDestroyed is in the outbox: publish it now

    async def start_key_sweep() -> None:
        runtime.tasks.append(asyncio.create_task(sweep_keys_forever(ctx, settings.key_sweep_interval_s),
                                                 name="deployer-key-retention"))
    app.after_startup(start_key_sweep)
    token = configured_token(internal) if internal is not None else None  # decision 0020
    return InternalMount(app, create_internal_app(runtime.engine, ctx.box, token, utc_now, changed=relay.wake)), runtime


class InternalMount:
    """``/internal/...`` to the internal API, everything else to ``service_app`` (the FastStream app)."""

    def __init__(self, service_app: AsgiFastStream, internal_app: Any) -> None:
        self.service_app = service_app
        self._app = mount_internal(service_app, internal_app)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)


def _start_outbox_relay(app: AsgiFastStream, runtime: ServiceRuntime) -> OutboxRelay:
    """Publish the admin events of target and binding changes (written by the CLI or the internal API)
    from the outbox: all at start, then every few seconds or when woken (config/outbox.py)."""

    relay = OutboxRelay(runtime.engine, runtime.topics, runtime.publisher.send_records, utc_now)
    start_relay(app, relay, "deployer-admin-outbox")
    return relay


def main() -> None:
    settings = DeployerSettings()
    app, _ = create_app(settings, InternalApiSettings())
    run_service(app, settings)
