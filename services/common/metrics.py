"""Prometheus metrics shared by every service. Each service has its own
registry (no global state), exposed at ``/metrics``. Names start with
``certrail_``, carry their unit, and labels are bounded (message types come
from the catalog; topics are reduced to their channel)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Info

from services.common.consumer import InboundRecord, Outcome
from services.common.contracts.errors import ErrorCode
from services.common.contracts.topics import Topics

#: the channel labels besides "commands" and "other"
CHANNELS = ("requests", "provisioning", "events.gateway", "events.issuer", "events.deployer", "events", "deadletter",
            "audit.checkpoints")


def channel_of(topic: str, topics: Topics) -> str:
    """The bounded label for a topic: requests, commands, provisioning, events.gateway,
    events.issuer, events.deployer, events (the topic before decision 0016), deadletter,
    audit.checkpoints, or other."""
    prefix = topics.prefix + "."
    if not topic.startswith(prefix):
        return "other"
    rest = topic[len(prefix) :]
    if rest.startswith("commands."):
        return "commands"
    if rest in CHANNELS:
        return rest
    return "other"


class ConsumerMetrics:
    """Counts dispatched records by channel, message type and outcome, and dead letters by code."""

    def __init__(self, registry: CollectorRegistry, service: str, topics: Topics) -> None:
        self._service = service
        self._topics = topics
        self.consumed = Counter(
            "certrail_messages_consumed_total",
            "Records consumed, by channel, message type and outcome (handled, ignored, dead_lettered).",
            ["service", "channel", "type", "outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "certrail_dead_letters_total",
            "Records sent to the dead-letter topic, by error code.",
            ["service", "code"],
            registry=registry,
        )

    def observed(self, record: InboundRecord, message_type: str, outcome: Outcome, code: ErrorCode | None) -> None:
        channel = channel_of(record.topic, self._topics)
        self.consumed.labels(self._service, channel, message_type, outcome.value).inc()
        if outcome is Outcome.DEAD_LETTERED and code is not None:
            self.dead_letters.labels(self._service, code.value).inc()


class PublisherMetrics:
    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self._service = service
        self.published = Counter(
            "certrail_messages_published_total",
            "Messages published, by message type.",
            ["service", "type"],
            registry=registry,
        )

    def published_one(self, message_type: str) -> None:
        self.published.labels(self._service, message_type).inc()


def service_info(registry: CollectorRegistry, service: str, version: str, instance_id: str) -> None:
    info = Info("certrail_service", "The running certrail service.", registry=registry)
    info.info({"service": service, "version": version, "instance_id": instance_id})
