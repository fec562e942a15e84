"""Console sessions: server-side, in this gateway process's memory.

The browser holds only a random session id (``secrets.token_urlsafe(32)``) in an HttpOnly,
SameSite=Strict cookie (Secure when the console is served over HTTPS). The API token the user
pasted stays here, with the session's CSRF token and its flash messages; it is never written to
a cookie, a page or a log. A session ends on sign-out, after ``IDLE`` without a request, after
``ABSOLUTE`` in any case, and as soon as its token stops authenticating (revoked, expired):
every page re-checks the token through the same code as the ``/v1`` middleware.

Sessions do not survive a gateway restart and are not shared between gateway instances (behind
a load balancer: sticky sessions). docs/console.md says so.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "certrail_console"
PRE_COOKIE = "certrail_console_signin"  # the double-submit token of the sign-in form (no session yet)
IDLE_S = 30 * 60
ABSOLUTE_S = 12 * 60 * 60
MAX_SESSIONS = 10_000


@dataclass
class Session:
    id: str = field(repr=False)
    token: str = field(repr=False)
    token_id: str
    identity: str
    role: str
    profiles: frozenset[str] | None
    csrf: str = field(repr=False)
    created: float
    seen: float
    flashes: list[tuple[str, str]] = field(default_factory=list)

    def flash(self, kind: str, text: str) -> None:
        self.flashes.append((kind, text))
        del self.flashes[:-10]

    def take_flashes(self) -> list[tuple[str, str]]:
        taken, self.flashes = self.flashes, []
        return taken

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf.encode(), str(presented).encode())


class Sessions:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._now = monotonic

    def open(self, *, token: str, token_id: str, identity: str, role: str, profiles: frozenset[str] | None) -> Session:
        now = self._now()
        session = Session(id=secrets.token_urlsafe(32), token=token, token_id=token_id, identity=identity, role=role,
                          profiles=profiles, csrf=secrets.token_urlsafe(32), created=now, seen=now)
        with self._lock:
            self._purge(now)
            if len(self._by_id) >= MAX_SESSIONS:  # the oldest go first
                for old in sorted(self._by_id.values(), key=lambda s: s.seen)[: len(self._by_id) - MAX_SESSIONS + 1]:
                    self._by_id.pop(old.id, None)
            self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = self._now()
        with self._lock:
            session = self._by_id.get(session_id)
            if session is None:
                return None
            if now - session.seen > IDLE_S or now - session.created > ABSOLUTE_S:
                self._by_id.pop(session_id, None)
                return None
            session.seen = now
            return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._by_id.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._by_id)

    def _purge(self, now: float) -> None:
        for sid in [s.id for s in self._by_id.values() if now - s.seen > IDLE_S or now - s.created > ABSOLUTE_S]:
            self._by_id.pop(sid, None)
