"""One certificate on one target: deploy, verify, roll back on failure, retry an
unreachable target with capped exponential backoff. Pure of Kafka and SQL."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.common.contracts.errors import ErrorCode
from services.deployer.metrics import DeployerMetrics
from services.deployer.targets.base import Bundle, DeploymentTarget, TargetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    verified_serial: str | None
    error: TargetError | None = None
    rolled_back: bool = False
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.verified_serial is not None


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    initial_s: float = 1.0
    max_s: float = 15.0

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt ``attempt`` (1-based)."""
        return min(self.initial_s * 2 ** (attempt - 1), self.max_s)


async def _rollback(target: DeploymentTarget, bundle: Bundle, metrics: DeployerMetrics | None) -> tuple[bool, TargetError | None]:
    try:
        restored = await target.rollback(bundle)
    except TargetError as exc:
        if metrics:
            metrics.rollbacks.labels(target.kind, "failed").inc()
        return False, exc
    except Exception as exc:  # noqa: BLE001 - a target bug must become an event, not a stuck consumer
        log.exception("rollback on target %s failed unexpectedly", target.name)
        if metrics:
            metrics.rollbacks.labels(target.kind, "failed").inc()
        return False, TargetError(ErrorCode.ROLLBACK_FAILED, f"unexpected {type(exc).__name__} during rollback")
    if metrics:
        metrics.rollbacks.labels(target.kind, "restored" if restored else "nothing").inc()
    return restored, None


async def deploy_with_rollback(
    target: DeploymentTarget, bundle: Bundle, policy: RetryPolicy, *, metrics: DeployerMetrics | None = None,
    on_attempt: Callable[[int], Awaitable[None]] | None = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Result:
    started = time.monotonic()
    attempt = 0
    try:
        while True:
            attempt += 1
            if on_attempt is not None:
                await on_attempt(attempt)
            try:
                await target.deploy(bundle)
                serial = await target.verify(bundle)
            except TargetError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - see _rollback
                log.exception("deployment to target %s failed unexpectedly", target.name)
                error = TargetError(ErrorCode.INSTALL_FAILED, f"unexpected {type(exc).__name__} on target {target.name}")
            else:
                if metrics:
                    metrics.attempts.labels(target.kind, "ok").inc()
                    metrics.deployments.labels(target.kind, "deployed").inc()
                return Result(serial, attempts=attempt)
            restored, rollback_error = await _rollback(target, bundle, metrics)
            if rollback_error is not None:
                combined = TargetError(ErrorCode.ROLLBACK_FAILED, f"{error.message}; then rollback failed: {rollback_error.message}")
                if metrics:
                    metrics.attempts.labels(target.kind, "failed").inc()
                    metrics.deployments.labels(target.kind, "failed").inc()
                return Result(None, combined, False, attempt)
            if error.transient and attempt < policy.attempts:
                if metrics:
                    metrics.attempts.labels(target.kind, "retry").inc()
                log.warning("target %s: %s; retrying (attempt %d of %d)", target.name, error.message, attempt, policy.attempts)
                await sleep(policy.delay(attempt))
                continue
            if metrics:
                metrics.attempts.labels(target.kind, "failed").inc()
                metrics.deployments.labels(target.kind, "failed").inc()
            return Result(None, error, restored, attempt)
    finally:
        if metrics:
            metrics.duration.labels(target.kind).observe(time.monotonic() - started)
