"""Replay-Nonces (RFC 8555 6.5) in ``gateway_acme_nonces``: handed out on every ACME answer, each usable once
until it expires, by whichever gateway instance receives it (the table is shared: a client whose requests
are balanced over two instances is not refused). Using one deletes its row: one DELETE decides, so two
requests racing with the same nonce cannot both pass. Expired rows are pruned while nonces are issued."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine, delete

from services.common.db import write_session
from services.common.db_schema import GatewayAcmeNonce

NONCE_BYTES = 16  # 128 bits, 22 base64url characters


class Nonces(Protocol):
    def issue(self) -> str: ...

    def use(self, nonce: str) -> bool:
        """True once for a nonce this server issued and that has not expired; False otherwise."""
        ...


class SqlNonces:
    """`Nonces` over the gateway's database. ``prune_every``: at most this often per instance, issuing a nonce
    also deletes the expired ones."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime], *, lifetime: timedelta,
                 prune_every: timedelta = timedelta(seconds=30)) -> None:
        self._engine, self._clock, self._lifetime, self._prune_every = engine, clock, lifetime, prune_every
        self._lock = threading.Lock()
        self._pruned_at: datetime | None = None

    def _prune_due(self, now: datetime) -> bool:
        with self._lock:
            if self._pruned_at is not None and now - self._pruned_at < self._prune_every:
                return False
            self._pruned_at = now
            return True

    def issue(self) -> str:
        nonce = secrets.token_urlsafe(NONCE_BYTES)
        now = self._clock()
        with write_session(self._engine) as session:
            if self._prune_due(now):
                session.execute(delete(GatewayAcmeNonce).where(GatewayAcmeNonce.expires_at <= now))
            session.add(GatewayAcmeNonce(nonce=nonce, expires_at=now + self._lifetime))
        return nonce

    def use(self, nonce: str) -> bool:
        if not 1 <= len(nonce) <= 64:
            return False
        with write_session(self._engine) as session:
            deleted = session.execute(delete(GatewayAcmeNonce).where(GatewayAcmeNonce.nonce == nonce,
                                                                     GatewayAcmeNonce.expires_at > self._clock()))
            return int(deleted.rowcount) == 1  # type: ignore[attr-defined]


class MemoryNonces:
    """`Nonces` in memory, for unit tests of code that needs nonces but not their table."""

    def __init__(self) -> None:
        self.live: set[str] = set()

    def issue(self) -> str:
        nonce = secrets.token_urlsafe(NONCE_BYTES)
        self.live.add(nonce)
        return nonce

    def use(self, nonce: str) -> bool:
        if nonce in self.live:
            self.live.discard(nonce)
            return True
        return False
