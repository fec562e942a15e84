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
    """Check every parked certificate again and publish what that leads to: one whose cure has
    arrived is installed (a release the acceptance's own handler could not see: the two were
    written concurrently), one whose deadline has passed is refused for good (DeploymentFailed per
    target), the rest keep waiting. Returns how many had passed their deadline. Sets
    certrail_deployer_parked_certificates."""
    now = ctx.clock()

    def load() -> tuple[list[parking.Parked], list[parking.Parked]]:
        with ctx.read() as session:
            return parking.due(session, now), parking.waiting_for(session)
    due, waiting = await asyncio.to_thread(load)
    due_ids = {p.event_id for p in due}
    retry = lambda envelope, final: on_certificate_issued(ctx, envelope, final=final)  # noqa: E731
    out = await parking.retry_all(due, retry, final=True, drop=lambda event_id: _drop(ctx, event_id))
    out += await parking.retry_all([p for p in waiting if p.event_id not in due_ids], retry, final=False,
                                   drop=lambda event_id: _drop(ctx, event_id))
    if out:
        await publish(out)

    def count() -> int:
        with ctx.read() as session:
            return parking.count(session)
    started = ctx.park_attempts
    left = await asyncio.to_thread(count)
    ctx.metrics.parked_now.set(left)
    if left == 0 and ctx.park_attempts == started:
        ctx.maybe_parked = False  # until this process parks another
    return len(due)


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
