"""The deployer's admin events through its outbox (decision 0019; services/common/admin_outbox.py): a row
of ``deployer_admin_outbox`` written in the transaction of the change it describes; the deployer's relay
(`OutboxRelay`, started by services/deployer/app.py, woken by the internal API after a change) publishes
every unsent row in ``seq`` order, byte for byte (same event id), to ``<prefix>.events.deployer``, then
marks it sent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import Engine

from services.common import admin_outbox
from services.common.admin_outbox import PUBLISH_ERRORS, OutboxRow, Publish
from services.common.contracts.envelope import record_headers
from services.common.contracts.topics import Topics
from services.common.db_schema import DeployerAdminOutbox

__all__ = ["OUTBOX", "PUBLISH_ERRORS", "SOURCE", "OutboxRelay", "OutboxRow", "SendRecords", "record"]

SOURCE = "/certrail/deployer/config"
#: a succeeded change whose event is not valid raises ValueError (a bug): it is not made unrecorded
OUTBOX = admin_outbox.AdminOutbox(DeployerAdminOutbox, SOURCE, strict=True)
record = OUTBOX.record
#: sends (topic, key, value, headers) records and waits for their acknowledgements
SendRecords = Callable[[Sequence[tuple[str, str | None, bytes, dict[str, str]]]], Awaitable[None]]


def publisher(topics: Topics, send: SendRecords) -> Publish:
    """Rows as (topic, key, value, CloudEvents headers) records, sent with ``send``."""

    async def publish(rows: Sequence[OutboxRow]) -> None:
        await send([(topics.channel(r.channel), r.key, r.value.encode("utf-8"), record_headers(r.event_type)) for r in rows])

    return publish


class OutboxRelay(admin_outbox.OutboxRelay):
    """The deployer's relay: every unsent row, every ``interval`` and at once when woken (`wake`)."""

    def __init__(self, engine: Engine, topics: Topics, send: SendRecords, clock: Callable[[], datetime], *,
                 interval: timedelta = timedelta(seconds=2)) -> None:
        super().__init__(OUTBOX, engine, publisher(topics, send), clock, interval=interval, grace=None, name="deployer")
