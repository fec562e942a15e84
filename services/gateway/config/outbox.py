"""Admin events through an outbox (decision 0019): an event is written as a row of
``gateway_admin_outbox`` in the transaction of the change it describes, published after the
commit by whoever made the change (`publish_rows`), and otherwise by the gateway's relay
(`OutboxRelay`), which publishes every unsent row in order, byte for byte (same event id)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiokafka.errors import KafkaError
from pydantic import ValidationError
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from services.common.contracts.admin import AdminOutcome, event_error
from services.common.contracts.envelope import Message, encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.identity import root_message_id
from services.common.contracts.topics import Topics
from services.common.db import read_session, write_session
from services.common.db_schema import GatewayAdminOutbox

log = logging.getLogger(__name__)

SOURCE = "/certrail/gateway/config"
MAX_CHANGE_FIELDS = 64
#: what a failed publish or outbox read raises (the broker's errors, the database's, a timeout)
PUBLISH_ERRORS = (KafkaError, SQLAlchemyError, OSError, TimeoutError, RuntimeError)
PublishRecords = Callable[[Sequence[dict[str, Any]]], Awaitable[None]]


def record(session: Session, cls: type[Message], *, about: dict[str, str], actor: str, outcome: AdminOutcome, now: datetime,
           change: dict[str, Any] | None = None, code: str | None = None, message: str | None = None) -> int | None:
    """Add the admin event ``cls`` about ``about`` (its subject fields, the first one keys the record) to the
    outbox in ``session``'s transaction; its ``seq``, or None when the event is not valid (a refused create
    whose name is not even a valid name: nothing to name, nothing recorded)."""
    error = event_error(code or ErrorCode.HANDLER_REJECTED, message or "refused") if outcome is AdminOutcome.REFUSED else None
    try:
        data = cls.model_validate({**about, "actor": actor, "outcome": outcome,
                                   "change": dict(list((change or {}).items())[:MAX_CHANGE_FIELDS]), "error": error},
                                  strict=False)
    except ValidationError as exc:
        log.info("admin event %s not recorded: %s", cls.__name__, exc.errors(include_input=False)[0]["msg"])
        return None
    field, subject = next(iter(about.items()))
    action = uuid.uuid4().hex
    event = make_event(data, id=root_message_id("admin", f"{cls.TYPE}:{subject}:{action}", cls.TYPE), source=SOURCE,
                       time=now, subject=None, correlationid=action)
    row = GatewayAdminOutbox(event_id=event.id, event_type=cls.TYPE, channel=cls.CHANNEL, key=f"{field}:{subject}"[:300],
                             value=encode(event).decode("utf-8"), created_at=now, sent_at=None)
    session.add(row)
    session.flush()
    return row.seq


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    event_id: str
    channel: str
    key: str | None
    value: str


def _rows(session: Session, query: Any) -> list[OutboxRow]:
    return [OutboxRow(r.seq, r.event_id, r.channel, r.key, r.value) for r in session.scalars(query)]


def rows_by_seq(engine: Engine, seqs: Sequence[int]) -> list[OutboxRow]:
    if not seqs:
        return []
    with read_session(engine) as session:
        return _rows(session, select(GatewayAdminOutbox).where(GatewayAdminOutbox.seq.in_(list(seqs)))
                     .order_by(GatewayAdminOutbox.seq))


def unsent(engine: Engine, *, created_before: datetime | None = None, limit: int = 200) -> list[OutboxRow]:
    query = select(GatewayAdminOutbox).where(GatewayAdminOutbox.sent_at.is_(None))
    if created_before is not None:
        query = query.where(GatewayAdminOutbox.created_at <= created_before)
    with read_session(engine) as session:
        return _rows(session, query.order_by(GatewayAdminOutbox.seq).limit(limit))


def mark_sent(engine: Engine, seqs: Sequence[int], now: datetime) -> None:
    if seqs:
        with write_session(engine) as session:
            session.execute(update(GatewayAdminOutbox).where(GatewayAdminOutbox.seq.in_(list(seqs)),
                                                             GatewayAdminOutbox.sent_at.is_(None)).values(sent_at=now))


async def publish_rows(engine: Engine, topics: Topics, publish_records: PublishRecords, rows: Sequence[OutboxRow],
                       now: datetime) -> None:
    """Publish ``rows`` in order (acknowledged together), then mark them sent."""
    if not rows:
        return
    await publish_records([{"topic": topics.channel(r.channel), "key": r.key, "value": r.value} for r in rows])
    await asyncio.to_thread(mark_sent, engine, [r.seq for r in rows], now)


async def publish_recorded(engine: Engine, topics: Topics, publish_records: PublishRecords, seqs: Sequence[int],
                           now: datetime) -> None:
    """What a door does after its change committed: publish the rows it wrote. A failure is logged, not
    raised: the change stands and its rows stay unsent, so the relay publishes them."""
    try:
        rows = await asyncio.to_thread(rows_by_seq, engine, [s for s in seqs if s is not None])
        await publish_rows(engine, topics, publish_records, rows, now)
    except PUBLISH_ERRORS as exc:  # the change itself committed; the relay retries
        log.warning("admin events %s left to the outbox relay: %s", list(seqs), type(exc).__name__)


class OutboxRelay:
    """Publishes every unsent outbox row, in ``seq`` order: at start all of them, then every
    ``interval`` the rows older than ``grace`` (younger ones are being published by the door that
    wrote them). A failed publish is retried on the next round, with the same bytes."""

    def __init__(self, engine: Engine, topics: Topics, publish_records: PublishRecords, clock: Callable[[], datetime], *,
                 interval: timedelta = timedelta(seconds=2), grace: timedelta = timedelta(seconds=10)) -> None:
        self._engine, self._topics, self._publish, self._clock = engine, topics, publish_records, clock
        self._interval, self._grace = interval, grace
        self._stopped = asyncio.Event()
        self.failures = 0

    async def relay_once(self, *, everything: bool = False) -> int:
        """One round: the number of rows published."""
        cutoff = None if everything else self._clock() - self._grace
        published = 0
        while True:
            rows = await asyncio.to_thread(unsent, self._engine, created_before=cutoff)
            if not rows:
                return published
            await publish_rows(self._engine, self._topics, self._publish, rows, self._clock())
            published += len(rows)

    async def run_forever(self) -> None:
        everything = True
        while not self._stopped.is_set():
            try:
                count = await self.relay_once(everything=everything)
                everything = False
                if count:
                    log.info("outbox relay published %d admin event(s)", count)
            except PUBLISH_ERRORS as exc:  # broker or database down: the rows stay unsent, next round
                self.failures += 1
                log.warning("outbox relay round failed (%s); retrying", type(exc).__name__)
            try:
                await asyncio.wait_for(self._stopped.wait(), self._interval.total_seconds())
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stopped.set()
