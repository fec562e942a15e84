"""Settings of the auditor (env prefix ``CERTRAIL_AUDITOR_``)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.service_app import ServiceSettings, own_database
from services.common.settings import DatabaseSettings

#: CPUs from which the auditor prepares batches in a worker process by default (docs/benchmarks.md, "Pipeline":
#: on 2 CPUs the pickling to the worker and back made the auditor cost 2.3 ms per certificate instead of 1.7)
PREPARE_WORKER_MIN_CPUS = 4


class AuditorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CERTRAIL_AUDITOR_", extra="forbid")

    http_port: int = Field(default=8083, ge=0, le=65535)
    group_id: str = Field(default="certrail-auditor", min_length=1, max_length=200)
    db: DatabaseSettings = own_database("auditor")
    signing_key_file: Path = Field(
        default=Path("var/auditor/checkpoint-signing-key.pem"),
        description="Ed25519 key that signs the checkpoints (PKCS#8 PEM); generated with mode 0600 when missing, "
        "its public key written beside it as <name>.pub.pem.",
    )
    signing_key_passphrase: SecretStr | None = Field(default=None, description="Encrypts the signing key file when set.")
    checkpoint_interval_s: float = Field(default=60.0, gt=0, description="Publish a checkpoint this often when a chain moved.")
    max_batch_records: int = Field(default=2000, ge=1, le=100_000, description="Records per fetched batch (one transaction).")
    poll_timeout_ms: int = Field(default=500, ge=1)
    topic_refresh_interval_ms: int = Field(
        default=30_000, ge=1_000, description="How soon a new topic (a new connector's commands) is picked up."
    )
    retry_backoff_max_s: float = Field(default=30.0, gt=0)
    inventory_metrics_interval_s: float = Field(default=15.0, gt=0, description="How often the inventory's status counts are exported.")
    prepare_processes: int | None = Field(
        default=None, ge=0, le=16,
        description="Worker processes that decode, validate and hash the next batch while one is written; "
        "0 prepares in the writer thread; default: 1 on a machine with 4 or more CPUs, else 0 (on 2 CPUs that the "
        "whole stack shares, shipping the batches to a worker and back costs more CPU than it moves off the auditor: "
        "docs/benchmarks.md).",
    )

    def effective_prepare_processes(self) -> int:
        if self.prepare_processes is not None:
            return self.prepare_processes
        return 1 if (os.cpu_count() or 1) >= PREPARE_WORKER_MIN_CPUS else 0
