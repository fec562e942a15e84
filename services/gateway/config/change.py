"""One configuration change: a write transaction that also records its admin event, or, when the
change is refused (a `Problem`), a transaction that records only the refusal."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from services.common.contracts.admin import AdminOutcome
from services.common.contracts.envelope import Message
from services.common.db import write_session
from services.gateway.api_common import Problem
from services.gateway.config import outbox
from services.gateway.config.actor import Actor


@dataclass
class Pending:
    """The change being made: its subject fields (``about``), its session and the fields it
    changes (secrets as ``***``), set by the change function as it goes."""

    about: dict[str, str]
    session: Session | None = None
    change: dict[str, Any] = field(default_factory=dict)

    @property
    def db(self) -> Session:
        assert self.session is not None
        return self.session


def refuse(actor: Actor, cls: type[Message], about: dict[str, str], problem: Problem,
           change: dict[str, Any] | None = None) -> Problem:
    """Record a refusal (its own transaction; nothing else is written) and return the problem."""
    with write_session(actor.engine) as session:
        seq = outbox.record(session, cls, about=about, actor=actor.name, outcome=AdminOutcome.REFUSED, now=actor.clock(),
                            change=change, code=problem.code, message=problem.message)
    if seq is not None:
        actor.recorded.append(seq)
    return problem


@contextmanager
def changing(actor: Actor, cls: type[Message], about: dict[str, str], *, unrecorded: Collection[str] = ()) -> Iterator[Pending]:
    """``with changing(...) as pending:`` write through ``pending.db``; on success the event
    (outcome succeeded, ``pending.change``) is written in the same transaction. A `Problem` rolls
    everything back and records the refusal, unless its code is in ``unrecorded`` (e.g. the subject
    does not exist: nothing about it to audit)."""
    pending = Pending(dict(about))
    try:
        with write_session(actor.engine) as session:
            pending.session = session
            yield pending
            seq = outbox.record(session, cls, about=pending.about, actor=actor.name, outcome=AdminOutcome.SUCCEEDED,
                                now=actor.clock(), change=pending.change)
    except Problem as problem:
        if problem.code not in unrecorded:
            refuse(actor, cls, pending.about, problem, pending.change)
        raise
    if seq is not None:
        actor.recorded.append(seq)
