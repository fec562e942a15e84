"""Parked certificates (parking.py) checked again: released when the gateway event they waited
for is applied (handlers/projection.py), refused for good by the sweep when their deadline passes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from services.common.consumer import Outbound
from services.deployer import parking
from services.deployer.context import DeployerContext
from services.deployer.handlers.deploy import on_certificate_issued

log = logging.getLogger(__name__)


def _drop(ctx: DeployerContext, event_id: str) -> None:
    with ctx.write() as session:
        parking.unpark(session, event_id)


async def release(ctx: DeployerContext, parked: Sequence[parking.Parked]) -> list[Outbound]:
    """Check ``parked`` again now that what they waited for may be known: installed, refused, or still parked."""
    if not parked:
        return []
    return await parking.retry_all(parked, lambda envelope, final: on_certificate_issued(ctx, envelope, final=final),
                                   final=False, drop=lambda event_id: _drop(ctx, event_id))


async def sweep_once(ctx: DeployerContext, publish: Callable[[Sequence[Outbound]], Awaitable[None]]) -> int:
    """Refuse the parked certificates whose deadline has passed and publish what that leads to
    (DeploymentFailed per target, or a deployment when the cure arrived just in time); returns
    how many were swept. Sets certrail_deployer_parked_certificates."""

    def due() -> list[parking.Parked]:
        with ctx.read() as session:
            return parking.due(session, ctx.clock())
    swept = await asyncio.to_thread(due)
    if swept:
        out = await parking.retry_all(swept, lambda envelope, final: on_certificate_issued(ctx, envelope, final=final),
                                      final=True, drop=lambda event_id: _drop(ctx, event_id))
        if out:
            await publish(out)

    def count() -> int:
        with ctx.read() as session:
            return parking.count(session)
    ctx.metrics.parked_now.set(await asyncio.to_thread(count))
    return len(swept)


async def sweep_forever(ctx: DeployerContext, publish: Callable[[Sequence[Outbound]], Awaitable[None]],
                        interval_s: float) -> None:
    """`sweep_once` every ``interval_s`` for as long as the deployer runs; a failed sweep is logged
    and tried again at the next interval (the parked rows stay until a sweep succeeds)."""
    while True:
        try:
            while await sweep_once(ctx, publish) >= parking.BATCH:
                pass  # more were due than one sweep takes
        except Exception:  # noqa: BLE001 - the sweep must outlive a database or broker outage; logged with its traceback
            log.exception("sweep of parked certificates failed; trying again in %.1f s", interval_s)
        await asyncio.sleep(interval_s)
