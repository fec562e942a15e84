"""The auditor's Prometheus metrics (``certrail_audit_*``). Labels are bounded:
topics are reduced to their channel (services.common.metrics.channel_of),
message types come from the catalog (``invalid`` for anything else), error
codes from ErrorCode."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.auditor.store import BatchResult
from services.common.contracts.errors import ErrorCode
from services.common.contracts.topics import Topics
from services.common.metrics import channel_of

BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry, topics: Topics) -> None:
        self._topics = topics
        self.stored = Counter(
            "certrail_audit_records_stored_total",
            "Records stored in the audit log, by channel and message type ('invalid' for undecodable or invalid records).",
            ["channel", "type"],
            registry=registry,
        )
        self.invalid = Counter(
            "certrail_audit_invalid_records_total",
            "Undecodable or invalid records stored (raw, with their decode error), by channel and error code.",
            ["channel", "code"],
            registry=registry,
        )
        self.redelivered = Counter(
            "certrail_audit_redelivered_records_total",
            "Records delivered again at an offset already stored (skipped).",
            registry=registry,
        )
        self.duplicates = Counter(
            "certrail_audit_duplicate_event_ids_total",
            "Records whose event id was stored before at another offset (stored and linked to the first).",
            ["channel"],
            registry=registry,
        )
        self.gaps = Counter(
            "certrail_audit_offset_gaps_total",
            "Offsets Kafka did not deliver between two consecutive stored records of a partition.",
            ["channel"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "certrail_audit_batch_records",
            "Records per fetched batch (one database transaction each).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.commit_duration = Histogram(
            "certrail_audit_commit_duration_seconds",
            "Time to prepare, chain and commit one batch in the database.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.offset_commit_duration = Histogram(
            "certrail_audit_offset_commit_duration_seconds",
            "Time to commit one batch's offsets to Kafka (after the database commit).",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.batch_failures = Counter(
            "certrail_audit_batch_failures_total",
            "Transactions that failed (rolled back; the batch is retried in place).",
            registry=registry,
        )
        self.inventory = Gauge(
            "certrail_audit_inventory_certificates",
            "Managed certificates in the inventory, by status (pending, active, expired, revoked, failed).",
            ["status"],
            registry=registry,
        )
        self.assigned = Gauge(
            "certrail_audit_assigned_partitions", "Partitions assigned to this auditor instance.", registry=registry
        )
        self.checkpoints = Counter(
            "certrail_audit_checkpoints_published_total", "Signed checkpoint messages published.", registry=registry
        )
        self.last_checkpoint = Gauge(
            "certrail_audit_last_checkpoint_timestamp_seconds",
            "When this instance last published a signed checkpoint (Unix time).",
            registry=registry,
        )
        self.last_verify_ok = Gauge(
            "certrail_audit_last_verify_success",
            "1 when the latest recorded `certrail audit verify` run found nothing wrong, 0 when it found problems "
            "or could not complete (-1: never run).",
            registry=registry,
        )
        self.last_verify_time = Gauge(
            "certrail_audit_last_verify_timestamp_seconds",
            "When the latest `certrail audit verify` finished (Unix time; 0: never).",
            registry=registry,
        )
        self.last_verify_problems = Gauge(
            "certrail_audit_last_verify_problems", "Problems the latest verify found.", registry=registry
        )
        self.last_verify_ok.set(-1)

    def channel(self, topic: str) -> str:
        return channel_of(topic, self._topics)

    def batch_stored(self, result: BatchResult, fetched: int, seconds: float) -> None:
        self.batch_size.observe(fetched)
        self.commit_duration.observe(seconds)
        for (topic, message_type), count in result.stored_by_type.items():
            self.stored.labels(self.channel(topic), message_type).inc(count)
        for (topic, code), count in result.invalid_by_code.items():
            self.invalid.labels(self.channel(topic), code).inc(count)
        for (topic, _type), count in result.misrouted.items():
            self.invalid.labels(self.channel(topic), ErrorCode.PRODUCER_NOT_ALLOWED.value).inc(count)
        if result.redelivered:
            self.redelivered.inc(result.redelivered)
        for topic, count in result.duplicates.items():
            self.duplicates.labels(self.channel(topic)).inc(count)
        for gap in result.gaps:
            self.gaps.labels(self.channel(gap.topic)).inc()

    def verify_result(self, ok: bool | None, finished_at: datetime | None, problems: int) -> None:
        """Export the latest recorded verify run (verify records every run, failed or incomplete ones too)."""
        self.last_verify_ok.set(-1 if ok is None else int(ok))
        self.last_verify_time.set(finished_at.timestamp() if finished_at else 0)
        self.last_verify_problems.set(problems)
