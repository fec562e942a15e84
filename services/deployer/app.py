"""The deployer: consumes certrail.provisioning and certrail.events and installs certificates on targets. For now it consumes through the shared plumbing (invalid records are dead-lettered)."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from services.common.contracts.topics import Topics
from services.common.runner import run_service
from services.common.service_app import ServiceRuntime, Subscription, build_service
from services.deployer.settings import DeployerSettings

SERVICE = "deployer"


def create_app(settings: DeployerSettings) -> tuple[AsgiFastStream, ServiceRuntime]:
    topics = Topics(settings.kafka.topic_prefix)
    return build_service(SERVICE, settings, [Subscription(topics=[topics.provisioning, topics.events])])


def main() -> None:
    settings = DeployerSettings()
    app, _ = create_app(settings)
    run_service(app, settings)
