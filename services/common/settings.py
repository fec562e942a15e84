"""Settings shared by every service.

Nothing here reads the environment at import time: a settings object is built
in `main()` (or by a test, with explicit values). Each block has its own env
prefix so that one `.env` can configure all four services:

- ``CERTRAIL_KAFKA_*``  Kafka client settings (bootstrap, SASL/SSL, topic prefix)
- ``CERTRAIL_DB_*``     the SQL database (``CERTRAIL_<SERVICE>_DB_URL``: one service's own, see
  :meth:`DatabaseSettings.for_service`)
- ``CERTRAIL_<SERVICE>_*`` one service's own settings (see each service's settings)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

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
    fetch_max_wait_ms: int = Field(
        default=100, ge=0, le=10_000,
        description="How long a fetch waits for fetch_min_bytes. It bounds the wait of a record on a partition whose "
                    "fetched records were just handled: aiokafka sends one fetch per broker at a time, so that "
                    "partition waits for the fetch in flight (docs/operations.md, 'Kafka client tuning').")

    @field_validator("bootstrap_servers")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        hosts = [h.strip() for h in value.split(",") if h.strip()]
        if not hosts:
            raise ValueError("bootstrap_servers must name at least one host:port")
        return ",".join(hosts)


#: the services that keep state in a database of their own (decision 0017, "Storage")
DATABASE_OWNERS: Final = ("gateway", "issuer", "deployer", "auditor")
SHARED_DB_URL_ENV: Final = "CERTRAIL_DB_URL"


def service_db_url_env(service: str) -> str:
    """The variable naming one service's own database: ``CERTRAIL_GATEWAY_DB_URL`` and so on."""
    if service not in DATABASE_OWNERS:
        raise ValueError(f"no service {service!r}: one of {', '.join(DATABASE_OWNERS)}")
    return f"CERTRAIL_{service.upper()}_DB_URL"


def default_service_db_url(service: str, var_dir: Path | str = "var") -> str:
    """The embedded default: the service's own SQLite file, ``<var>/<service>.db``."""
    service_db_url_env(service)  # checks the name
    return f"sqlite:///{Path(var_dir) / f'{service}.db'}"


def service_database_url(service: str, environ: Mapping[str, str] | None = None) -> str:
    """The URL of ``service``'s database: ``CERTRAIL_<SERVICE>_DB_URL`` if set, else ``CERTRAIL_DB_URL`` (one
    database shared by every service, e.g. PostgreSQL), else the service's own SQLite file ``var/<service>.db``."""
    env = os.environ if environ is None else environ
    return env.get(service_db_url_env(service)) or env.get(SHARED_DB_URL_ENV) or default_service_db_url(service)


class DatabaseSettings(BaseSettings):
    """A SQL database: SQLite files by default (one per service), PostgreSQL in production.

    A service opens ``DatabaseSettings.for_service(name)``; ``DatabaseSettings()`` alone is the shared
    database of ``CERTRAIL_DB_URL`` (or the default file of none of the services, ``var/certrail.db``,
    the shared database of installations from before decision 0017's step 4).
    """

    model_config = SettingsConfigDict(env_prefix="CERTRAIL_DB_", extra="forbid")

    url: str = Field(
        default="sqlite:///var/certrail.db",
        repr=False,  # may hold a password; show it with services.common.db.safe_url
        description="SQLAlchemy URL. A relative SQLite path is relative to the working directory.",
    )
    busy_timeout_ms: int = Field(default=30_000, ge=0, description="SQLite only: wait this long for a lock.")
    pool_size: int = Field(default=5, ge=1, description="PostgreSQL only.")
    echo: bool = False

    @classmethod
    def for_service(cls, service: str, environ: Mapping[str, str] | None = None) -> DatabaseSettings:
        """``service``'s database (:func:`service_database_url`); the other fields (busy timeout, pool) are the
        shared ``CERTRAIL_DB_*`` ones."""
        return cls(url=service_database_url(service, environ))


def service_databases(environ: Mapping[str, str] | None = None) -> dict[str, DatabaseSettings]:
    """Every service's database (:meth:`DatabaseSettings.for_service`), by service name."""
    return {service: DatabaseSettings.for_service(service, environ) for service in DATABASE_OWNERS}


class HttpSettings(BaseSettings):
    """Where a service serves its health and metrics endpoints."""

    model_config = SettingsConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
