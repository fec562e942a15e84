"""The webhook target against a local HTTPS receiver (a real TLS server on loopback,
certificate from a test CA) that verifies the HMAC-SHA256 signature over the timestamp
and the body, exactly as a receiver should; TLS verification stays on."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.common.contracts.errors import ErrorCode
from services.deployer.targets.base import TargetError
from services.deployer.targets.config import WebhookTargetConfig
from services.deployer.targets.webhook import WebhookTarget
from tests.deployer_support import MiniCA, key_pem

SECRET = "webhook-secret-" + "x" * 32


@dataclass
class Receiver:
    """Accepts a bundle only with a valid, fresh signature; answers the serial it installed."""

    secret: bytes
    fail_next: list[int] = field(default_factory=list)  # status codes to answer before accepting
    accepted: list[dict] = field(default_factory=list)  # type: ignore[type-arg]
    refused: list[str] = field(default_factory=list)

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, dict]:  # type: ignore[type-arg]
        if self.fail_next:
            return self.fail_next.pop(0), {"error": "try later"}
        timestamp = headers.get("x-certrail-timestamp", "")
        given = headers.get("x-certrail-signature", "")
        expected = "v1=" + hmac.new(self.secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given, expected):
            self.refused.append("bad signature")
            return 401, {"error": "bad signature"}
        if abs(time.time() - int(timestamp)) > 300:
            self.refused.append("stale")
            return 401, {"error": "stale"}
        bundle = json.loads(body)
        self.accepted.append(bundle)
        return 200, {"serial": bundle["serial"]}


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Receiver, str, Path, MiniCA]]:
    ca = MiniCA()
    certificate, key = ca.leaf(["receiver.test"], ips=("127.0.0.1",))
    (tmp_path / "server.pem").write_text(certificate + "".join(ca.chain))
    (tmp_path / "server.key").write_bytes(key_pem(key))
    state = Receiver(SECRET.encode())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["content-length"]))
            status, answer = state.handle({k.lower(): v for k, v in self.headers.items()}, body)
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
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"https://127.0.0.1:{server.server_address[1]}/certrail", ca.write_root(tmp_path / "root.pem"), ca
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _target(url: str, ca_file: Path, secret: str = SECRET, **overrides: object) -> WebhookTarget:
    config = WebhookTargetConfig(url=url, ca_file=str(ca_file), backoff_initial_s=0.01, backoff_max_s=0.05, **overrides)  # type: ignore[arg-type]
    return WebhookTarget("hook", config, secret)


async def test_signed_bundle_is_accepted_and_verified(receiver: tuple[Receiver, str, Path, MiniCA]) -> None:
    state, url, root, ca = receiver
    bundle = ca.bundle("svc/api", ["api.test"])
    target = _target(url, root)
    await target.deploy(bundle)
    assert await target.verify(bundle) == bundle.serial
    (accepted,) = state.accepted
    assert accepted["certificate"] == bundle.certificate_pem and accepted["chain"] == list(bundle.chain_pem)
    assert accepted["action"] == "deploy" and "private_key" not in accepted  # keys only when configured


async def test_private_key_only_when_configured(receiver: tuple[Receiver, str, Path, MiniCA]) -> None:
    state, url, root, ca = receiver
    bundle = ca.bundle("svc/api", ["api.test"])
    await _target(url, root, include_private_key=True).deploy(bundle)
    assert state.accepted[0]["private_key"].encode() == bundle.private_key_pem


async def test_wrong_secret_is_refused_by_the_receiver(receiver: tuple[Receiver, str, Path, MiniCA]) -> None:
    state, url, root, ca = receiver
    with pytest.raises(TargetError) as refused:
        await _target(url, root, secret="another-secret-" + "y" * 32).deploy(ca.bundle("svc/api", ["api.test"]))
    assert refused.value.code is ErrorCode.INSTALL_FAILED and "401" in refused.value.message
    assert state.refused == ["bad signature"] and state.accepted == []


async def test_server_errors_are_retried_then_succeed(receiver: tuple[Receiver, str, Path, MiniCA]) -> None:
    state, url, root, ca = receiver
    state.fail_next = [503, 429]
    bundle = ca.bundle("svc/api", ["api.test"])
    target = _target(url, root, attempts=3)
    await target.deploy(bundle)
    assert await target.verify(bundle) == bundle.serial and len(state.accepted) == 1


async def test_persistent_errors_are_target_unreachable(receiver: tuple[Receiver, str, Path, MiniCA]) -> None:
    state, url, root, ca = receiver
    state.fail_next = [500, 500]
    with pytest.raises(TargetError) as failed:
        await _target(url, root, attempts=2).deploy(ca.bundle("svc/api", ["api.test"]))
    assert failed.value.code is ErrorCode.TARGET_UNREACHABLE and failed.value.transient


async def test_untrusted_receiver_certificate_is_refused(receiver: tuple[Receiver, str, Path, MiniCA], tmp_path: Path) -> None:
    state, url, _root, ca = receiver
    other_root = MiniCA().write_root(tmp_path / "other-root.pem")
    with pytest.raises(TargetError) as failed:
        await _target(url, other_root).deploy(ca.bundle("svc/api", ["api.test"]))
    assert failed.value.code is ErrorCode.INSTALL_FAILED and "does not verify" in failed.value.message
    assert state.accepted == []


async def test_rollback_posts_the_previous_bundle(receiver: tuple[Receiver, str, Path, MiniCA]) -> None:
    state, url, root, ca = receiver
    previous, current = ca.bundle("svc/api", ["api.test"]), ca.bundle("svc/api", ["api.test"])
    target = WebhookTarget("hook", WebhookTargetConfig(url=url, ca_file=str(root)), SECRET, previous=previous)
    await target.deploy(current)
    assert await target.rollback(current) is True
    assert [(b["action"], b["serial"]) for b in state.accepted] == [("deploy", current.serial), ("rollback", previous.serial)]
