"""The gateway's admin events through its outbox (decision 0019; services/common/admin_outbox.py): a row
of ``gateway_admin_outbox`` written in the transaction of the change it describes, published after the
commit by the door that made the change (`publish_recorded`), and otherwise by the gateway's relay
(`OutboxRelay`: every unsent row older than the grace period, in order, byte for byte: same event id)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from services.common import admin_outbox
from services.common.admin_outbox import PUBLISH_ERRORS, OutboxRow, Publish
from services.common.contracts.topics import Topics
from services.common.db_schema import GatewayAdminOutbox

__all__ = ["OUTBOX", "PUBLISH_ERRORS", "SOURCE", "OutboxRelay", "OutboxRow", "publish_recorded", "record"]

SOURCE = "/certrail/gateway/config"
#: a succeeded change whose event is not valid is logged and left unrecorded (not strict)
OUTBOX = admin_outbox.AdminOutbox(GatewayAdminOutbox, SOURCE, strict=False)
record = OUTBOX.record
PublishRecords = Callable[[Sequence[dict[str, Any]]], Awaitable[None]]


def publisher(topics: Topics, publish_records: PublishRecords) -> Publish:
    """Rows as the gateway's records (``{"topic", "key", "value"}``), published with ``publish_records``."""

    async def publish(rows: Sequence[OutboxRow]) -> None:
        await publish_records([{"topic": topics.channel(r.channel), "key": r.key, "value": r.value} for r in rows])

    return publish


async def publish_recorded(engine: Engine, topics: Topics, publish_records: PublishRecords, seqs: Sequence[int],
                           now: datetime) -> None:
    """What a door does after its change committed: publish the rows it wrote (a failure is logged and
    leaves them to the relay)."""
    await OUTBOX.publish_recorded(engine, publisher(topics, publish_records), seqs, now)


class OutboxRelay(admin_outbox.OutboxRelay):
    """The gateway's relay: every ``interval`` the unsent rows older than ``grace`` (younger ones are being
    published by the door that wrote them), from the first round at start on."""

    def __init__(self, engine: Engine, topics: Topics, publish_records: PublishRecords, clock: Callable[[], datetime], *,
                 interval: timedelta = timedelta(seconds=2), grace: timedelta = timedelta(seconds=10)) -> None:
        super().__init__(OUTBOX, engine, publisher(topics, publish_records), clock, interval=interval, grace=grace,
                         name="gateway")
