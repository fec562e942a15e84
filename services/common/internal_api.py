"""Services calling each other's HTTP API (decision 0020).

Each service's HTTP port (the one serving ``/health`` and ``/metrics``) also serves ``/internal/v1/...``
(`mount_internal`). Every internal route requires ``Authorization: Bearer <internal token>``
(`require_token`): compared in constant time with the token read from a file
(``CERTRAIL_INTERNAL_TOKEN_FILE``; ``certrail up`` creates one, `ensure_token_file`; or the value itself in
``CERTRAIL_INTERNAL_TOKEN``, `configured_token`). A request without it
or with a wrong one is answered 401 UNAUTHENTICATED and logged without the header. The token is never
logged, answered or put in an event.

`InternalClient` is the caller's side: pooled httpx clients with timeouts and the bearer header (TLS
verification on for https URLs), one per instance of the service it calls when its base URL lists several
(comma-separated; a call goes to the next instance when one gives no answer: services/common/internal_failover.py,
decision 0031). Every failure to get an answer (refused, timeout, 5xx, 401: a token mismatch is a
misconfiguration) is one `InternalUnavailable`; a 404 is `None`.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import Request
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.responses import JSONResponse

from services.common.contracts.errors import ErrorCode
from services.common.internal_failover import FailoverClient, base_urls

INTERNAL_PREFIX = "/internal/"
#: the shortest token accepted from a file (``certrail up`` writes 43 characters)
MIN_TOKEN_CHARS = 32

log = logging.getLogger(__name__)

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


class InternalApiSettings(BaseSettings):
    """The internal token and the client's limits (env prefix ``CERTRAIL_INTERNAL_``)."""

    model_config = SettingsConfigDict(env_prefix="CERTRAIL_INTERNAL_", extra="forbid")

    token: SecretStr | None = Field(default=None, description="The shared bearer token of /internal/v1 (32+ characters); "
                                    "when unset, read from `token_file`.")
    token_file: Path = Field(default=Path("var/internal-api.token"),
                             description="The shared bearer token of /internal/v1 (one line); `certrail up` creates it, 0600.")
    timeout_s: float = Field(default=5.0, gt=0, le=120, description="Connect/read timeout of one internal call.")
    max_connections: int = Field(default=16, ge=1, le=1000, description="Pooled connections to one service.")


def configured_token(settings: InternalApiSettings) -> SecretStr | None:
    """``settings.token`` when set (None, logged, when too short), else the token in ``settings.token_file``."""
    if settings.token is None:
        return load_token(settings.token_file)
    if len(settings.token.get_secret_value().strip()) < MIN_TOKEN_CHARS:
        log.error("CERTRAIL_INTERNAL_TOKEN is shorter than %d characters: not used", MIN_TOKEN_CHARS)
        return None
    return SecretStr(settings.token.get_secret_value().strip())


def load_token(path: Path) -> SecretStr | None:
    """The token in ``path`` (stripped), or None (logged, without the content) when it is missing or too short."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        log.warning("no internal API token file at %s: /internal/v1 calls are refused (set CERTRAIL_INTERNAL_TOKEN_FILE)", path)
        return None
    if len(text) < MIN_TOKEN_CHARS:
        log.error("the internal API token in %s is shorter than %d characters: not used", path, MIN_TOKEN_CHARS)
        return None
    return SecretStr(text)


def ensure_token_file(path: Path) -> Path:
    """Create ``path`` with a new random token (mode 0600) unless it exists; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    return path


class InternalAuthError(Exception):
    """An internal request without the right bearer token (answered 401 by `unauthenticated`)."""


def presented_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return (value.strip() or None) if scheme.lower() == "bearer" else None


def token_matches(expected: SecretStr | None, presented: str | None) -> bool:
    """Constant-time comparison; nothing matches when no token is configured."""
    if expected is None or presented is None:
        return False
    return hmac.compare_digest(expected.get_secret_value().encode(), presented.encode())


def require_token(expected: SecretStr | None) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency: raises `InternalAuthError` unless the request carries ``expected``."""

    async def check(request: Request) -> None:
        presented = presented_token(request.headers.get("authorization"))
        if token_matches(expected, presented):
            return
        reason = "no internal token configured" if expected is None else ("no bearer token" if presented is None
                                                                           else "a wrong bearer token")
        client = request.client.host if request.client is not None else "?"
        log.warning("internal API: refused %s %s from %s: %s", request.method, request.url.path, client, reason)
        raise InternalAuthError(reason)

    return check


def unauthenticated(_: Request, error: InternalAuthError) -> JSONResponse:
    """The 401 answer of every refused internal request (the reason, never the presented value)."""
    return JSONResponse({"code": ErrorCode.UNAUTHENTICATED.value, "message": f"internal API: {error}"}, status_code=401,
                        headers={"WWW-Authenticate": "Bearer"})


def mount_internal(service_app: ASGIApp, internal_app: ASGIApp) -> ASGIApp:
    """One ASGI app: ``/internal/...`` to ``internal_app``, everything else (``/health``, ``/metrics``, the
    lifespan) to ``service_app``."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(INTERNAL_PREFIX):
            await internal_app(scope, receive, send)
        else:
            await service_app(scope, receive, send)

    return app


class InternalUnavailable(Exception):
    """The other service gave no usable answer (the message says why; it never holds the token)."""


@dataclass(frozen=True)
class Endpoint:
    """Where a service's internal API is (one base URL, or its instances', comma-separated or as a sequence: a call
    goes to the next when one gives no answer, decision 0031) and how to call it."""

    base_url: str | Sequence[str]
    token: SecretStr | None = field(repr=False)
    timeout_s: float = 5.0
    max_connections: int = 16


class LazyFailover:
    """The `FailoverClient` of one service's instances, made at the first call (inside the running event loop) from
    ``endpoint``: an `Endpoint`, or a function that makes one then (the token file is read at that moment).
    ``unavailable``: what is raised when no token is configured; ``transport``: tests' in-process service."""

    def __init__(self, endpoint: Endpoint | Callable[[], Endpoint], transport: httpx.AsyncBaseTransport | None, *,
                 service: str, unavailable: type[InternalUnavailable]) -> None:
        self._endpoint = endpoint
        self._transport = transport
        self._service = service
        self._unavailable = unavailable
        self._client: FailoverClient | None = None

    def client(self) -> FailoverClient:
        if self._client is None:
            endpoint = self._endpoint if isinstance(self._endpoint, Endpoint) else self._endpoint()
            if endpoint.token is None:
                raise self._unavailable(f"no internal API token is configured for calls to the {self._service}")
            self._client = FailoverClient(base_urls(endpoint.base_url), timeout_s=endpoint.timeout_s,
                                          max_connections=endpoint.max_connections, transport=self._transport,
                                          headers={"Authorization": f"Bearer {endpoint.token.get_secret_value()}"},
                                          service=self._service)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def endpoint_from(settings: Any, base_url: str | Sequence[str]) -> Endpoint:
    """The `Endpoint` of ``base_url`` with a service's ``internal`` settings (token, timeout, connections)."""
    internal = settings.internal
    return Endpoint(base_url, configured_token(internal), internal.timeout_s, internal.max_connections)


class InternalClient:
    """GETs JSON from another service's ``/internal/v1``, at ``base_url`` (one URL, or several instances'
    comma-separated or as a sequence, decision 0031); the httpx clients are made at the first call (inside the
    running event loop) and closed by `aclose`."""

    def __init__(self, base_url: str | Sequence[str], token: SecretStr | None, *, timeout_s: float = 5.0,
                 max_connections: int = 16, transport: httpx.AsyncBaseTransport | None = None,
                 service: str = "service") -> None:
        self.base_urls = base_urls(base_url)
        self.base_url = self.base_urls[0]
        self.service = service
        self._token = token
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._transport = transport
        self._client: FailoverClient | None = None

    def _http(self) -> FailoverClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"} if self._token is not None else {}
            self._client = FailoverClient(self.base_urls, headers=headers, timeout_s=self._timeout_s,
                                          max_connections=self._max_connections, transport=self._transport,
                                          service=self.service)
        return self._client

    async def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """The JSON answer of ``GET path``; None on 404; `InternalUnavailable` on anything else but 200."""
        if self._token is None:
            raise InternalUnavailable(f"no internal API token is configured for calls to the {self.service}")
        try:
            answer = await self._http().request("GET", path, params=params)
        except httpx.HTTPError as exc:  # refused, timeout, protocol: the message names no header
            log.warning("internal call to the %s failed: GET %s: %s", self.service, path, type(exc).__name__)
            raise InternalUnavailable(f"the {self.service} did not answer ({type(exc).__name__})") from None
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            level = logging.ERROR if answer.status_code == 401 else logging.WARNING
            log.log(level, "internal call to the %s: GET %s answered %d", self.service, path, answer.status_code)
            why = "refused this service's internal token" if answer.status_code == 401 else f"answered {answer.status_code}"
            raise InternalUnavailable(f"the {self.service} {why}")
        try:
            return answer.json()
        except ValueError:
            raise InternalUnavailable(f"the {self.service} answered something that is not JSON") from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
