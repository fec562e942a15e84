"""Settings of the deployer (env prefix ``CERTRAIL_DEPLOYER_``; Kafka and the database come
from ``CERTRAIL_KAFKA_*`` and ``CERTRAIL_DEPLOYER_DB_URL`` or ``CERTRAIL_DB_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.contracts.identity import IDENTITY_PATTERN
from services.common.service_app import ServiceSettings, own_database
from services.common.settings import DatabaseSettings
from services.deployer.targets.localfs import FileSync


class DeployerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CERTRAIL_DEPLOYER_", extra="forbid")

    http_port: int = Field(default=8082, ge=0, le=65535)
    group_id: str = Field(default="certrail-deployer", min_length=1, max_length=200)
    db: DatabaseSettings = own_database("deployer")

    keys: SecretStr | None = Field(
        default=None, description="Comma-separated Fernet keys (first encrypts) for bot-held keys and target secrets."
    )
    keys_file: Path = Field(default=Path("var/deployer.keys"), description="Used when `keys` is unset; created on first use.")

    requester: str = Field(default="certrail-deployer", pattern=IDENTITY_PATTERN,
                           description="The identity the deployer signs its bot requests with (profiles must allow it).")
    request_key_id: str = Field(default="deployer-1", min_length=1, max_length=128)
    request_key: SecretStr | None = Field(default=None, description="HMAC-SHA256 key (>= 32 bytes) that signs bot requests.")
    request_key_file: Path = Field(default=Path("var/deployer-request.key"),
                                   description="Used when `request_key` is unset; created on first use (register it at the gateway).")

    attempts: int = Field(default=3, ge=1, le=20, description="Attempts per target when a target is unreachable.")
    backoff_initial_s: float = Field(default=1.0, gt=0, le=300)
    backoff_max_s: float = Field(default=15.0, gt=0, le=3600)
    park_seconds: float = Field(default=120.0, ge=0, le=86400, description=(
        "How long a certificate refused for a reason a gateway event not yet seen could cure (no accepted request, "
        "no pin for its connector, not the accepted CSR's key) waits for that event before it is refused for good; "
        "0 refuses at once (docs/deployer.md, 'Parked certificates')."))
    key_retention_s: float = Field(default=7 * 86400.0, ge=0, le=10 * 365 * 86400, description=(
        "How long a superseded bot-held key (its certificate renewed and the new one deployed, or its serial revoked) "
        "is kept before it is destroyed; a keyCompromise revocation destroys the key at once (docs/deployer.md, "
        "'Key retention')."))
    key_sweep_interval_s: float = Field(default=60.0, gt=0, le=86400,
                                        description="How often the retention sweep looks for keys to destroy.")
    file_sync: FileSync = Field(default=FileSync.SYNCFS, description=(
        "How the file and nginx targets make a new version durable before its links are swapped: `syncfs` writes the "
        "versions of a batch, then flushes each filesystem they are on once (syncfs(2)), swaps the links and flushes "
        "once more; `fsync` fsyncs every file and directory on its own (for targets on a filesystem shared with heavy "
        "unrelated writes, which syncfs would flush too). Not Linux: `fsync` (docs/deployer.md, 'Durability')."))
