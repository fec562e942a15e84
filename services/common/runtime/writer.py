"""Group commit: one transaction for the steps of every record in flight (the service runtime's,
decision 0017; first written for the issuer's state steps, which the text below describes).

Each command waits for its own steps (`state.begin_attempt_in` before emCA is called,
`state.record_outcome_in` before anything is published, ...), so the protocol of
`services.issuer.state` is unchanged; what changes is how they reach the database. Instead of one
transaction per step, each from a worker thread of its own and all of them queueing for SQLite's
write lock, the steps queue here and one flusher writes everything queued in one transaction and
one thread hop, then wakes each caller with its own result. While a group commits, the next one
gathers, so the group grows with the load and a lone command waits for nothing but its own commit.

A group is all or nothing. When it fails (one step raised: an operation that is not there, a
constraint, a lost connection), it is rolled back and each of its steps is run again in a
transaction of its own, so a step fails alone and only its caller sees the error.

The grouping itself (`ThreadGroups`) also serves calls without a transaction (`ThreadCalls`: the
verification of the certificates of one emCA answer in one thread hop instead of one hop each).
`SessionWriter` and `SessionReads` are the same for ORM steps (``fn(session, ...)``): the writes of a
group in one transaction, the reads of a group in one read transaction and one thread hop (the deployer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine

from services.common.db import read_session, write_session

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_GROUP = 128
"""Steps in one group at most (a state group holds SQLite's write lock while it runs)."""


@dataclass(frozen=True)
class _Step:
    call: Callable[..., Any]
    future: asyncio.Future[Any]


class ThreadGroups:
    """Runs calls in a worker thread, one thread hop for all the calls queued meanwhile: those made in the same
    event-loop turn, or while the previous group ran. Each caller gets its own result or exception. Use it from
    one event loop. Subclasses decide how a group runs (`_run_group`)."""

    def __init__(self, *, max_group: int = MAX_GROUP, name: str = "thread-groups") -> None:
        self._max_group = max_group
        self._name = name
        self._queue: list[_Step] = []
        self._flusher: asyncio.Task[None] | None = None
        self.groups = 0
        self.steps = 0

    async def _enqueue(self, call: Callable[..., T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append(_Step(call, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush(), name=self._name)
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                group, self._queue = self._queue[: self._max_group], self._queue[self._max_group :]
                try:
                    results = await asyncio.to_thread(self._run_group, group)
                except BaseException:  # cancelled (shutdown): nobody may wait forever
                    _cancel(group)
                    raise
                self.groups += 1
                self.steps += len(group)
                for step, (ok, value) in zip(group, results, strict=True):
                    if step.future.done():  # its caller was cancelled
                        continue
                    if ok:
                        step.future.set_result(value)
                    else:
                        step.future.set_exception(value)
        except BaseException:
            _cancel(self._queue)
            self._queue = []
            raise
        finally:
            self._flusher = None

    def _run_group(self, group: list[_Step]) -> list[tuple[bool, Any]]:
        """In the worker thread: each call on its own; an exception is its caller's."""
        results: list[tuple[bool, Any]] = []
        for step in group:
            try:
                results.append((True, step.call()))
            except Exception as exc:  # noqa: BLE001 - handed to the step's caller, who handles or raises it
                results.append((False, exc))
        return results


class ThreadCalls(ThreadGroups):
    """``await calls.run(fn, *args)``: ``fn(*args)`` in a worker thread, sharing the hop with the calls made
    meanwhile (the issuer verifies the certificates of one emCA answer in one hop)."""

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._enqueue(lambda: fn(*args, **kwargs))


class StateWriter(ThreadGroups):
    """Runs `state` steps (``fn(conn, *args)``) in group transactions. One per process and engine;
    use it from one event loop."""

    def __init__(self, engine: Engine, *, max_group: int = MAX_GROUP, name: str = "issuer-state-writer") -> None:
        super().__init__(max_group=max_group, name=name)
        self._engine = engine

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in the next group's transaction; returns once it is committed.
        A caller cancelled meanwhile does not take its step back: it is written with its group."""
        return await self._enqueue(lambda conn: fn(conn, *args, **kwargs))

    def _run_group(self, group: list[_Step]) -> list[tuple[bool, Any]]:
        """In a worker thread: the whole group in one transaction, or (if that fails) step by step."""
        try:
            with self._engine.begin() as conn:
                return [(True, step.call(conn)) for step in group]
        except Exception as exc:
            if len(group) == 1:
                return [(False, exc)]
            log.warning("a group of %d %s steps failed (%s): writing them one by one", len(group), self._name, exc)
        results: list[tuple[bool, Any]] = []
        for step in group:
            try:
                with self._engine.begin() as conn:
                    results.append((True, step.call(conn)))
            except Exception as exc:  # noqa: BLE001 - handed to the step's caller, who handles or raises it
                results.append((False, exc))
        return results


class SessionWriter(ThreadGroups):
    """`StateWriter` for ORM steps: ``await writer.run(fn, *args)`` runs ``fn(session, *args)`` with the
    other steps queued meanwhile in one write Session and transaction (`db.write_session`), committed
    before any caller resumes; a failed group is rolled back and its steps run again one transaction each."""

    def __init__(self, engine: Engine, *, max_group: int = MAX_GROUP, name: str = "session-writer") -> None:
        super().__init__(max_group=max_group, name=name)
        self._engine = engine

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._enqueue(lambda session: fn(session, *args, **kwargs))

    def _run_group(self, group: list[_Step]) -> list[tuple[bool, Any]]:
        try:
            with write_session(self._engine) as session:
                return [(True, step.call(session)) for step in group]
        except Exception as exc:
            if len(group) == 1:
                return [(False, exc)]
            log.warning("a group of %d %s steps failed (%s): writing them one by one", len(group), self._name, exc)
        results: list[tuple[bool, Any]] = []
        for step in group:
            try:
                with write_session(self._engine) as session:
                    results.append((True, step.call(session)))
            except Exception as exc:  # noqa: BLE001 - handed to the step's caller, who handles or raises it
                results.append((False, exc))
        return results


class SessionReads(ThreadGroups):
    """``await reads.run(fn, *args)``: ``fn(session, *args)`` in a read-only Session (`db.read_session`)
    shared with the reads queued meanwhile: one read transaction, one thread hop; an exception is its
    caller's alone."""

    def __init__(self, engine: Engine, *, max_group: int = MAX_GROUP, name: str = "session-reads") -> None:
        super().__init__(max_group=max_group, name=name)
        self._engine = engine

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._enqueue(lambda session: fn(session, *args, **kwargs))

    def _run_group(self, group: list[_Step]) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = []
        with read_session(self._engine) as session:
            for step in group:
                try:
                    results.append((True, step.call(session)))
                except Exception as exc:  # noqa: BLE001 - handed to the step's caller, who handles or raises it
                    results.append((False, exc))
                    session.rollback()  # a failed step must not leave the next ones a failed transaction
        return results


def _cancel(steps: list[_Step]) -> None:
    for step in steps:
        step.future.cancel()
