"""Settings of the deployer (env prefix ``CERTRAIL_DEPLOYER_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.service_app import ServiceSettings


class DeployerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CERTRAIL_DEPLOYER_", extra="forbid")

    http_port: int = Field(default=8082, ge=0, le=65535)
    group_id: str = Field(default="certrail-deployer", min_length=1, max_length=200)
