"""The issuer's admin events through its outbox (decisions 0019 and 0034; services/common/admin_outbox.py): a row of
``issuer_admin_outbox`` written in the transaction of the connector change it describes (or of a duplicate's
resolution: its DuplicateResolved, services/issuer/duplicates/); the issuer's relay
(`OutboxRelay`, started by services/issuer/app.py, woken by the internal API after a change) publishes every unsent
row in ``seq`` order, byte for byte (same event id), to the row's channel under the issuer's prefix, then marks it
sent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import Engine

from services.common import admin_outbox
from services.common.admin_outbox import OutboxRow, Publish
from services.common.contracts.topics import Topics
from services.common.db_schema import IssuerAdminOutbox

__all__ = ["OUTBOX", "SOURCE", "OutboxRelay", "SendRecords", "publisher", "record"]

SOURCE = "/certrail/issuer/config"
#: a succeeded change whose event is not valid is logged and left unrecorded (as the gateway's path did)
OUTBOX = admin_outbox.AdminOutbox(IssuerAdminOutbox, SOURCE, strict=False)
record = OUTBOX.record
#: sends (topic, key, value, event type) records in order and waits for their acknowledgements
SendRecords = Callable[[Sequence[tuple[str, str | None, bytes, str]]], Awaitable[None]]


def publisher(topics: Topics, send: SendRecords) -> Publish:
    """Rows as (topic, key, value, type) records, sent with ``send``."""

    async def publish(rows: Sequence[OutboxRow]) -> None:
        await send([(topics.channel(r.channel), r.key, r.value.encode("utf-8"), r.event_type) for r in rows])

    return publish


class OutboxRelay(admin_outbox.OutboxRelay):
    """The issuer's relay: every unsent row, every ``interval`` and at once when woken (`wake`)."""

    def __init__(self, engine: Engine, topics: Topics, send: SendRecords, clock: Callable[[], datetime], *,
                 interval: timedelta = timedelta(seconds=2)) -> None:
        super().__init__(OUTBOX, engine, publisher(topics, send), clock, interval=interval, grace=None, name="issuer")
