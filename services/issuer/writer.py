"""Group commit of the issuer's state steps: one transaction for every command in flight.

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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_GROUP = 128
"""Steps in one transaction at most (it holds SQLite's write lock while it runs)."""


@dataclass(frozen=True)
class _Step:
    call: Callable[[Connection], Any]
    future: asyncio.Future[Any]


class StateWriter:
    """Runs `state` steps (``fn(conn, *args)``) in group transactions. One per process and engine;
    use it from one event loop."""

    def __init__(self, engine: Engine, *, max_group: int = MAX_GROUP) -> None:
        self._engine = engine
        self._max_group = max_group
        self._queue: list[_Step] = []
        self._flusher: asyncio.Task[None] | None = None
        self.groups = 0
        self.steps = 0

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in the next group's transaction; returns once it is committed.
        A caller cancelled meanwhile does not take its step back: it is written with its group."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append(_Step(lambda conn: fn(conn, *args, **kwargs), future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush(), name="issuer-state-writer")
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                group, self._queue = self._queue[: self._max_group], self._queue[self._max_group :]
                try:
                    results = await asyncio.to_thread(self._write, group)
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

    def _write(self, group: list[_Step]) -> list[tuple[bool, Any]]:
        """In a worker thread: the whole group in one transaction, or (if that fails) step by step."""
        try:
            with self._engine.begin() as conn:
                return [(True, step.call(conn)) for step in group]
        except Exception as exc:
            if len(group) == 1:
                return [(False, exc)]
            log.warning("a group of %d issuer state steps failed (%s): writing them one by one", len(group), exc)
        results: list[tuple[bool, Any]] = []
        for step in group:
            try:
                with self._engine.begin() as conn:
                    results.append((True, step.call(conn)))
            except Exception as exc:  # noqa: BLE001 - handed to the step's caller, who handles or raises it
                results.append((False, exc))
        return results


def _cancel(steps: list[_Step]) -> None:
    for step in steps:
        step.future.cancel()
