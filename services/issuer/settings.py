"""Settings of the issuer (env prefix ``CERTRAIL_ISSUER_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.service_app import ServiceSettings


class IssuerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CERTRAIL_ISSUER_", extra="forbid")

    http_port: int = Field(default=8081, ge=0, le=65535)
    group_id: str = Field(default="certrail-issuer", min_length=1, max_length=200)
