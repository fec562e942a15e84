"""The auditor: consumes every certrail topic (by pattern) and stores every record. For now it consumes through the shared plumbing (invalid records are dead-lettered)."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from services.auditor.settings import AuditorSettings
from services.common.contracts.topics import Topics
from services.common.runner import run_service
from services.common.service_app import ServiceRuntime, Subscription, build_service

SERVICE = "auditor"


def create_app(settings: AuditorSettings) -> tuple[AsgiFastStream, ServiceRuntime]:
    topics = Topics(settings.kafka.topic_prefix)
    return build_service(SERVICE, settings, [Subscription(pattern=topics.all_pattern)])


def main() -> None:
    settings = AuditorSettings()
    app, _ = create_app(settings)
    run_service(app, settings)
