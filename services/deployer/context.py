"""What the deployer's handlers need, wired once by `create_app` (tests build their own)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from services.common.connectors.secretbox import SecretBox
from services.common.contracts.topics import Topics
from services.common.db import read_session, write_session
from services.common.runtime.writer import SessionReads, SessionWriter
from services.deployer.metrics import DeployerMetrics
from services.deployer.runner import RetryPolicy
from services.deployer.store import TargetSpec
from services.deployer.targets.base import Bundle, DeploymentTarget
from services.deployer.targets.factory import build_target

T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


class KeyedLocks:
    """One asyncio lock per key (a target, or a target's directory for one certificate), forgotten
    when nobody holds or waits for it: deployments that touch the same place run one at a time."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclass
class DeployerContext:
    engine: Engine
    box: SecretBox
    topics: Topics
    metrics: DeployerMetrics
    requester: str
    request_key_id: str
    request_key: bytes = field(repr=False)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: how long a certificate refused for a curable reason waits for the gateway event that would cure it
    #: (parking.py); 0 refuses at once. The service sets it from CERTRAIL_DEPLOYER_PARK_SECONDS.
    park_s: float = 0.0
    #: whether this process may have parked certificates (set when it parks one, reset by the sweep when
    #: none is left): an acceptance looks for parked certificates only then. One parked by another
    #: instance is released by that instance's or this one's sweep (parking.py)
    maybe_parked: bool = True
    park_attempts: int = 0  # counts parkings begun, so that the sweep never resets the flag over a new one
    #: how long a superseded bot-held key is kept before it is destroyed (retention.py); the service sets it
    #: from CERTRAIL_DEPLOYER_KEY_RETENTION_S
    key_retention_s: float = 7 * 86400.0
    #: called after a write queued an event in the deployer's outbox (BotKeyDestroyed): wakes its relay
    wake_outbox: Callable[[], None] = lambda: None
    clock: Callable[[], datetime] = _now
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    build_target: Callable[..., DeploymentTarget] = build_target
    #: certificates of a batch are deployed concurrently, but never two at once into the same place
    target_locks: KeyedLocks = field(default_factory=KeyedLocks, repr=False)

    _writes: SessionWriter | None = field(default=None, init=False, repr=False)
    _reads: SessionReads | None = field(default=None, init=False, repr=False)

    async def write_in(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(session, *args)`` in a write transaction shared with the writes of the other records in
        flight (group commit, services/common/runtime/writer.py); returns once it is committed."""
        if self._writes is None:
            self._writes = SessionWriter(self.engine, name="deployer-writes")
        return await self._writes.run(fn, *args)

    async def read_in(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(session, *args)`` in a read transaction shared with the reads of the other records in flight."""
        if self._reads is None:
            self._reads = SessionReads(self.engine, name="deployer-reads")
        return await self._reads.run(fn, *args)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with read_session(self.engine) as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        with write_session(self.engine) as session:
            yield session


TargetBuilder = Callable[[TargetSpec], DeploymentTarget]
__all__ = ["Bundle", "DeployerContext", "KeyedLocks", "TargetBuilder"]
