"""Failed-authentication throttling for the HTTP API and the console's sign-in
(services/gateway/policy/throttle.py holds the pure window; this module wires it to requests,
settings and the metric ``certrail_gateway_auth_throttled_total``)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from services.common.contracts.errors import ErrorCode
from services.gateway.policy.throttle import FailureWindows, ThrottleLimits, failure_keys
from services.gateway.policy.violation import PolicyViolation


class Throttled(PolicyViolation):
    """A failed authentication over the limit: answered 429 with Retry-After."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(ErrorCode.AUTH_THROTTLED, f"too many failed authentications from this client or for this "
                                                   f"credential: try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


def client_address(request: Any) -> str | None:
    """The peer's address as the server sees it (X-Forwarded-For is not trusted: a proxy in front
    of the gateway makes every client one address; see docs/gateway.md)."""
    client = getattr(request, "client", None)
    return client.host if client is not None else None


_TOKEN_ID = re.compile(r"^\s*bearer\s+ctr_([0-9a-f]{12})_", re.IGNORECASE)


def presented_token_id(authorization: str | None) -> str | None:
    """The token id in an Authorization header, even when the rest of the token is wrong."""
    match = _TOKEN_ID.match(authorization or "")
    return match.group(1) if match else None


class AuthThrottle:
    """Counts failed authentications per client address and per presented credential id."""

    def __init__(self, limits: ThrottleLimits, *, registry: CollectorRegistry | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.windows = FailureWindows(limits)
        self._monotonic = monotonic
        self.throttled = Counter("certrail_gateway_auth_throttled", "Failed authentications answered 429 AUTH_THROTTLED, "
                                 "by door (api, console).", ["door"], registry=registry)

    def failed(self, door: str, address: str | None, identity: str | None, violation: PolicyViolation) -> PolicyViolation:
        """Record a failed attempt; the violation to answer: ``violation`` itself (401), or
        `Throttled` (429) when a key was already over its limit before this attempt."""
        keys = failure_keys(address, identity)
        now = self._monotonic()
        wait = self.windows.retry_after(keys, now)
        self.windows.record_failure(keys, now)
        if wait is None:
            return violation
        self.throttled.labels(door).inc()
        return Throttled(wait)


def throttle_from(settings: Any, registry: CollectorRegistry | None) -> AuthThrottle:
    limits = ThrottleLimits(per_address=settings.auth_failures_per_address, per_identity=settings.auth_failures_per_identity,
                            window_s=settings.auth_failure_window_s)
    return AuthThrottle(limits, registry=registry)
