"""The deployer's Prometheus metrics (served at /metrics with the shared ones)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.deployer.targets.config import TargetKind

#: the outcomes of certrail_deployer_deployments_total, target_attempts_total (result) and rollbacks_total
DEPLOYMENT_OUTCOMES = ("deployed", "failed", "replayed", "refused")
ATTEMPT_RESULTS = ("ok", "retry", "failed")
ROLLBACK_OUTCOMES = ("restored", "nothing", "failed")


class DeployerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deployments = Counter(
            "certrail_deployer_deployments_total",
            "Deployments by target kind and outcome (deployed, failed, replayed, refused).",
            ["kind", "outcome"], registry=registry,
        )
        self.duration = Histogram(
            "certrail_deployer_deployment_duration_seconds", "Time to deploy and verify on one target (all attempts).",
            ["kind"], registry=registry, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.rollbacks = Counter(
            "certrail_deployer_rollbacks_total", "Rollbacks after a failed install or verify (restored, nothing, failed).",
            ["kind", "outcome"], registry=registry,
        )
        self.attempts = Counter(
            "certrail_deployer_target_attempts_total", "Attempts on a target (ok, retry, failed).", ["kind", "result"],
            registry=registry,
        )
        self.keys_generated = Counter(
            "certrail_deployer_keys_generated_total", "Bot-held private keys generated, by algorithm.", ["algorithm"],
            registry=registry,
        )
        self.bot_requests = Counter(
            "certrail_deployer_bot_requests_total", "Requests published for bot-held keys (issue, renew, replayed).", ["kind"],
            registry=registry,
        )
        self.refusals = Counter(
            "certrail_deployer_refusals_total",
            "Certificates and provisioning commands the deployer refused, by error code (CERTIFICATE_UNTRUSTED, "
            "CERTIFICATE_MISMATCH, CERTIFICATE_NOT_REQUESTED, REQUESTER_NOT_AUTHORISED).", ["code"], registry=registry,
        )
        self.parked = Counter(
            "certrail_deployer_parked_total",
            "Certificates held back until the gateway event that would let them be installed (an acceptance, a pin, "
            "a renewal's key) arrives, by the code they would have been refused with.", ["code"], registry=registry,
        )
        self.parked_now = Gauge(
            "certrail_deployer_parked_certificates", "Certificates parked right now (refused for good at their deadline).",
            registry=registry,
        )
        self.keys_destroyed = Counter(
            "certrail_deployer_keys_destroyed_total",
            "Bot-held private keys destroyed, by reason (superseded after the grace period, key_compromise at once).",
            ["reason"], registry=registry,
        )
        self.keys_held = Gauge(
            "certrail_deployer_keys_held", "Bot-held private keys stored (encrypted) right now, as of the last retention "
            "sweep: every instance reports the same table, so aggregate with max, not sum.", registry=registry,
        )
        self.key_copies = Counter(
            "certrail_deployer_retired_key_copies_total",
            "Copies of destroyed keys on targets, by target kind and outcome (removed, in_use, not_removable, failed).",
            ["kind", "outcome"], registry=registry,
        )
        # Every (kind, outcome) series exists at 0 from the start, so that the first failure is an increase
        # Prometheus can see (CertrailDeploymentFailures reads increase(); decision 0029).
        for kind in TargetKind:
            for outcome in DEPLOYMENT_OUTCOMES:
                self.deployments.labels(kind.value, outcome)
            for result in ATTEMPT_RESULTS:
                self.attempts.labels(kind.value, result)
            for outcome in ROLLBACK_OUTCOMES:
                self.rollbacks.labels(kind.value, outcome)
        self.undeployments = Counter(
            "certrail_deployer_undeployments_total",
            "Revoked certificates taken off a target (profile on_revocation: remove), by target kind and outcome "
            "(removed, not_serving, not_removable, failed).", ["kind", "outcome"], registry=registry,
        )
