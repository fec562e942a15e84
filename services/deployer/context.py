"""What the deployer's handlers need, wired once by `create_app` (tests build their own)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from services.common.connectors.secretbox import SecretBox
from services.common.contracts.topics import Topics
from services.common.db import read_session, write_session
from services.deployer.metrics import DeployerMetrics
from services.deployer.runner import RetryPolicy
from services.deployer.store import TargetSpec
from services.deployer.targets.base import Bundle, DeploymentTarget
from services.deployer.targets.factory import build_target


def _now() -> datetime:
    return datetime.now(UTC)


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
    clock: Callable[[], datetime] = _now
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    build_target: Callable[..., DeploymentTarget] = build_target

    @contextmanager
    def read(self) -> Iterator[Session]:
        with read_session(self.engine) as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        with write_session(self.engine) as session:
            yield session


TargetBuilder = Callable[[TargetSpec], DeploymentTarget]
__all__ = ["Bundle", "DeployerContext", "TargetBuilder"]
