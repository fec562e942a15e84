"""tests/conftest.py's two polling helpers: `poll_until` (async) and `wait_until` (sync) return the
predicate's first truthy value, accept an async predicate (poll_until), and fail naming what they
waited for, a callable description evaluated only then (to show the last state seen)."""

from __future__ import annotations

import itertools

import pytest

from tests.conftest import poll_until, wait_until


async def test_poll_until_returns_the_first_truthy_value_of_a_sync_or_async_predicate() -> None:
    counter = itertools.count()
    assert await poll_until(lambda: next(counter) >= 3 and "ready", "three calls", 5, interval_s=0) == "ready"

    calls = itertools.count()

    async def ready() -> int:
        n = next(calls)
        return n if n >= 2 else 0

    assert await poll_until(ready, "an async check", 5, interval_s=0) == 2


async def test_poll_until_runs_the_predicate_in_a_thread_when_asked() -> None:
    assert await poll_until(lambda: "from a thread", "a worker thread", 5, in_thread=True) == "from a thread"


async def test_poll_until_fails_naming_what_and_the_state_seen_at_the_end() -> None:
    seen: list[int] = []

    def never() -> bool:
        seen.append(len(seen))
        return False

    with pytest.raises(AssertionError, match=r"timed out after 0\.05s waiting for the answer \(checked (?:[2-9]|\d{2,}) times\)"):
        await poll_until(never, lambda: f"the answer (checked {len(seen)} times)", 0.05, interval_s=0.01)


def test_wait_until_returns_the_value_or_fails_naming_what() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter) == 2, "two calls", 5, interval_s=0) is True
    with pytest.raises(AssertionError, match=r"timed out after 0\.05s waiting for a port to open$"):
        wait_until(lambda: None, "a port to open", 0.05, interval_s=0.01)
