"""The deployer's admin events through an outbox (decision 0019, the gateway's shape): an event is a row
of ``deployer_admin_outbox`` written in the transaction of the change it describes; the deployer's relay
(`OutboxRelay`, started by services/deployer/app.py) publishes every unsent row in ``seq`` order, byte
for byte (same event id), to ``<prefix>.events.deployer``, then marks it sent."""

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
from services.common.contracts.envelope import Message, encode, make_event, record_headers
from services.common.contracts.errors import ErrorCode
from services.common.contracts.identity import root_message_id
from services.common.contracts.topics import Topics
from services.common.db import read_session, write_session
from services.common.db_schema import DeployerAdminOutbox

log = logging.getLogger(__name__)

SOURCE = "/certrail/deployer/config"
MAX_CHANGE_FIELDS = 64
#: what a failed publish or outbox read raises (the broker's errors, the database's, a timeout)
PUBLISH_ERRORS = (KafkaError, SQLAlchemyError, OSError, TimeoutError, RuntimeError)
#: sends (topic, key, value, headers) records and waits for their acknowledgements
SendRecords = Callable[[Sequence[tuple[str, str | None, bytes, dict[str, str]]]], Awaitable[None]]


def record(session: Session, cls: type[Message], *, about: dict[str, str], actor: str, outcome: AdminOutcome, now: datetime,
           change: dict[str, Any] | None = None, code: str | None = None, message: str | None = None) -> int | None:
    """Add the admin event ``cls`` about ``about`` (its subject fields; the first keys the record) to the
    outbox in ``session``'s transaction; its ``seq``. A refusal whose subject is not even a valid name is
    not recorded (None); a change that succeeded always is (ValueError otherwise: a bug)."""
    error = event_error(code or ErrorCode.HANDLER_REJECTED, message or "refused") if outcome is AdminOutcome.REFUSED else None
    try:
        data = cls.model_validate({**about, "actor": actor, "outcome": outcome,
                                   "change": dict(list((change or {}).items())[:MAX_CHANGE_FIELDS]), "error": error},
                                  strict=False)
    except ValidationError as exc:
        reason = exc.errors(include_input=False)[0]["msg"]
        if outcome is AdminOutcome.SUCCEEDED:
            raise ValueError(f"admin event {cls.__name__} is not valid: {reason}") from None
        log.info("admin event %s not recorded: %s", cls.__name__, reason)
        return None
    field, subject = next(iter(about.items()))
    action = uuid.uuid4().hex
    event = make_event(data, id=root_message_id("admin", f"{cls.TYPE}:{subject}:{action}", cls.TYPE), source=SOURCE,
                       time=now, subject=None, correlationid=action)
    row = DeployerAdminOutbox(event_id=event.id, event_type=cls.TYPE, channel=cls.CHANNEL, key=f"{field}:{subject}"[:300],
                              value=encode(event).decode("utf-8"), created_at=now, sent_at=None)
    session.add(row)
    session.flush()
    return row.seq


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    event_type: str
    channel: str
    key: str | None
    value: str


def unsent(engine: Engine, *, limit: int = 200) -> list[OutboxRow]:
    query = select(DeployerAdminOutbox).where(DeployerAdminOutbox.sent_at.is_(None)).order_by(DeployerAdminOutbox.seq)
    with read_session(engine) as session:
        return [OutboxRow(r.seq, r.event_type, r.channel, r.key, r.value) for r in session.scalars(query.limit(limit))]


def mark_sent(engine: Engine, seqs: Sequence[int], now: datetime) -> None:
    if seqs:
        with write_session(engine) as session:
            session.execute(update(DeployerAdminOutbox).where(DeployerAdminOutbox.seq.in_(list(seqs)),
                                                              DeployerAdminOutbox.sent_at.is_(None)).values(sent_at=now))


class OutboxRelay:
    """Publishes every unsent row in ``seq`` order, acknowledged together, then marks them sent; every
    ``interval`` (and at once when `wake` is called: the internal API after a change). A failed publish
    is retried on the next round with the same bytes."""

    def __init__(self, engine: Engine, topics: Topics, send: SendRecords, clock: Callable[[], datetime], *,
                 interval: timedelta = timedelta(seconds=2)) -> None:
        self._engine, self._topics, self._send, self._clock = engine, topics, send, clock
        self._interval = interval
        self._stopped = asyncio.Event()
        self._woken = asyncio.Event()
        self.failures = 0

    async def relay_once(self) -> int:
        """One round: the number of rows published."""
        published = 0
        while True:
            rows = await asyncio.to_thread(unsent, self._engine)
            if not rows:
                return published
            await self._send([(self._topics.channel(r.channel), r.key, r.value.encode("utf-8"), record_headers(r.event_type))
                              for r in rows])
            await asyncio.to_thread(mark_sent, self._engine, [r.seq for r in rows], self._clock())
            published += len(rows)

    def wake(self) -> None:
        self._woken.set()

    async def run_forever(self) -> None:
        while not self._stopped.is_set():
            self._woken.clear()
            try:
                count = await self.relay_once()
                if count:
                    log.info("outbox relay published %d admin event(s)", count)
            except PUBLISH_ERRORS as exc:  # broker or database down: the rows stay unsent, next round
                self.failures += 1
                log.warning("deployer outbox relay round failed (%s); retrying", type(exc).__name__)
            waiters = [asyncio.ensure_future(self._stopped.wait()), asyncio.ensure_future(self._woken.wait())]
            await asyncio.wait(waiters, timeout=self._interval.total_seconds(), return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    def stop(self) -> None:
        self._stopped.set()
