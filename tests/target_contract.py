"""The contract every `DeploymentTarget` keeps (services/deployer/targets/base.py; docs/deployer.md,
"The target contract"): the fake the handler tests use (tests/unit/test_target_contract_fake.py)
and every real kind against a real system (tests/integration/test_target_contract.py: file,
nginx, webhook, ssh).

Each case drives a target the way the deployer does (`deploy_with_rollback`: deploy, verify,
rollback on failure, retries for transient failures; a fresh target per deployment, given the
previously deployed bundle) and then looks at the system itself, not at what the target says.

A subclass provides a ``driver`` fixture, a `TargetDriver`: what a test can see of and do to the
system behind one target. `RemoteTargetContract` adds the cases of kinds whose system is
reached over the network (the system does not answer).

`WebhookReceiver` and `serve_receiver` are the webhook kind's system: a real HTTPS receiver on
loopback (tests/integration/test_target_contract.py, tests/integration/test_deployer_webhook.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import pytest

from services.common.contracts.errors import ErrorCode
from services.deployer.runner import Result, RetryPolicy, deploy_with_rollback
from services.deployer.targets.base import Bundle, DeploymentTarget, TargetError
from tests.deployer_support import MiniCA, key_pem

CERTIFICATE_ID = "web/contract.deploy.test"
NAME = "contract.deploy.test"

_PEM = re.compile(r"-----BEGIN ([A-Z ]+)-----\s.*?-----END \1-----", re.S)


def split_pem(text: str) -> tuple[str, ...]:
    """The PEM blocks in ``text``, each without surrounding whitespace."""
    return tuple(match.group(0).strip() for match in _PEM.finditer(text))


@dataclass(frozen=True)
class Installed:
    """What a system serves or holds for the certificate: the leaf, the chain (PEM blocks), and
    the private key (None when no key reached the system)."""

    certificate: str
    chain: tuple[str, ...]
    private_key: bytes | None

    @classmethod
    def of(cls, bundle: Bundle, *, carries_key: bool) -> Installed:
        """What the system must hold once ``bundle`` is deployed to a target of this kind."""
        return cls(bundle.certificate_pem.strip(), split_pem(bundle.chain_text),
                   bundle.private_key_pem if carries_key else None)


class TargetDriver(Protocol):
    """The system behind a target of one kind, as a test sees and handles it."""

    kind: str
    #: whether a bot-held private key reaches the system (the webhook: only with include_private_key)
    carries_key: bool
    #: what the system held before certrail's first deployment (None: nothing)
    baseline: Bundle | None
    #: every secret the target is configured with (HMAC secret, SSH client key): never in an error
    secrets: tuple[str, ...]

    def bundle(self) -> Bundle:
        """A new certificate for `CERTIFICATE_ID`, as the deployer hands it to this target."""
        ...

    def target(self, previous: Bundle | None) -> DeploymentTarget:
        """A target for the system, built as the deployer builds one for each deployment."""
        ...

    def misconfigured(self, previous: Bundle | None) -> DeploymentTarget:
        """A target the system answers no to (wrong secret, host key, directory)."""
        ...

    def refuse(self, bundle: Bundle) -> None:
        """The system will take ``bundle`` but refuse to use it (reload fails, receiver says no)."""
        ...

    def fail_before_install(self, bundle: Bundle) -> None:
        """The next deployment of ``bundle`` fails before anything of it is installed (read-only storage)."""
        ...

    async def observed(self) -> Installed | None:
        """What the system serves or holds now, read from the system itself (None: nothing)."""
        ...


class RemoteTargetDriver(TargetDriver, Protocol):
    def unreachable(self, previous: Bundle | None) -> DeploymentTarget:
        """A target for the same system at an address where nothing answers."""
        ...


async def _no_sleep(_: float) -> None:
    return None


async def deploy(target: DeploymentTarget, bundle: Bundle, attempts: int = 3) -> Result:
    """What the deployer does with one bundle on one target (services/deployer/runner.py)."""
    return await deploy_with_rollback(target, bundle, RetryPolicy(attempts, 0.01, 0.01), sleep=_no_sleep)


async def deployed(driver: TargetDriver, bundle: Bundle, previous: Bundle | None) -> Bundle:
    result = await deploy(driver.target(previous), bundle)
    assert result.ok and result.verified_serial == bundle.serial, result
    assert await driver.observed() == Installed.of(bundle, carries_key=driver.carries_key)
    return bundle


def expected(driver: TargetDriver, bundle: Bundle | None) -> Installed | None:
    return None if bundle is None else Installed.of(bundle, carries_key=driver.carries_key)


def assert_names_no_secret(error: TargetError, driver: TargetDriver, *bundles: Bundle) -> None:
    """Neither the target's secrets nor any private key (whole or a line of it) is in the error."""
    text = f"{error.message}\n{error}"
    assert "PRIVATE KEY" not in text, text
    for secret in (*driver.secrets, *(b.private_key_pem.decode() for b in bundles if b.private_key_pem)):
        assert secret.strip() not in text, text
        for line in secret.splitlines():
            if len(line.strip()) >= 16 and "-----" not in line:
                assert line.strip() not in text, text


def assert_failed(result: Result, code: ErrorCode, driver: TargetDriver, *bundles: Bundle) -> TargetError:
    assert not result.ok and result.error is not None, result
    assert result.error.code is code, result
    assert_names_no_secret(result.error, driver, *bundles)
    return result.error


class TargetContract:
    """Behaviour every `DeploymentTarget` kind keeps, checked on the system behind it."""

    async def test_deploy_installs_exactly_the_bundle_and_verify_returns_its_serial(self, driver: TargetDriver) -> None:
        assert await driver.observed() == expected(driver, driver.baseline)
        bundle = driver.bundle()
        target = driver.target(driver.baseline)
        await target.deploy(bundle)
        assert await target.verify(bundle) == bundle.serial
        assert await driver.observed() == Installed.of(bundle, carries_key=driver.carries_key)

    async def test_verify_fails_for_a_certificate_the_system_does_not_use(self, driver: TargetDriver) -> None:
        first = driver.bundle()
        with pytest.raises(TargetError) as never:
            await driver.target(driver.baseline).verify(first)  # never deployed
        assert never.value.code is ErrorCode.VERIFY_FAILED, never.value
        await deployed(driver, first, driver.baseline)
        second = driver.bundle()
        target = driver.target(first)
        await target.deploy(second)
        assert await target.verify(second) == second.serial
        with pytest.raises(TargetError) as replaced:
            await target.verify(first)  # installed before, replaced since
        assert replaced.value.code is ErrorCode.VERIFY_FAILED, replaced.value
        assert_names_no_secret(replaced.value, driver, first, second)

    async def test_deploying_the_same_certificate_again_is_idempotent(self, driver: TargetDriver) -> None:
        bundle = await deployed(driver, driver.bundle(), driver.baseline)
        again = await deploy(driver.target(bundle), bundle)
        assert again.ok and again.verified_serial == bundle.serial and again.attempts == 1, again
        assert await driver.observed() == Installed.of(bundle, carries_key=driver.carries_key)
        # a rollback of the repeated deployment (its verify failed, say) keeps the certificate
        target = driver.target(bundle)
        await target.deploy(bundle)
        await target.rollback(bundle)
        assert await driver.observed() == Installed.of(bundle, carries_key=driver.carries_key)

    async def test_a_new_certificate_replaces_the_old_one(self, driver: TargetDriver) -> None:
        first = await deployed(driver, driver.bundle(), driver.baseline)
        second = await deployed(driver, driver.bundle(), first)
        assert second.serial != first.serial
        await deployed(driver, driver.bundle(), second)

    async def test_a_refused_certificate_is_rolled_back_to_the_previous_one(self, driver: TargetDriver) -> None:
        good = await deployed(driver, driver.bundle(), driver.baseline)
        refused = driver.bundle()
        driver.refuse(refused)
        result = await deploy(driver.target(good), refused)
        error = assert_failed(result, ErrorCode.INSTALL_FAILED, driver, good, refused)
        assert not error.transient and result.attempts == 1, result  # an answered no is not retried
        assert await driver.observed() == Installed.of(good, carries_key=driver.carries_key)
        await deployed(driver, driver.bundle(), good)  # the target still takes the next one

    async def test_a_failure_before_anything_is_installed_keeps_the_current_certificate(self, driver: TargetDriver) -> None:
        first = await deployed(driver, driver.bundle(), driver.baseline)
        current = await deployed(driver, driver.bundle(), first)
        failing = driver.bundle()
        driver.fail_before_install(failing)
        result = await deploy(driver.target(current), failing)
        assert_failed(result, ErrorCode.INSTALL_FAILED, driver, first, current, failing)
        assert result.rolled_back is False and result.attempts == 1, result
        # not the certificate before it: the rollback must not undo a deployment that succeeded
        assert await driver.observed() == Installed.of(current, carries_key=driver.carries_key)

    async def test_a_misconfigured_target_fails_and_changes_nothing(self, driver: TargetDriver) -> None:
        current = await deployed(driver, driver.bundle(), driver.baseline)
        bundle = driver.bundle()
        result = await deploy(driver.misconfigured(current), bundle)
        error = assert_failed(result, ErrorCode.INSTALL_FAILED, driver, current, bundle)
        assert not error.transient and result.attempts == 1 and result.rolled_back is False, result
        assert await driver.observed() == Installed.of(current, carries_key=driver.carries_key)


class RemoteTargetContract:
    """What kinds reached over the network add: a system that does not answer."""

    async def test_an_unreachable_system_is_retried_then_target_unreachable(self, driver: RemoteTargetDriver) -> None:
        current = await deployed(driver, driver.bundle(), driver.baseline)
        bundle = driver.bundle()
        result = await deploy(driver.unreachable(current), bundle, attempts=2)
        error = assert_failed(result, ErrorCode.TARGET_UNREACHABLE, driver, current, bundle)
        assert error.transient and result.attempts == 2 and result.rolled_back is False, result
        assert await driver.observed() == Installed.of(current, carries_key=driver.carries_key)


@dataclass
class WebhookReceiver:
    """A webhook receiver as a real one should be: it installs a bundle only with a valid, fresh
    HMAC-SHA256 signature over the timestamp and the body, and answers the serial it installed.
    ``fail_next``: statuses answered first (5xx, 429); ``refused_serials``: bundles it answers 422."""

    secret: bytes
    fail_next: list[int] = field(default_factory=list)
    refused_serials: set[str] = field(default_factory=set)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def installed(self) -> dict[str, Any] | None:
        """The last deploy or rollback it accepted."""
        with self.lock:
            return self.accepted[-1] if self.accepted else None

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        if self.fail_next:
            return self.fail_next.pop(0), {"error": "try later"}
        timestamp = headers.get("x-certrail-timestamp", "")
        expected = "v1=" + hmac.new(self.secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(headers.get("x-certrail-signature", ""), expected):
            self.refused.append("bad signature")
            return 401, {"error": "bad signature"}
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
            self.refused.append("stale")
            return 401, {"error": "stale"}
        bundle = json.loads(body)
        if bundle["serial"] in self.refused_serials:
            return 422, {"error": "refused"}
        with self.lock:
            self.accepted.append(bundle)
        return 200, {"serial": bundle["serial"]}


@contextmanager
def serve_receiver(receiver: WebhookReceiver, ca: MiniCA, directory: Path) -> Iterator[int]:
    """``receiver`` over HTTPS on 127.0.0.1 (a certificate from ``ca`` for receiver.test and 127.0.0.1,
    its files in ``directory``) while the block runs; its port."""
    certificate, key = ca.leaf(["receiver.test"], ips=("127.0.0.1",))
    (directory / "receiver.pem").write_text(certificate + "".join(ca.chain))
    (directory / "receiver.key").write_bytes(key_pem(key))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["content-length"]))
            status, answer = receiver.handle({k.lower(): v for k, v in self.headers.items()}, body)
            raw = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "receiver.pem", directory / "receiver.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
