"""Settings of the gateway (env prefix ``CERTRAIL_GATEWAY_``; Kafka, database and secrets keys
come from ``CERTRAIL_KAFKA_*``, ``CERTRAIL_GATEWAY_DB_URL`` or ``CERTRAIL_DB_*``, ``CERTRAIL_SECRETS_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.connectors.secretbox import SecretsSettings
from services.common.internal_api import InternalApiSettings
from services.common.service_app import ServiceSettings, own_database
from services.common.settings import DatabaseSettings
from services.common.tls_listener import TlsListenerSettings
from services.gateway.acme.settings import AcmeSettings
from services.gateway.scheduler import SchedulerSettings

#: one base URL, or several instances' comma-separated (decision 0031)
BASE_URLS = r"^\s*https?://[^,\s]+(\s*,\s*https?://[^,\s]+)*\s*$"


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CERTRAIL_GATEWAY_", env_nested_delimiter="__", extra="forbid")

    http_port: int = Field(default=8080, ge=0, le=65535)
    group_id: str = Field(default="certrail-gateway", min_length=1, max_length=200)
    db: DatabaseSettings = own_database("gateway")
    secrets: SecretsSettings = Field(default_factory=SecretsSettings,
                                     description="The keys that encrypt connector secrets and requesters' HMAC keys.")
    deployer_identity: str = Field(default="certrail-deployer", min_length=1, max_length=128,
                                   description="The requester identity of the deployer bot (sends CSRs for bot-key profiles).")
    scheduler_enabled: bool = Field(default=True, description="Run the renewal scheduler (one instance is active at a time).")
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings,
                                         description="Renewal times, jitter, per-connector limits, expiry thresholds.")
    auth_failures_per_address: int = Field(
        default=20, ge=0, le=100_000,
        description="Failed bearer tokens / console sign-ins per client address within the window before further "
                    "failures are answered 429 AUTH_THROTTLED (0: no limit).")
    auth_failures_per_identity: int = Field(
        default=10, ge=0, le=100_000,
        description="Failed authentications per presented token id within the window (0: no limit).")
    auth_failure_window_s: float = Field(default=60.0, gt=0, le=86_400,
                                         description="The sliding window of failed authentications, in seconds.")
    auditor_url: str = Field(default="http://127.0.0.1:8083", pattern=BASE_URLS, max_length=2000,
                             description="The auditor's HTTP port: certificate views and timelines come from its "
                                         "/internal/v1 API (decision 0020); https verifies the auditor's certificate. "
                                         "Several instances' URLs, comma-separated: a call goes to the next when one "
                                         "gives no answer (decision 0031).")
    deployer_url: str = Field(default="http://127.0.0.1:8082", pattern=BASE_URLS, max_length=2000,
                              description="The deployer's HTTP port: deployment targets and bindings are read and changed "
                                          "through its /internal/v1 API (decision 0020); https verifies its certificate. "
                                          "Several instances' URLs, comma-separated, as for auditor_url (decision 0031).")
    issuer_url: str = Field(default="http://127.0.0.1:8081", pattern=BASE_URLS, max_length=2000,
                            description="The issuer's HTTP port: possible duplicates are listed and resolved through its "
                                        "/internal/v1 API (decision 0032); https verifies its certificate. Several "
                                        "instances' URLs, comma-separated: a call goes to the next when one gives no answer.")
    internal: InternalApiSettings = Field(default_factory=InternalApiSettings,
                                          description="The internal API token file and client limits (CERTRAIL_INTERNAL_*).")
    acme: AcmeSettings = Field(default_factory=AcmeSettings,
                               description="The ACME door (/acme/directory): its external URL, nonces, limits (decision 0033).")
    tls: TlsListenerSettings = Field(
        default_factory=TlsListenerSettings,
        description="An HTTPS listener beside the HTTP port (CERTRAIL_GATEWAY_TLS__CERT_FILE, __KEY_FILE, __PORT): the "
                    "same app over TLS, its certificate read again when the files change; the ACME door's URL is then "
                    "its https URL (decision 0033, addendum). Off unless both files are set.")

    @property
    def https_port(self) -> int | None:
        """The HTTPS listener's port, or None when there is none."""
        return self.tls.port if self.tls.enabled else None
