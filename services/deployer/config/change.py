"""One change to the deployer's configuration: a write transaction that also records its admin event, or,
when the change is refused (a `Refused`), a transaction that records only the refusal."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from services.common.contracts.admin import AdminOutcome
from services.common.contracts.envelope import Message
from services.common.db import write_session
from services.deployer.config import outbox


class ConfigCode(StrEnum):
    """The path's own stable codes (beside ErrorCode's TARGET_UNREACHABLE / INSTALL_FAILED from a probe)."""

    INVALID_INPUT = "INVALID_INPUT"
    TARGET_NOT_FOUND = "TARGET_NOT_FOUND"
    TARGET_EXISTS = "TARGET_EXISTS"
    TARGET_IN_USE = "TARGET_IN_USE"
    BINDING_NOT_FOUND = "BINDING_NOT_FOUND"


class Refused(Exception):
    """A change that is not made: a stable ``code`` and a message without secrets; ``status`` for the API."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = str(code), message, status


@dataclass
class Actor:
    """Who changes the configuration (``cli:<os user>``, ``--actor``, or the internal API's
    ``X-Certrail-Actor``) through which database; ``recorded``: the outbox rows written."""

    engine: Engine
    name: str
    clock: Callable[[], datetime]
    recorded: list[int] = field(default_factory=list)


@dataclass
class Pending:
    about: dict[str, str]
    session: Session | None = None
    change: dict[str, Any] = field(default_factory=dict)

    @property
    def db(self) -> Session:
        assert self.session is not None
        return self.session


def refuse(actor: Actor, cls: type[Message], about: dict[str, str], refused: Refused,
           change: dict[str, Any] | None = None) -> Refused:
    """Record a refusal (its own transaction; nothing else is written) and return it."""
    with write_session(actor.engine) as session:
        seq = outbox.record(session, cls, about=about, actor=actor.name, outcome=AdminOutcome.REFUSED, now=actor.clock(),
                            change=change, code=refused.code, message=refused.message)
    if seq is not None:
        actor.recorded.append(seq)
    return refused


@contextmanager
def changing(actor: Actor, cls: type[Message], about: dict[str, str], *, unrecorded: Collection[str] = ()) -> Iterator[Pending]:
    """``with changing(...) as pending:`` write through ``pending.db``; on success the event (outcome
    succeeded, ``pending.change``) is written in the same transaction. A `Refused` rolls everything back
    and records the refusal, unless its code is in ``unrecorded`` (the subject does not exist)."""
    pending = Pending(dict(about))
    try:
        with write_session(actor.engine) as session:
            pending.session = session
            yield pending
            seq = outbox.record(session, cls, about=pending.about, actor=actor.name, outcome=AdminOutcome.SUCCEEDED,
                                now=actor.clock(), change=pending.change)
    except Refused as refused:
        if refused.code not in unrecorded:
            refuse(actor, cls, pending.about, refused, pending.change)
        raise
    if seq is not None:
        actor.recorded.append(seq)
