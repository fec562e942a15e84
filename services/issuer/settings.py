"""Settings of the issuer (env prefix ``CERTRAIL_ISSUER_``; Kafka, database and secrets keys come from
``CERTRAIL_KAFKA_*``, ``CERTRAIL_ISSUER_DB_URL`` or ``CERTRAIL_DB_*``, ``CERTRAIL_SECRETS_*``)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.connectors.secretbox import SecretsSettings
from services.common.service_app import ServiceSettings, own_database
from services.common.settings import DatabaseSettings
from services.issuer.batching import DEFAULT_MAX_CALLS, DEFAULT_MAX_CSRS


class IssuerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CERTRAIL_ISSUER_", extra="forbid")

    http_port: int = Field(default=8081, ge=0, le=65535)
    group_id: str = Field(default="certrail-issuer", min_length=1, max_length=200)
    db: DatabaseSettings = own_database("issuer")
    secrets: SecretsSettings = Field(default_factory=SecretsSettings, description="The keys that decrypt connector secrets.")

    poll_timeout_ms: int = Field(default=200, ge=1, le=10_000)
    max_poll_records: int = Field(default=500, ge=1, le=10_000)
    topic_refresh_interval_ms: int = Field(default=10_000, ge=500, description="How soon a new connector's topic is consumed.")
    max_in_flight_per_partition: int = Field(
        default=200, ge=1,
        description="Fetched, unfinished commands before a partition pauses (each holds a task and its decoded command:"
                    " this bounds the memory a backlog takes; a few times the connector concurrency is enough).")
    revoke_grace_s: float = Field(default=20.0, ge=0, description="How long commands at emCA may finish when partitions move.")
    poison_attempts: int = Field(default=5, ge=1, description="Unexpected failures of one command before it is dead-lettered.")

    probe_initial_s: float = Field(default=1.0, gt=0, description="First probe of a connector whose circuit opened.")
    probe_max_s: float = Field(default=30.0, gt=0, description="Cap of the probe backoff (jittered, exponential).")
    retry_after_max_s: float = Field(default=300.0, gt=0, description="Cap on how long a Retry-After is honoured.")
    registry_poll_s: float = Field(default=5.0, gt=0, description="How often connector changes (an operator's fix) are read.")
    drain_rate_per_s: float = Field(default=500.0, gt=0, description="emCA calls per second per connector (bounds a drain).")
    batch_max_csrs: int = Field(
        default=DEFAULT_MAX_CSRS, ge=1, le=50, description="CSRs of commands in flight together sent in one 4.2.x call at most, each "
        "with its issuance id as applicationId; 1 sends every CSR in a call of its own (docs/decisions/0007, amendments)."
    )
    batch_calls: int = Field(
        default=DEFAULT_MAX_CALLS, ge=1, description="Submission calls in flight per connector and profile while others gather into a batch."
    )

    approval_poll_initial_s: float = Field(default=5.0, gt=0, description="First poll of a request held for manual approval.")
    approval_poll_max_s: float = Field(default=600.0, gt=0)
    approval_timeout_s: float = Field(default=7 * 86400.0, gt=0, description="A pending approval older than this fails.")
    pending_poll_interval_s: float = Field(default=2.0, gt=0)

    revocation_confirm_timeout_s: float = Field(
        default=86400.0, gt=0, description="How long after emCA accepts a revocation its CRL may take to list the serial with "
        "the requested reason before RevocationUnconfirmed (and the alert): at least the CA's CRL publication interval.")
    revocation_confirm_poll_initial_s: float = Field(
        default=5.0, gt=0, description="First read of the CRL after a revocation; each further read of a check waits twice "
                                       "as long, up to revocation_confirm_poll_max_s.")
    revocation_confirm_poll_max_s: float = Field(default=300.0, gt=0, description="Cap of the CRL polling backoff.")
    crl_watch_interval_s: float = Field(
        default=3600.0, gt=0, description="How often each connector's CRL is read to find live certificates revoked at the "
        "CA outside certrail (RevokedOutOfBand): once per distribution point per interval, not per certificate.")
    crl_watch_retry_s: float = Field(default=300.0, gt=0, description="The next try after a failed CRL watch round "
                                                                       "(never later than crl_watch_interval_s).")

    test_crash_point: str | None = Field(
        default=None,
        description="TEST ONLY: after_emca_response|after_db_commit|after_publish[:n] exits the process abruptly there.",
    )

    @field_validator("test_crash_point")
    @classmethod
    def _crash_point(cls, value: str | None) -> str | None:
        from services.issuer.processor import CrashPoints

        CrashPoints(value)  # raises for an unknown point
        return value
