"""The webhook target against a local HTTPS receiver (a real TLS server on loopback,
certificate from a test CA) that verifies the HMAC-SHA256 signature over the timestamp
and the body, exactly as a receiver should (tests/target_contract.py's `WebhookReceiver`, the one
the target contract uses); TLS verification stays on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.contracts.errors import ErrorCode
from services.deployer.targets.base import TargetError
from services.deployer.targets.config import WebhookTargetConfig
from services.deployer.targets.webhook import WebhookTarget
from tests.deployer_support import MiniCA
from tests.target_contract import WebhookReceiver, serve_receiver

SECRET = "webhook-secret-" + "x" * 32


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[WebhookReceiver, str, Path, MiniCA]]:
    """The receiver (tests/target_contract.py), its URL, the root its certificate chains to, and its CA."""
    ca, state = MiniCA(), WebhookReceiver(SECRET.encode())
    with serve_receiver(state, ca, tmp_path) as port:
        yield state, f"https://127.0.0.1:{port}/certrail", ca.write_root(tmp_path / "root.pem"), ca


def _target(url: str, ca_file: Path, secret: str = SECRET, **overrides: object) -> WebhookTarget:
    config = WebhookTargetConfig(url=url, ca_file=str(ca_file), backoff_initial_s=0.01, backoff_max_s=0.05, **overrides)  # type: ignore[arg-type]
    return WebhookTarget("hook", config, secret)


async def test_signed_bundle_is_accepted_and_verified(receiver: tuple[WebhookReceiver, str, Path, MiniCA]) -> None:
    state, url, root, ca = receiver
    bundle = ca.bundle("svc/api", ["api.test"])
    target = _target(url, root)
    await target.deploy(bundle)
    assert await target.verify(bundle) == bundle.serial
    (accepted,) = state.accepted
    assert accepted["certificate"] == bundle.certificate_pem and accepted["chain"] == list(bundle.chain_pem)
    assert accepted["action"] == "deploy" and "private_key" not in accepted  # keys only when configured


async def test_private_key_only_when_configured(receiver: tuple[WebhookReceiver, str, Path, MiniCA]) -> None:
    state, url, root, ca = receiver
    bundle = ca.bundle("svc/api", ["api.test"])
    await _target(url, root, include_private_key=True).deploy(bundle)
    assert state.accepted[0]["private_key"].encode() == bundle.private_key_pem


async def test_wrong_secret_is_refused_by_the_receiver(receiver: tuple[WebhookReceiver, str, Path, MiniCA]) -> None:
    state, url, root, ca = receiver
    with pytest.raises(TargetError) as refused:
        await _target(url, root, secret="another-secret-" + "y" * 32).deploy(ca.bundle("svc/api", ["api.test"]))
    assert refused.value.code is ErrorCode.INSTALL_FAILED and "401" in refused.value.message
    assert state.refused == ["bad signature"] and state.accepted == []


async def test_server_errors_are_retried_then_succeed(receiver: tuple[WebhookReceiver, str, Path, MiniCA]) -> None:
    state, url, root, ca = receiver
    state.fail_next = [503, 429]
    bundle = ca.bundle("svc/api", ["api.test"])
    target = _target(url, root, attempts=3)
    await target.deploy(bundle)
    assert await target.verify(bundle) == bundle.serial and len(state.accepted) == 1


async def test_persistent_errors_are_target_unreachable(receiver: tuple[WebhookReceiver, str, Path, MiniCA]) -> None:
    state, url, root, ca = receiver
    state.fail_next = [500, 500]
    with pytest.raises(TargetError) as failed:
        await _target(url, root, attempts=2).deploy(ca.bundle("svc/api", ["api.test"]))
    assert failed.value.code is ErrorCode.TARGET_UNREACHABLE and failed.value.transient


async def test_untrusted_receiver_certificate_is_refused(receiver: tuple[WebhookReceiver, str, Path, MiniCA], tmp_path: Path) -> None:
    state, url, _root, ca = receiver
    other_root = MiniCA().write_root(tmp_path / "other-root.pem")
    with pytest.raises(TargetError) as failed:
        await _target(url, other_root).deploy(ca.bundle("svc/api", ["api.test"]))
    assert failed.value.code is ErrorCode.INSTALL_FAILED and "does not verify" in failed.value.message
    assert state.accepted == []


async def test_rollback_posts_the_previous_bundle(receiver: tuple[WebhookReceiver, str, Path, MiniCA]) -> None:
    state, url, root, ca = receiver
    previous, current = ca.bundle("svc/api", ["api.test"]), ca.bundle("svc/api", ["api.test"])
    target = WebhookTarget("hook", WebhookTargetConfig(url=url, ca_file=str(root)), SECRET, previous=previous)
    await target.deploy(current)
    assert await target.rollback(current) is True
    assert [(b["action"], b["serial"]) for b in state.accepted] == [("deploy", current.serial), ("rollback", previous.serial)]
