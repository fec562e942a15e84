"""Settings shared by every service.

Nothing here reads the environment at import time: a settings object is built
in `main()` (or by a test, with explicit values). Each block has its own env
prefix so that one `.env` can configure all four services:

- ``CERTRAIL_KAFKA_*``  Kafka client settings (bootstrap, SASL/SSL, topic prefix)
- ``CERTRAIL_DB_*``     the SQL database
- ``CERTRAIL_<SERVICE>_*`` one service's own settings (see each service's settings)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSettings(BaseSettings):
    """How to reach the Kafka cluster. Defaults fit the local embedded broker."""

    model_config = SettingsConfigDict(env_prefix="CERTRAIL_KAFKA_", extra="forbid")

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field(
        default="certrail",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$",
        description="First part of every topic name: 'certrail' gives certrail.requests; "
        "'acme.certrail' gives acme.certrail.requests on a shared cluster.",
    )
    client_id: str = "certrail"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    session_timeout_ms: int = Field(default=30_000, ge=1_000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    request_timeout_ms: int = Field(default=40_000, ge=1_000)
    # throughput tuning, chosen by measurement (docs/benchmarks.md, "Kafka client settings")
    linger_ms: int = Field(default=0, ge=0, le=1_000, description="How long a producer waits to fill a batch.")
    max_batch_size: int = Field(default=16_384, ge=1_024, le=8_388_608,
                                description="A producer's batch per partition, in bytes.")
    fetch_min_bytes: int = Field(default=1, ge=1, le=8_388_608,
                                 description="A fetch returns once this many bytes are there, or after fetch_max_wait_ms.")
    fetch_max_wait_ms: int = Field(default=500, ge=0, le=10_000)

    @field_validator("bootstrap_servers")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        hosts = [h.strip() for h in value.split(",") if h.strip()]
        if not hosts:
            raise ValueError("bootstrap_servers must name at least one host:port")
        return ",".join(hosts)


class DatabaseSettings(BaseSettings):
    """The one SQL database. SQLite file by default, PostgreSQL in production."""

    model_config = SettingsConfigDict(env_prefix="CERTRAIL_DB_", extra="forbid")

    url: str = Field(
        default="sqlite:///var/certrail.db",
        repr=False,  # may hold a password; show it with services.common.db.safe_url
        description="SQLAlchemy URL. A relative SQLite path is relative to the working directory.",
    )
    busy_timeout_ms: int = Field(default=30_000, ge=0, description="SQLite only: wait this long for a lock.")
    pool_size: int = Field(default=5, ge=1, description="PostgreSQL only.")
    echo: bool = False


class HttpSettings(BaseSettings):
    """Where a service serves its health and metrics endpoints."""

    model_config = SettingsConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
