"""The two waits of `certrail up`: `Stack.wait_healthy` (every service's /health, a service that exits fails at
once) and the demo's wait for a deployed certificate (services/cli/demo.py ``_wait_deployed``: the status steps
shown once each, a failed or revoked certificate ends it, a renewal waits for a new serial). Fake processes and an
httpx MockTransport stand in for the running stack, which tests/e2e/test_embedded_stack.py starts for real."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli.demo import DemoError, _wait_deployed
from services.common.stack import Stack, StackError


@dataclass
class FakeService:
    label: str
    log_file: Path
    healthy_after: int | None  # polls before /health answers; None: never
    exit_code: int | None = None  # exits (with this status) at its first poll
    polls: int = 0

    def exited(self) -> int | None:
        return self.exit_code

    def healthy(self) -> bool:
        self.polls += 1
        return self.healthy_after is not None and self.polls > self.healthy_after


def _stack(tmp_path: Path, *services: FakeService) -> Stack:
    for service in services:
        service.log_file.write_text(f"{service.label} log line\n")
    stack = Stack(tmp_path)
    stack.services = list(services)  # type: ignore[arg-type]
    return stack


def test_every_service_healthy_ends_the_wait(tmp_path: Path) -> None:
    fast, slow = FakeService("gateway", tmp_path / "g.log", 0), FakeService("issuer", tmp_path / "i.log", 3)
    _stack(tmp_path, fast, slow).wait_healthy(10)
    assert fast.polls == 1 and slow.polls == 4  # a healthy service is not asked again


def test_a_service_that_exits_fails_at_once_with_its_log(tmp_path: Path) -> None:
    dead = FakeService("deployer", tmp_path / "d.log", None, exit_code=3)
    with pytest.raises(StackError, match=r"deployer exited with status 3 while starting:\n.*deployer log line"):
        _stack(tmp_path, FakeService("gateway", tmp_path / "g.log", 0), dead).wait_healthy(30)


def test_a_service_never_healthy_is_named_after_the_timeout(tmp_path: Path) -> None:
    stuck = FakeService("auditor", tmp_path / "a.log", None)
    with pytest.raises(StackError, match=r"not healthy after 1s: auditor\n.*auditor log line"):
        _stack(tmp_path, FakeService("gateway", tmp_path / "g.log", 0), stuck).wait_healthy(1)
    assert stuck.polls > 1


@dataclass
class FakeGateway:
    """Answers GET /v1/certificates/{id} with the next view in ``views`` (the last one from then on)."""

    views: list[dict[str, Any]]
    asked: int = 0
    steps: list[str] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer admin-token"
        view = self.views[min(self.asked, len(self.views) - 1)]
        self.asked += 1
        return httpx.Response(200, json=view)

    def wait(self, tmp_path: Path, timeout_s: float = 10, new_serial_than: str | None = None) -> str:
        with httpx.Client(transport=httpx.MockTransport(self.handle), base_url="http://gateway") as client:
            return _wait_deployed(client, {"Authorization": "Bearer admin-token"}, "web.example", timeout_s, tmp_path,
                                  self.steps.append, new_serial_than=new_serial_than)


def _view(status: str, serial: str | None = None, deployed: str | None = None) -> dict[str, Any]:
    deployments = [{"target": "files", "status": "deployed", "serial": deployed}] if deployed else []
    return {"status": status, "inventory": {"serial": serial, "deployments": deployments} if serial else None}


def test_the_demo_waits_until_the_current_serial_is_deployed_and_shows_each_status_once(tmp_path: Path) -> None:
    gateway = FakeGateway([_view("accepted"), _view("accepted"), _view("issued", "0a"), _view("issued", "0a", "09"),
                           _view("deployed", "0a", "0a")])
    assert gateway.wait(tmp_path) == "0a"
    assert gateway.steps == ["web.example status: accepted", "web.example status: issued",
                             "web.example status: deployed"]


def test_a_renewal_waits_for_a_new_serial(tmp_path: Path) -> None:
    gateway = FakeGateway([_view("deployed", "0a", "0a"), _view("deployed", "0b", "0b")])
    assert gateway.wait(tmp_path, new_serial_than="0a") == "0b" and gateway.asked == 2


@pytest.mark.parametrize("status", ["failed", "revoked"])
def test_a_certificate_that_failed_or_was_revoked_ends_the_wait(tmp_path: Path, status: str) -> None:
    gateway = FakeGateway([_view("accepted"), _view(status)])
    with pytest.raises(DemoError, match=f"web.example ended {status}"):
        gateway.wait(tmp_path)
    assert gateway.asked == 2


def test_a_certificate_never_deployed_times_out_with_its_last_status(tmp_path: Path) -> None:
    gateway = FakeGateway([_view("accepted")])
    with pytest.raises(DemoError, match=r"was not deployed within 1s \(last: accepted\); see .*log/"):
        gateway.wait(tmp_path, timeout_s=1)
    assert gateway.asked > 1
