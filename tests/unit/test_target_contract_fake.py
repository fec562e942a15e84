"""The fake target of the deployer's handler tests (`FakeTarget`, tests/unit/test_deployer_handlers.py)
against the contract every real kind passes (tests/target_contract.py): the handler tests can only
trust a fake that behaves like the targets it stands for."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from test_deployer_handlers import FakeTarget  # type: ignore[import-not-found]  # tests/unit is on sys.path (no __init__.py)

from services.common.contracts.errors import ErrorCode
from services.deployer.targets.base import Bundle, TargetError
from tests.deployer_support import MiniCA
from tests.target_contract import CERTIFICATE_ID, NAME, Installed, RemoteTargetContract, TargetContract


@dataclass
class _Unreachable:
    """The fake's system at an address where nothing answers."""

    system: FakeTarget
    kind: str = "fake"
    name: str = "fake-unreachable"

    async def deploy(self, bundle: Bundle) -> None:
        raise TargetError(ErrorCode.TARGET_UNREACHABLE, "fake: no answer", transient=True)

    async def verify(self, bundle: Bundle) -> str:
        raise TargetError(ErrorCode.TARGET_UNREACHABLE, "fake: no answer", transient=True)

    async def rollback(self, bundle: Bundle) -> bool:
        return await self.system.rollback(bundle)


@dataclass
class FakeDriver:
    """The fake holds its "system" itself: what it installed (`installed`), failures on demand."""

    bot_held: bool
    ca: MiniCA = field(default_factory=MiniCA)
    system: FakeTarget = field(default_factory=lambda: FakeTarget("fake", "fake"))
    kind: str = "fake"
    carries_key: bool = True
    baseline: Bundle | None = None
    secrets: tuple[str, ...] = ()

    def bundle(self) -> Bundle:
        return self.ca.bundle(CERTIFICATE_ID, [NAME], with_key=self.bot_held)

    def target(self, previous: Bundle | None) -> FakeTarget:
        return self.system  # the handler tests' bench keeps one fake per target name, as here

    def misconfigured(self, previous: Bundle | None) -> FakeTarget:
        return FakeTarget("fake-misconfigured", "fake", fail_deploy=[TargetError(ErrorCode.INSTALL_FAILED, "fake: refused")])

    def unreachable(self, previous: Bundle | None) -> _Unreachable:
        return _Unreachable(self.system)

    def refuse(self, bundle: Bundle) -> None:
        self.system.fail_deploy.append(TargetError(ErrorCode.INSTALL_FAILED, f"fake: refused {bundle.serial}"))

    def fail_before_install(self, bundle: Bundle) -> None:
        self.refuse(bundle)

    async def observed(self) -> Installed | None:
        installed = self.system.installed
        return None if installed is None else Installed.of(installed, carries_key=True)


@pytest.fixture(params=[True, False], ids=["bot-held", "requester-held"])
def driver(request: pytest.FixtureRequest) -> FakeDriver:
    return FakeDriver(bot_held=request.param)


class TestFakeTarget(TargetContract, RemoteTargetContract):
    """The handler tests' fake holds to the contract of the real kinds."""
