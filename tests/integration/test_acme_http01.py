"""http-01 validation (services/gateway/acme/challenges.py) against a real HTTP server on a loopback port:
the standard library's threading server, the way certbot's standalone plugin answers. The policy's static map
names that port's address (acme.test -> 127.0.0.1, loopback allowed) as the tests of issue 22 will with certbot.

Every refusal that must happen before connecting is checked on the server's side: it saw no request."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.common.throwaway_tls import make_throwaway_tls
from services.gateway.acme.challenges import (
    ChallengePolicy,
    ProblemType,
    ValidationResult,
    key_authorization,
    new_token,
    validate_http01,
    validation_client,
)
from tests.conftest import free_ports

THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
PREFIX = "/.well-known/acme-challenge/"


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_length: bool = True
    hold: threading.Event | None = None  # answer only once set (a slow server)


@dataclass
class ChallengeServer:
    port: int
    answers: dict[str, Answer] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)  # (path, Host) of every request
    release: threading.Event = field(default_factory=threading.Event)


def _handler(state: ChallengeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            state.seen.append((self.path, self.headers.get("Host", "")))
            answer = state.answers.get(self.path, Answer(404, b"not here"))
            if answer.hold is not None:
                answer.hold.wait(timeout=60)
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            if answer.content_length:
                self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def serving(state: ChallengeServer, address: str, port: int, tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """Serves ``state`` on ``address``:``port`` (0: any) until the block ends; yields the port."""
    httpd = ThreadingHTTPServer((address, port), _handler(state))
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="challenge-server", daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def server() -> Iterator[ChallengeServer]:
    state = ChallengeServer(port=0)
    with serving(state, "127.0.0.1", 0) as port:
        state.port = port
        yield state


def policy_for(port: int, *, loopback: bool = True, **changes: Any) -> ChallengePolicy:
    return ChallengePolicy.model_validate({
        "http01_port": port,
        "allowed_networks": ["127.0.0.0/8"] if loopback else [],
        "resolve": {"acme.test": "127.0.0.1", "other.test": "127.0.0.1", "private.test": "10.0.0.1",
                    "metadata.test": "169.254.169.254", "mapped.test": "::ffff:192.168.0.1", "secure.test": "127.0.0.2"},
        **changes,
    })


def challenge(server: ChallengeServer, answer: Answer | None = None) -> tuple[str, str]:
    token = new_token()
    expected = key_authorization(token, THUMBPRINT)
    server.answers[PREFIX + token] = answer or Answer(body=expected.encode())
    return token, expected


def problem_of(result: ValidationResult) -> tuple[ProblemType, str]:
    assert result.problem is not None, "the validation succeeded"
    return result.problem.type, result.problem.detail


async def test_the_right_key_authorization_validates(server: ChallengeServer) -> None:
    token, expected = challenge(server)
    result = await validate_http01("acme.test", token, expected, policy_for(server.port))
    assert result.ok
    assert server.seen == [(PREFIX + token, f"acme.test:{server.port}")]
    assert [(r.url, r.address) for r in result.records] == [(f"http://acme.test:{server.port}{PREFIX}{token}", "127.0.0.1")]


async def test_trailing_whitespace_is_ignored_and_a_shared_client_serves_many(server: ChallengeServer) -> None:
    policy = policy_for(server.port)
    async with validation_client(policy) as client:
        for ending in (b"\n", b"\r\n", b" \t\n"):
            token, expected = challenge(server)
            server.answers[PREFIX + token] = Answer(body=expected.encode() + ending)
            assert (await validate_http01("acme.test", token, expected, policy, client=client)).ok


async def test_a_wrong_body_is_unauthorized_and_quoted_only_briefly(server: ChallengeServer) -> None:
    token, expected = challenge(server)
    server.answers[PREFIX + token] = Answer(body=b"WRONG-" + b"s3cr3t" * 500)
    kind, detail = problem_of(await validate_http01("acme.test", token, expected, policy_for(server.port)))
    assert kind is ProblemType.UNAUTHORIZED
    assert '"WRONG-s3cr3t' in detail and detail.count("s3cr3t") < 10 and len(detail) < 400


async def test_another_account_key_is_unauthorized(server: ChallengeServer) -> None:
    token, _ = challenge(server)
    other = key_authorization(token, "A" * 43)
    kind, _detail = problem_of(await validate_http01("acme.test", token, other, policy_for(server.port)))
    assert kind is ProblemType.UNAUTHORIZED


async def test_a_status_other_than_200_is_unauthorized(server: ChallengeServer) -> None:
    token, expected = challenge(server, Answer(500, b"oops"))
    kind, detail = problem_of(await validate_http01("acme.test", token, expected, policy_for(server.port)))
    assert kind is ProblemType.UNAUTHORIZED and "HTTP 500" in detail
    missing = await validate_http01("acme.test", new_token(), expected, policy_for(server.port))
    assert problem_of(missing)[0] is ProblemType.UNAUTHORIZED and "HTTP 404" in problem_of(missing)[1]


async def test_no_listener_is_a_connection_problem() -> None:
    (port,) = free_ports(1)
    token = new_token()
    kind, detail = problem_of(await validate_http01("acme.test", token, key_authorization(token, THUMBPRINT), policy_for(port)))
    assert kind is ProblemType.CONNECTION and f"acme.test:{port}" in detail and "127.0.0.1" in detail


async def test_a_redirect_on_the_same_port_is_followed_with_the_new_host(server: ChallengeServer) -> None:
    token, expected = challenge(server)
    server.answers[PREFIX + token] = Answer(302, headers={"Location": f"http://other.test:{server.port}/moved/{token}"})
    server.answers[f"/moved/{token}"] = Answer(body=expected.encode())
    result = await validate_http01("acme.test", token, expected, policy_for(server.port))
    assert result.ok and len(result.records) == 2
    assert server.seen == [(PREFIX + token, f"acme.test:{server.port}"), (f"/moved/{token}", f"other.test:{server.port}")]


async def test_a_relative_redirect_is_followed(server: ChallengeServer) -> None:
    token, expected = challenge(server)
    server.answers[PREFIX + token] = Answer(301, headers={"Location": f"/elsewhere/{token}"})
    server.answers[f"/elsewhere/{token}"] = Answer(body=expected.encode())
    assert (await validate_http01("acme.test", token, expected, policy_for(server.port))).ok


@pytest.mark.parametrize(("location", "address"), [
    ("http://private.test:{port}/x", "10.0.0.1"),
    ("http://metadata.test/latest/meta-data/", "169.254.169.254"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
    ("http://[::ffff:169.254.169.254]/latest/meta-data/", "::ffff:a9fe:a9fe"),
    ("https://mapped.test/x", "::ffff:c0a8:1"),
])
async def test_a_redirect_to_a_denied_address_is_refused_before_connecting(server: ChallengeServer, location: str,
                                                                           address: str) -> None:
    token, expected = challenge(server)
    server.answers[PREFIX + token] = Answer(302, headers={"Location": location.format(port=server.port)})
    kind, detail = problem_of(await validate_http01("acme.test", token, expected, policy_for(server.port)))
    assert kind is ProblemType.CONNECTION and address in detail and "nothing was connected to" in detail
    assert len(server.seen) == 1


@pytest.mark.parametrize(("location", "why"), [
    ("http://other.test:22/x", "port 22"), ("ftp://other.test/x", "only http and https"),
    ("http://user:pw@other.test/x", "credentials"), ("http://a_b.test/x", "invalid host"), ("", "without a Location"),
    ("http://unknown.test/x", "not in the static resolve map"),
])
async def test_redirects_only_go_to_http_on_the_allowed_ports(server: ChallengeServer, location: str, why: str) -> None:
    token, expected = challenge(server)
    server.answers[PREFIX + token] = Answer(307, headers={"Location": location} if location else {})
    kind, detail = problem_of(await validate_http01("acme.test", token, expected, policy_for(server.port)))
    assert kind in (ProblemType.CONNECTION, ProblemType.DNS) and why in detail
    assert len(server.seen) == 1


async def test_a_redirect_loop_ends_after_ten_redirects(server: ChallengeServer) -> None:
    token, expected = challenge(server)
    server.answers[PREFIX + token] = Answer(302, headers={"Location": PREFIX + token})
    result = await validate_http01("acme.test", token, expected, policy_for(server.port))
    kind, detail = problem_of(result)
    assert kind is ProblemType.CONNECTION and "more than 10 redirects" in detail
    assert len(server.seen) == 11 and len(result.records) == 11


@pytest.mark.parametrize("content_length", [True, False])
async def test_an_oversized_body_is_refused(server: ChallengeServer, content_length: bool) -> None:
    token, expected = challenge(server)
    server.answers[PREFIX + token] = Answer(body=expected.encode() + b" " * 100_000, content_length=content_length)
    kind, detail = problem_of(await validate_http01("acme.test", token, expected, policy_for(server.port, max_body_bytes=1024)))
    assert kind is ProblemType.INCORRECT_RESPONSE and "more than 1024 bytes" in detail


async def test_a_slow_server_is_cut_at_the_deadline(server: ChallengeServer) -> None:
    token, expected = challenge(server)
    server.answers[PREFIX + token] = Answer(body=expected.encode(), hold=server.release)
    started = time.monotonic()
    kind, detail = problem_of(await validate_http01("acme.test", token, expected, policy_for(server.port, timeout_s=1.0)))
    elapsed = time.monotonic() - started
    assert kind is ProblemType.CONNECTION and "within 1 s" in detail
    assert 0.9 <= elapsed < 4, elapsed


async def test_the_deadline_covers_the_whole_redirect_chain(server: ChallengeServer) -> None:
    token, expected = challenge(server)
    server.answers[PREFIX + token] = Answer(302, headers={"Location": f"/slow/{token}"})
    server.answers[f"/slow/{token}"] = Answer(body=expected.encode(), hold=server.release)
    started = time.monotonic()
    kind, _detail = problem_of(await validate_http01("acme.test", token, expected, policy_for(server.port, timeout_s=1.0)))
    assert kind is ProblemType.CONNECTION and time.monotonic() - started < 4
    assert len(server.seen) == 2


async def test_a_static_name_on_loopback_needs_loopback_allowed(server: ChallengeServer) -> None:
    token, expected = challenge(server)
    allowed = await validate_http01("acme.test", token, expected, policy_for(server.port, loopback=True))
    assert allowed.ok and len(server.seen) == 1

    denied = await validate_http01("acme.test", token, expected, policy_for(server.port, loopback=False))
    kind, detail = problem_of(denied)
    assert kind is ProblemType.REJECTED_IDENTIFIER and "127.0.0.1" in detail and "127.0.0.0/8" in detail
    assert len(server.seen) == 1 and denied.records == ()  # no second request reached the server


async def test_names_are_resolved_only_by_the_static_map_when_it_is_set(server: ChallengeServer) -> None:
    token, expected = challenge(server)
    kind, detail = problem_of(await validate_http01("localhost", token, expected, policy_for(server.port)))
    assert kind is ProblemType.DNS and "static resolve map" in detail
    assert server.seen == []


async def test_the_system_resolver_answer_is_checked_too(server: ChallengeServer) -> None:
    """Without a static map, ``localhost`` goes through getaddrinfo: loopback, denied by default."""
    token, expected = challenge(server)
    policy = ChallengePolicy(http01_port=server.port)
    kind, detail = problem_of(await validate_http01("localhost", token, expected, policy))
    assert kind is ProblemType.REJECTED_IDENTIFIER and "localhost" in detail
    assert server.seen == []
    allowed = ChallengePolicy.model_validate({"http01_port": server.port, "allowed_networks": ["127.0.0.0/8", "::1/128"]})
    assert (await validate_http01("localhost", token, expected, allowed)).ok


async def test_an_ip_identifier_is_validated_at_its_address(server: ChallengeServer) -> None:
    token, expected = challenge(server)
    assert (await validate_http01("127.0.0.1", token, expected, policy_for(server.port))).ok
    assert server.seen == [(PREFIX + token, f"127.0.0.1:{server.port}")]


async def test_a_redirect_to_https_sends_the_name_as_sni_and_host(server: ChallengeServer, tmp_path: Path) -> None:
    """The https leg: connected to the checked address, the name in SNI and Host, the certificate not verified
    (the key authorization is the proof). The TLS server listens on 127.0.0.2 at the http-01 port number."""
    _ca, key_and_chain = make_throwaway_tls({"secure.test"})
    (tmp_path / "chain.pem").write_text(key_and_chain)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "chain.pem")
    names: list[str | None] = []

    def remember(_socket: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        names.append(name)

    tls.sni_callback = remember
    secure = ChallengeServer(port=server.port)
    token, expected = challenge(server)
    server.answers[PREFIX + token] = Answer(302, headers={"Location": f"https://secure.test:{server.port}/tls/{token}"})
    secure.answers[f"/tls/{token}"] = Answer(body=expected.encode())
    with serving(secure, "127.0.0.2", server.port, tls):
        result = await validate_http01("acme.test", token, expected, policy_for(server.port))
    assert result.ok, result.problem
    assert names == ["secure.test"] and secure.seen == [(f"/tls/{token}", f"secure.test:{server.port}")]
    assert result.records[-1].address == "127.0.0.2"
