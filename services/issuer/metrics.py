"""The issuer's Prometheus metrics (docs/operations.md lists the alerts built on them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.emca.types import EmcaError

#: emCA call durations: a simulator answers in ~1-5 ms, a remote emCA in tens to hundreds
EMCA_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONNECTOR_STATES = ("up", "down", "misconfigured", "disabled")
CIRCUIT_STATES = ("closed", "open", "half_open")


class IssuerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.commands = Counter(
            "certrail_issuer_commands", "Commands finished, by type and outcome "
            "(issued, pending, failed, revoked, revocation_failed, dead_lettered, ignored, replayed).",
            ["type", "outcome"], registry=registry,
        )
        self.emca_duration = Histogram(
            "certrail_issuer_emca_request_duration_seconds", "emCA calls, by connector and operation.",
            ["connector", "operation"], buckets=EMCA_BUCKETS, registry=registry,
        )
        self.emca_batch_csrs = Histogram(
            "certrail_issuer_emca_submit_batch_csrs", "CSRs per emCA submission call (1 unless commands in flight share "
            "a 4.2.x createCertificates call).", buckets=(1, 2, 4, 8, 16, 32, 50), registry=registry,
        )
        self.emca_errors = Counter(
            "certrail_issuer_emca_errors", "Failed emCA calls, by connector, class (request_permanent, "
            "connector_fault, transient) and error code.", ["connector", "kind", "code"], registry=registry,
        )
        self.connector_up = Gauge(
            "certrail_issuer_connector_up", "1 while the connector answers and is usable.", ["connector"], registry=registry,
        )
        self.connector_misconfigured = Gauge(
            "certrail_issuer_connector_misconfigured", "1 while the connector is misconfigured (requests stay queued; "
            "an operator must fix it).", ["connector"], registry=registry,
        )
        self.circuit_state = Gauge(
            "certrail_issuer_circuit_state", "1 for the connector's current circuit state.", ["connector", "state"],
            registry=registry,
        )
        self.probes = Counter(
            "certrail_issuer_connector_probes", "Probes of a connector whose circuit is open, by result.",
            ["connector", "result"], registry=registry,
        )
        self.oldest_queued_age = Gauge(
            "certrail_issuer_oldest_queued_command_age_seconds", "Age (from its Kafka timestamp) of the oldest command "
            "fetched and not yet finished, per connector; 0 when none waits.", ["connector"], registry=registry,
        )
        self.in_flight = Gauge(
            "certrail_issuer_commands_in_flight", "Commands fetched and not yet finished, per connector.", ["connector"],
            registry=registry,
        )
        self.paused = Gauge(
            "certrail_issuer_partitions_paused", "Assigned partitions currently paused, per connector.", ["connector"],
            registry=registry,
        )
        self.assigned = Gauge("certrail_issuer_assigned_partitions", "Command partitions assigned to this instance.",
                              registry=registry)
        self.possible_duplicates = Counter(
            "certrail_issuer_possible_duplicates", "Issuances published as POSSIBLE_DUPLICATE: an earlier attempt may "
            "have been issued by a dialect without applicationId dedupe.", ["connector"], registry=registry,
        )
        self.duplicates_unresolved = Gauge(
            "certrail_issuer_duplicates_unresolved", "Possible duplicate issuances (POSSIBLE_DUPLICATE) no operator has "
            "resolved yet: emCA may hold an extra live certificate (every issuer instance reports the shared count; "
            "0 for every known connector).", ["connector"], registry=registry,
        )
        self.certificate_mismatches = Counter(
            "certrail_issuer_certificate_mismatches", "Certificates emCA returned that failed verification.",
            ["connector"], registry=registry,
        )
        self.pending_approvals = Gauge(
            "certrail_issuer_pending_approvals", "Issuances waiting for manual approval at emCA (this instance's "
            "partitions).", registry=registry,
        )
        self.redeliveries = Counter(
            "certrail_issuer_replayed_outcomes", "Commands whose outcome was already recorded: the stored events were "
            "re-published unchanged.", ["type"], registry=registry,
        )
        self.handler_errors = Counter(
            "certrail_issuer_unexpected_errors", "Unexpected exceptions while handling a command (retried; "
            "dead-lettered after repeated failures).", registry=registry,
        )

    def connector_status(self, connector: str, status: str) -> None:
        self.connector_up.labels(connector).set(1 if status == "up" else 0)
        self.connector_misconfigured.labels(connector).set(1 if status == "misconfigured" else 0)

    def circuit(self, connector: str, state: str) -> None:
        for candidate in CIRCUIT_STATES:
            self.circuit_state.labels(connector, candidate).set(1 if candidate == state else 0)

    def emca_error(self, connector: str, error: EmcaError) -> None:
        self.emca_errors.labels(connector, error.kind.value, error.code.value).inc()
