"""The renewal scheduler's settings, embedded in the gateway's settings: from the environment one by one,
``CERTRAIL_GATEWAY_SCHEDULER__INTERVAL_S=2``, or as one JSON object,
``CERTRAIL_GATEWAY_SCHEDULER='{"interval_s": 2, "lease_ttl_s": 10}'``; docs/gateway-scheduler.md."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SchedulerSettings(BaseModel):
    """The renewal scheduler's settings (embedded in the gateway's settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    interval_s: float = Field(default=30.0, gt=0, le=3600, description="seconds between ticks")
    lease_ttl_s: float = Field(
        default=90.0, gt=0, le=86400, description="how long a lease lasts unrenewed: the takeover delay after a crash"
    )
    lease_name: str = Field(default="renewal-scheduler", min_length=1, max_length=64)
    jitter_fraction: float = Field(default=0.1, ge=0, lt=1, description="jitter window as a fraction of the lifetime")
    jitter_max: timedelta = Field(default=timedelta(hours=24), description="upper bound of the jitter window")
    expiry_thresholds_days: list[int] = Field(default_factory=lambda: [30, 14, 7], max_length=20)
    max_renewals_per_connector_per_minute: int = Field(default=60, ge=1, le=1_000_000)
    max_expiry_notices_per_tick: int = Field(default=1000, ge=1, le=1_000_000)
    notice_retention: timedelta = Field(
        default=timedelta(days=30),
        description="a sent notice is deleted once it is this old and its serial expired at least this long ago",
    )
    prune_interval_s: float = Field(default=3600.0, gt=0, le=86400, description="seconds between two prunes")

    @field_validator("expiry_thresholds_days")
    @classmethod
    def _thresholds(cls, values: list[int]) -> list[int]:
        for value in values:
            if not 1 <= value <= 3650:
                raise ValueError(f"expiry threshold {value} must be between 1 and 3650 days")
        if len(set(values)) != len(values):
            raise ValueError("expiry thresholds must be distinct")
        return sorted(values, reverse=True)

    @field_validator("jitter_max")
    @classmethod
    def _jitter_max(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("jitter_max must not be negative")
        return value

    @field_validator("notice_retention")
    @classmethod
    def _retention(cls, value: timedelta) -> timedelta:
        if value < timedelta(days=1):
            raise ValueError("notice_retention must be at least one day (a shorter one could send a notice twice)")
        return value

    @model_validator(mode="after")
    def _lease_outlives_interval(self) -> SchedulerSettings:
        if self.lease_ttl_s <= self.interval_s:
            raise ValueError(
                f"lease_ttl_s ({self.lease_ttl_s}) must exceed interval_s ({self.interval_s}),"
                " or the lease lapses between two ticks of its holder"
            )
        return self

