"""The internal API's shared parts (services/common/internal_api.py, decision 0020): the token file, the
bearer comparison, the path split between the internal app and the service app, and the client's
failures (each one `InternalUnavailable`, never the token in a log)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from services.common.internal_api import (
    InternalApiSettings,
    InternalClient,
    InternalUnavailable,
    configured_token,
    ensure_token_file,
    load_token,
    mount_internal,
    presented_token,
    token_matches,
)

TOKEN = SecretStr("t" * 40)


def test_the_token_file_is_created_once_owner_only(tmp_path: Path) -> None:
    path = ensure_token_file(tmp_path / "secrets" / "internal-api.token")
    first = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.strip()) >= 32
    assert ensure_token_file(path).read_text() == first  # never replaced: running services keep theirs
    loaded = load_token(path)
    assert loaded is not None and loaded.get_secret_value() == first.strip()


def test_a_missing_or_short_token_file_gives_no_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert load_token(tmp_path / "absent") is None
    short = tmp_path / "short"
    short.write_text("tiny-secret\n")
    with caplog.at_level(logging.WARNING):
        assert load_token(short) is None
    assert "tiny-secret" not in caplog.text


def test_a_token_value_wins_over_the_file(tmp_path: Path) -> None:
    path = ensure_token_file(tmp_path / "internal-api.token")
    from_file = configured_token(InternalApiSettings(token_file=path))
    assert from_file is not None and from_file.get_secret_value() == path.read_text().strip()
    given = configured_token(InternalApiSettings(token=SecretStr(" " + "v" * 40 + "\n"), token_file=path))
    assert given is not None and given.get_secret_value() == "v" * 40
    assert configured_token(InternalApiSettings(token=SecretStr("short"), token_file=path)) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("", None), ("Bearer ", None), ("Basic abc", None), ("Bearer abc", "abc"), ("bearer  abc ", "abc")],
)
def test_presented_token(header: str | None, expected: str | None) -> None:
    assert presented_token(header) == expected


def test_token_matches() -> None:
    assert token_matches(TOKEN, "t" * 40)
    assert not token_matches(TOKEN, "t" * 39)
    assert not token_matches(TOKEN, None)
    assert not token_matches(None, "t" * 40)  # nothing configured: nothing matches


async def test_only_internal_paths_reach_the_internal_app() -> None:
    reached: list[tuple[str, str]] = []

    def app_named(name: str) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            reached.append((name, scope["path"]))
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        return app

    mounted = mount_internal(app_named("service"), app_named("internal"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mounted), base_url="http://svc") as client:
        for path in ("/health", "/metrics", "/internal/v1/certificates", "/internalx", "/v1/internal/"):
            await client.get(path)
    assert reached == [("service", "/health"), ("service", "/metrics"), ("internal", "/internal/v1/certificates"),
                       ("service", "/internalx"), ("service", "/v1/internal/")]


def answering(status: int, body: bytes = b"{}") -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, content=body, request=request))


@pytest.mark.parametrize(("status", "body", "expected"), [(200, b'{"a": 1}', {"a": 1}), (404, b"{}", None)])
async def test_client_answers(status: int, body: bytes, expected: Any) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=body, request=request)

    client = InternalClient("http://svc", TOKEN, transport=httpx.MockTransport(handler))
    try:
        assert await client.get_json("/internal/v1/x", {"a": ["1", "2"]}) == expected
    finally:
        await client.aclose()
    assert seen[0].headers["authorization"] == f"Bearer {TOKEN.get_secret_value()}"
    assert seen[0].url.query == b"a=1&a=2"


@pytest.mark.parametrize("status", [401, 500, 503])
async def test_client_failures_are_unavailable_and_never_log_the_token(status: int, caplog: pytest.LogCaptureFixture) -> None:
    client = InternalClient("http://svc", TOKEN, transport=answering(status), service="auditor")
    with caplog.at_level(logging.DEBUG), pytest.raises(InternalUnavailable) as raised:
        await client.get_json("/internal/v1/x")
    await client.aclose()
    assert "auditor" in str(raised.value) and TOKEN.get_secret_value() not in str(raised.value)
    assert TOKEN.get_secret_value() not in caplog.text


async def test_client_not_json_and_no_token_are_unavailable() -> None:
    client = InternalClient("http://svc", TOKEN, transport=answering(200, b"<html>"))
    with pytest.raises(InternalUnavailable, match="not JSON"):
        await client.get_json("/internal/v1/x")
    await client.aclose()
    with pytest.raises(InternalUnavailable, match="no internal API token"):
        await InternalClient("http://svc", None, transport=answering(200)).get_json("/internal/v1/x")
