"""The gateway: validates requests from certrail.requests and the HTTP API and publishes commands. For now it consumes certrail.requests through the shared plumbing (invalid records are dead-lettered; valid ones are not handled yet)."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from services.common.contracts.topics import Topics
from services.common.runner import run_service
from services.common.service_app import ServiceRuntime, Subscription, build_service
from services.gateway.settings import GatewaySettings

SERVICE = "gateway"


def create_app(settings: GatewaySettings) -> tuple[AsgiFastStream, ServiceRuntime]:
    topics = Topics(settings.kafka.topic_prefix)
    return build_service(SERVICE, settings, [Subscription(topics=[topics.requests])])


def main() -> None:
    settings = GatewaySettings()
    app, _ = create_app(settings)
    run_service(app, settings)
