"""The issuer: consumes every connector's command topic (certrail.commands.*, by pattern) and talks to emCA. For now it consumes through the shared plumbing (invalid records are dead-lettered). Its own aiokafka loop with per-partition commit tracking comes with the connector."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from services.common.contracts.topics import Topics
from services.common.runner import run_service
from services.common.service_app import ServiceRuntime, Subscription, build_service
from services.issuer.settings import IssuerSettings

SERVICE = "issuer"


def create_app(settings: IssuerSettings) -> tuple[AsgiFastStream, ServiceRuntime]:
    topics = Topics(settings.kafka.topic_prefix)
    return build_service(SERVICE, settings, [Subscription(pattern=topics.commands_pattern)])


def main() -> None:
    settings = IssuerSettings()
    app, _ = create_app(settings)
    run_service(app, settings)
