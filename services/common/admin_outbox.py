"""Admin events through an outbox (decision 0019), shared by the gateway's configuration path
(services/gateway/config/, ``gateway_admin_outbox``) and the deployer's (services/deployer/config/,
``deployer_admin_outbox``).

- `AdminOutbox` is one service's outbox: its table and the ``source`` of its events.
- `ChangePath` is a configuration path's changes over it: `changing` runs a change's write transaction
  and writes its admin event (outcome succeeded) in it; a refusal (the path's exception, with ``code``
  and ``message``) rolls the change back and `refuse` records only the refusal, in a transaction of its
  own. The `Actor` collects the rows written for its door.
- `OutboxRelay` publishes every unsent row in ``seq`` order, with the stored bytes (the same event id),
  then marks it sent: every ``interval`` (or at once when woken) the rows older than ``grace``, from
  the first round on (a fresher row may be in its door's hands: decision 0019). `start_relay` runs it beside a service. Each service gives the publish callable that
  puts rows on its topics; the one difference between the services is who publishes a fresh row: the
  gateway's door at once after its commit (`publish_recorded`; the relay's grace leaves fresh rows to
  it), the deployer's API by waking its relay.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from aiokafka.errors import KafkaError
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from services.common.contracts.admin import AdminOutcome, event_error
from services.common.contracts.envelope import Envelope, Message, encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.identity import root_message_id
from services.common.db import read_session, write_session

log = logging.getLogger(__name__)

MAX_CHANGE_FIELDS = 64
#: what a failed publish or outbox read raises (the broker's errors, the database's, a timeout)
PUBLISH_ERRORS = (KafkaError, SQLAlchemyError, OSError, TimeoutError, RuntimeError)


@dataclass
class Actor:
    """Who changes the configuration, through which database: a token identity (HTTP API, console, a
    service's internal API), or ``cli:<os user>`` / ``--actor`` (CLI). ``recorded`` collects the outbox
    rows written for this actor's changes (a door publishes them after the commit)."""

    engine: Engine
    name: str
    clock: Callable[[], datetime]
    recorded: list[int] = field(default_factory=list)


@dataclass
class Pending:
    """The change being made: its subject fields (``about``), its session and the fields it changes
    (secrets as ``***``), set by the change function as it goes."""

    about: dict[str, str]
    session: Session | None = None
    change: dict[str, Any] = field(default_factory=dict)

    @property
    def db(self) -> Session:
        assert self.session is not None
        return self.session


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    event_id: str
    event_type: str
    channel: str
    key: str | None
    value: str


#: publishes rows in order (acknowledged together): each service's own records for its topics
Publish = Callable[[Sequence[OutboxRow]], Awaitable[None]]


class AdminOutbox:
    """One service's outbox: ``table`` (an ORM class with seq, event_id, event_type, channel, key, value,
    created_at, sent_at) and ``source`` (its events' CloudEvents source). ``strict``: a change that
    succeeded but whose event is not valid raises ValueError (a bug) instead of being logged and left
    unrecorded."""

    def __init__(self, table: type[Any], source: str, *, strict: bool) -> None:
        self.table, self.source, self.strict = table, source, strict

    def record(self, session: Session, cls: type[Message], *, about: dict[str, str], actor: str, outcome: AdminOutcome,
               now: datetime, change: dict[str, Any] | None = None, code: str | None = None,
               message: str | None = None) -> int | None:
        """Add the admin event ``cls`` about ``about`` (its subject fields; the first keys the record) in
        ``session``'s transaction; its ``seq``, or None when the event is not valid (a refusal whose subject
        is not even a valid name: nothing to name, nothing recorded)."""
        error = event_error(code or ErrorCode.HANDLER_REJECTED, message or "refused") if outcome is AdminOutcome.REFUSED else None
        try:
            data = cls.model_validate({**about, "actor": actor, "outcome": outcome,
                                       "change": dict(list((change or {}).items())[:MAX_CHANGE_FIELDS]), "error": error},
                                      strict=False)
        except ValidationError as exc:
            reason = exc.errors(include_input=False)[0]["msg"]
            if self.strict and outcome is AdminOutcome.SUCCEEDED:
                raise ValueError(f"admin event {cls.__name__} is not valid: {reason}") from None
            log.info("admin event %s not recorded: %s", cls.__name__, reason)
            return None
        field_name, subject = next(iter(about.items()))
        action = uuid.uuid4().hex
        event = make_event(data, id=root_message_id("admin", f"{cls.TYPE}:{subject}:{action}", cls.TYPE), source=self.source,
                           time=now, subject=None, correlationid=action)
        row = self.table(event_id=event.id, event_type=cls.TYPE, channel=cls.CHANNEL, key=f"{field_name}:{subject}"[:300],
                         value=encode(event).decode("utf-8"), created_at=now, sent_at=None)
        session.add(row)
        session.flush()
        return int(row.seq)

    def queue_in(self, conn: Connection | Session, *, event_id: str, event_type: str, channel: str, key: str | None,
                 value: str, created_at: datetime) -> None:
        """Add an event that is not an admin event (already encoded) to the outbox in ``conn``'s transaction, for the
        relay to publish like the rest: the issuer's DuplicateResolved (services/issuer/duplicates/), the deployer's
        CertificateUndeployed and BotKeyDestroyed."""
        conn.execute(insert(self.table).values(event_id=event_id, event_type=event_type, channel=channel,
                                               key=None if key is None else key[:300], value=value, created_at=created_at,
                                               sent_at=None))

    def queue_event_in(self, conn: Connection | Session, event: Envelope, *, key: str | None,
                       created_at: datetime | None = None) -> None:
        """`queue_in` for an event built with ``make_event``: its channel is its message class's; ``created_at`` None:
        the event's time."""
        self.queue_in(conn, event_id=event.id, event_type=event.type, channel=type(event.data).CHANNEL, key=key,
                      value=encode(event).decode("utf-8"), created_at=event.time if created_at is None else created_at)

    def _rows(self, session: Session, query: Any) -> list[OutboxRow]:
        return [OutboxRow(r.seq, r.event_id, r.event_type, r.channel, r.key, r.value) for r in session.scalars(query)]

    def rows_by_seq(self, engine: Engine, seqs: Sequence[int]) -> list[OutboxRow]:
        if not seqs:
            return []
        with read_session(engine) as session:
            return self._rows(session, select(self.table).where(self.table.seq.in_(list(seqs))).order_by(self.table.seq))

    def unsent(self, engine: Engine, *, created_before: datetime | None = None, limit: int = 200) -> list[OutboxRow]:
        query = select(self.table).where(self.table.sent_at.is_(None))
        if created_before is not None:
            query = query.where(self.table.created_at <= created_before)
        with read_session(engine) as session:
            return self._rows(session, query.order_by(self.table.seq).limit(limit))

    def mark_sent(self, engine: Engine, seqs: Sequence[int], now: datetime) -> None:
        if seqs:
            with write_session(engine) as session:
                session.execute(update(self.table).where(self.table.seq.in_(list(seqs)), self.table.sent_at.is_(None))
                                .values(sent_at=now))

    async def publish_rows(self, engine: Engine, publish: Publish, rows: Sequence[OutboxRow], now: datetime) -> None:
        """Publish ``rows`` in order (acknowledged together), then mark them sent."""
        if rows:
            await publish(rows)
            await asyncio.to_thread(self.mark_sent, engine, [r.seq for r in rows], now)

    async def publish_recorded(self, engine: Engine, publish: Publish, seqs: Sequence[int], now: datetime) -> None:
        """What a door does after its change committed: publish the rows it wrote. A failure is logged, not
        raised: the change stands and its rows stay unsent, so the relay publishes them."""
        try:
            rows = await asyncio.to_thread(self.rows_by_seq, engine, [s for s in seqs if s is not None])
            await self.publish_rows(engine, publish, rows, now)
        except PUBLISH_ERRORS as exc:  # the change itself committed; the relay retries
            log.warning("admin events %s left to the outbox relay: %s", list(seqs), type(exc).__name__)


R = TypeVar("R", bound=Exception)


def _why(refused: Exception) -> tuple[str, str]:
    """A refusal's code and message (every path's refusal carries both)."""
    carried: Any = refused
    return str(carried.code), str(carried.message)


class ChangePath(Generic[R]):
    """A configuration path's changes, recorded in ``outbox``; a change is refused by raising ``refusal``
    (an exception with a stable ``code`` and a ``message`` without secrets)."""

    def __init__(self, outbox: AdminOutbox, refusal: type[R]) -> None:
        self.outbox, self.refusal = outbox, refusal

    def refuse(self, actor: Actor, cls: type[Message], about: dict[str, str], refused: R,
               change: dict[str, Any] | None = None) -> R:
        """Record a refusal (its own transaction; nothing else is written) and return it."""
        code, message = _why(refused)
        with write_session(actor.engine) as session:
            seq = self.outbox.record(session, cls, about=about, actor=actor.name, outcome=AdminOutcome.REFUSED,
                                     now=actor.clock(), change=change, code=code, message=message)
        if seq is not None:
            actor.recorded.append(seq)
        return refused

    @contextmanager
    def changing(self, actor: Actor, cls: type[Message], about: dict[str, str], *,
                 unrecorded: Collection[str] = ()) -> Iterator[Pending]:
        """``with path.changing(...) as pending:`` write through ``pending.db``; on success the event (outcome
        succeeded, ``pending.change``) is written in the same transaction. A refusal rolls everything back
        and records the refusal, unless its code is in ``unrecorded`` (the subject does not exist: nothing
        about it to audit)."""
        pending = Pending(dict(about))
        try:
            with write_session(actor.engine) as session:
                pending.session = session
                yield pending
                seq = self.outbox.record(session, cls, about=pending.about, actor=actor.name, outcome=AdminOutcome.SUCCEEDED,
                                         now=actor.clock(), change=pending.change)
        except self.refusal as refused:
            if _why(refused)[0] not in unrecorded:
                self.refuse(actor, cls, pending.about, refused, pending.change)
            raise
        if seq is not None:
            actor.recorded.append(seq)


class OutboxRelay:
    """Publishes every unsent row of ``outbox``, in ``seq`` order: every ``interval`` (or at once after
    `wake`) the rows older than ``grace`` (None: every row), the first round at start included: a
    fresher row may be being published by its door at that moment (the gateway answers its API before
    this relay's first round), and taking it too would put its event on the topic twice. A failed
    publish is retried on the next round, with the same bytes."""

    def __init__(self, outbox: AdminOutbox, engine: Engine, publish: Publish, clock: Callable[[], datetime], *,
                 interval: timedelta = timedelta(seconds=2), grace: timedelta | None = None, name: str = "admin") -> None:
        self._outbox, self._engine, self._publish, self._clock = outbox, engine, publish, clock
        self._interval, self._grace, self._name = interval, grace, name
        self._stopped = asyncio.Event()
        self._woken = asyncio.Event()
        self.failures = 0
        self.rounds = 0  # rounds run by run_forever

    async def relay_once(self) -> int:
        """One round: the number of rows published."""
        cutoff = None if self._grace is None else self._clock() - self._grace
        published = 0
        while True:
            rows = await asyncio.to_thread(self._outbox.unsent, self._engine, created_before=cutoff)
            if not rows:
                return published
            await self._outbox.publish_rows(self._engine, self._publish, rows, self._clock())
            published += len(rows)

    def wake(self) -> None:
        self._woken.set()

    async def run_forever(self) -> None:
        while not self._stopped.is_set():
            self._woken.clear()
            try:
                count = await self.relay_once()
                self.rounds += 1
                if count:
                    log.info("%s outbox relay published %d admin event(s)", self._name, count)
            except PUBLISH_ERRORS as exc:  # broker or database down: the rows stay unsent, next round
                self.failures += 1
                log.warning("%s outbox relay round failed (%s); retrying", self._name, type(exc).__name__)
            waiters = [asyncio.ensure_future(self._stopped.wait()), asyncio.ensure_future(self._woken.wait())]
            await asyncio.wait(waiters, timeout=self._interval.total_seconds(), return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    def stop(self) -> None:
        self._stopped.set()


def start_relay(app: Any, relay: OutboxRelay, task_name: str) -> None:
    """Run ``relay`` beside a service: started after ``app``'s startup, stopped (within 10 s, else
    cancelled) on its shutdown (``app``: the FastStream app, with after_startup and on_shutdown)."""
    task: list[asyncio.Task[None]] = []

    async def start() -> None:
        task.append(asyncio.create_task(relay.run_forever(), name=task_name))

    async def stop() -> None:
        relay.stop()
        try:
            await asyncio.wait_for(asyncio.gather(*task, return_exceptions=True), 10)
        except TimeoutError:
            for running in task:
                running.cancel()

    app.after_startup(start)
    app.on_shutdown(stop)
