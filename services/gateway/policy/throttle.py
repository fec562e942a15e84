"""Throttling of failed authentication (AUTH_THROTTLED): a sliding window of failures per key.

The HTTP API (bearer tokens) and the console (sign-in) count each failed authentication under
two keys: the client's address (``addr:<ip>``) and the presented credential's name (``id:<token
id>``, or the sign-in's token id / user name). When a key has ``limit`` failures within the last
``window_s`` seconds, further *failed* attempts under it are answered 429 with Retry-After
instead of 401, and counted in a metric. A valid credential is always accepted, throttled key
or not, and never counts: otherwise anyone could lock out a token by presenting its id with
wrong secrets (token ids are public: admin events name them).

`FailureWindows` is pure: the clock is passed to every call (monotonic seconds). It keeps at
most ``max_keys`` keys (the oldest are forgotten first), so a caller rotating through made-up
token ids cannot grow it without bound.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ThrottleLimits:
    """``limit`` failures per key within ``window_s`` seconds (0 disables throttling)."""

    per_address: int = 20
    per_identity: int = 10
    window_s: float = 60.0
    max_keys: int = 10_000


def failure_keys(address: str | None, identity: str | None) -> list[tuple[str, str]]:
    """The keys one attempt counts under: (kind, key), kind ``address`` or ``identity``."""
    keys = []
    if address:
        keys.append(("address", f"addr:{address[:64]}"))
    if identity:
        keys.append(("identity", f"id:{identity[:128]}"))
    return keys


class FailureWindows:
    """Failed attempts per key in a sliding window (timestamps in monotonic seconds)."""

    def __init__(self, limits: ThrottleLimits) -> None:
        self.limits = limits
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _limit(self, kind: str) -> int:
        return self.limits.per_address if kind == "address" else self.limits.per_identity

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        horizon = now - self.limits.window_s
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, keys: Iterable[tuple[str, str]], now: float) -> int | None:
        """Seconds until the attempt may fail without being throttled (None: not throttled now)."""
        waits = []
        for kind, key in keys:
            limit = self._limit(kind)
            times = self._recent(key, now)
            if limit <= 0 or times is None or len(times) < limit:
                continue
            # the attempt is allowed again when the failure that makes the count reach the limit leaves the window
            waits.append(times[len(times) - limit] + self.limits.window_s - now)
        if not waits:
            return None
        return max(1, math.ceil(max(waits)))

    def record_failure(self, keys: Iterable[tuple[str, str]], now: float) -> None:
        for kind, key in keys:
            limit = self._limit(kind)
            if limit <= 0:
                continue
            times = self._recent(key, now)
            if times is None:
                times = self._failures[key] = deque()
            else:
                self._failures.move_to_end(key)
            times.append(now)
            while len(times) > limit:  # only the last ``limit`` failures decide anything
                times.popleft()
        while len(self._failures) > self.limits.max_keys:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)
