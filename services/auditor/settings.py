"""Settings of the auditor (env prefix ``CERTRAIL_AUDITOR_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.service_app import ServiceSettings


class AuditorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CERTRAIL_AUDITOR_", extra="forbid")

    http_port: int = Field(default=8083, ge=0, le=65535)
    group_id: str = Field(default="certrail-auditor", min_length=1, max_length=200)
