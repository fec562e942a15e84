"""Settings of the gateway (env prefix ``CERTRAIL_GATEWAY_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.service_app import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CERTRAIL_GATEWAY_", extra="forbid")

    http_port: int = Field(default=8080, ge=0, le=65535)
    group_id: str = Field(default="certrail-gateway", min_length=1, max_length=200)
