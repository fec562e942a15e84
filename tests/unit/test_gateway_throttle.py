"""Throttling of failed authentication: the pure sliding window (services/gateway/policy/throttle.py)
as a table of named cases with the clock passed in, and `AuthThrottle` (401 until the limit, then
429 AUTH_THROTTLED with Retry-After and the metric), including the bounded number of keys."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from services.common.contracts.errors import ErrorCode
from services.gateway.api_common import Problem
from services.gateway.api_throttle import AuthThrottle, Throttled, presented_token_id
from services.gateway.policy import PolicyViolation
from services.gateway.policy.throttle import FailureWindows, ThrottleLimits, failure_keys

LIMITS = ThrottleLimits(per_address=3, per_identity=2, window_s=60.0, max_keys=100)


@dataclass(frozen=True)
class Case:
    name: str
    failures: list[tuple[float, str | None, str | None]]  # (time, address, token id)
    at: float
    address: str | None
    identity: str | None
    retry_after: int | None


CASES = [
    Case("no failures", [], 0.0, "10.0.0.1", "aaaaaaaaaaaa", None),
    Case("below the address limit", [(0, "10.0.0.1", None), (1, "10.0.0.1", None)], 2, "10.0.0.1", None, None),
    Case("at the address limit", [(0, "10.0.0.1", None), (1, "10.0.0.1", None), (2, "10.0.0.1", None)], 3,
         "10.0.0.1", None, 57),
    Case("another address is not limited", [(0, "10.0.0.1", None)] * 3, 3, "10.0.0.2", None, None),
    Case("the identity limit is lower", [(0, "10.0.0.1", "aaaaaaaaaaaa"), (10, "10.0.0.2", "aaaaaaaaaaaa")], 20,
         "10.0.0.3", "aaaaaaaaaaaa", 40),
    Case("failures leave the window", [(0, "10.0.0.1", None), (1, "10.0.0.1", None), (2, "10.0.0.1", None)], 60.5,
         "10.0.0.1", None, None),
    Case("the wait ends when the oldest counted failure leaves", [(0, "a", None), (30, "a", None), (59, "a", None)], 59.5,
         "a", None, 1),
    Case("only the last failures count", [(t, "a", None) for t in (0, 10, 20, 30, 40)], 45, "a", None, 35),
    Case("the longer wait of two keys wins",
         [(0, "x", "bbbbbbbbbbbb"), (5, "x", "bbbbbbbbbbbb"), (10, "a", None), (20, "a", None), (30, "a", None)], 31,
         "a", "bbbbbbbbbbbb", 39),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_failure_windows(case: Case) -> None:
    windows = FailureWindows(LIMITS)
    for time, address, identity in case.failures:
        windows.record_failure(failure_keys(address, identity), time)
    assert windows.retry_after(failure_keys(case.address, case.identity), case.at) == case.retry_after


def test_a_zero_limit_disables_the_kind() -> None:
    windows = FailureWindows(ThrottleLimits(per_address=0, per_identity=1, window_s=60))
    for t in range(50):
        windows.record_failure(failure_keys("10.0.0.1", None), float(t))
    assert windows.retry_after(failure_keys("10.0.0.1", None), 50.0) is None and len(windows) == 0


def test_keys_are_bounded() -> None:
    windows = FailureWindows(ThrottleLimits(per_address=1, per_identity=1, window_s=60, max_keys=10))
    for i in range(1000):
        windows.record_failure(failure_keys(None, f"{i:012x}"), 1.0)
    assert len(windows) == 10
    assert windows.retry_after(failure_keys(None, f"{999:012x}"), 2.0) == 59  # the newest are kept
    assert windows.retry_after(failure_keys(None, f"{0:012x}"), 2.0) is None


def test_presented_token_id() -> None:
    assert presented_token_id("Bearer ctr_0123456789ab_" + "x" * 43) == "0123456789ab"
    assert presented_token_id("bearer ctr_0123456789ab_wrong") == "0123456789ab"  # the id even when the rest is wrong
    assert presented_token_id("Bearer nonsense") is None and presented_token_id(None) is None


def test_auth_throttle_answers_429_past_the_limit_and_counts_it() -> None:
    now = [100.0]
    registry = CollectorRegistry()
    throttle = AuthThrottle(ThrottleLimits(per_address=2, per_identity=10, window_s=30), registry=registry,
                            monotonic=lambda: now[0])
    refused = PolicyViolation(ErrorCode.UNAUTHENTICATED, "the bearer token is not valid")
    answers = [throttle.failed("api", "10.0.0.9", None, refused) for _ in range(3)]
    assert answers[:2] == [refused, refused]
    assert isinstance(answers[2], Throttled) and answers[2].code is ErrorCode.AUTH_THROTTLED
    problem = Problem.of(answers[2])
    response = problem.response()
    assert (response.status_code, response.headers["retry-after"]) == (429, "30")
    assert registry.get_sample_value("certrail_gateway_auth_throttled_total", {"door": "api"}) == 1
    now[0] += 31  # the window has passed: a failure is a plain 401 again
    assert throttle.failed("console", "10.0.0.9", None, refused) is refused
    assert registry.get_sample_value("certrail_gateway_auth_throttled_total", {"door": "console"}) is None
