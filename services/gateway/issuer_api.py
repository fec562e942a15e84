"""The gateway's client of the issuer's internal API (decision 0020): possible duplicate issuances
(services/issuer/duplicates/internal_api.py). The gateway authorises (its tokens) and names the actor
(``X-Certrail-Actor``); the issuer checks, revokes at emCA, stores and records.

A 2xx is the body; a problem ``{"code", "message"}`` with a 4xx, or a 503 the issuer answered itself (emCA
unreachable), is `IssuerRefused` (passed on with its code and status); everything else (refused connection,
timeout, 401: the issuer refuses this service's token, an answer off the contract) is `IssuerUnavailable`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from services.common.internal_api import Endpoint, InternalUnavailable, LazyFailover, endpoint_from
from services.common.internal_failover import FailoverClient

log = logging.getLogger(__name__)

ACTOR_HEADER = "X-Certrail-Actor"
MAX_MESSAGE_CHARS = 2000
#: resolving revokes at emCA: longer than a read
RESOLVE_TIMEOUT_S = 60.0


class IssuerUnavailable(InternalUnavailable):
    """The issuer gave no usable answer."""


class IssuerRefused(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def answer_of(response: httpx.Response) -> Any:
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if 200 <= status < 300 and isinstance(body, dict):
        return body
    if status == 401:
        raise IssuerUnavailable("the issuer refused this service's internal token")
    problem = body if isinstance(body, dict) else {}
    code, message = problem.get("code"), problem.get("message")
    if (400 <= status < 500 or status == 503) and isinstance(code, str) and code and isinstance(message, str):
        if code in ("NOT_FOUND", "METHOD_NOT_ALLOWED") or problem.get("detail") is not None:
            raise IssuerUnavailable(f"the issuer does not serve this call ({status})")
        raise IssuerRefused(status, code[:100], message[:MAX_MESSAGE_CHARS], response.headers.get("retry-after"))
    raise IssuerUnavailable(f"the issuer answered {status}")


class IssuerApi:
    """``endpoint``: an `Endpoint`, or a function that makes one at the first call (the token file is read then);
    ``transport``: tests' in-process issuer."""

    def __init__(self, endpoint: Endpoint | Callable[[], Endpoint], transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._lazy = LazyFailover(endpoint, transport, service="issuer", unavailable=IssuerUnavailable)

    @classmethod
    def from_settings(cls, settings: Any, transport: httpx.AsyncBaseTransport | None = None) -> IssuerApi:
        """From GatewaySettings (``issuer_url``, ``internal``), read at the first call."""

        return cls(lambda: endpoint_from(settings, settings.issuer_url), transport)

    def _http(self) -> FailoverClient:
        return self._lazy.client()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http().request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            log.warning("internal call to the issuer failed: %s %s: %s", method, path, type(exc).__name__)
            raise IssuerUnavailable(f"the issuer did not answer ({type(exc).__name__})") from None
        return answer_of(response)

    async def duplicates(self, state: str, certificate_id: str | None = None) -> list[dict[str, Any]]:
        params = {"state": state, **({"certificate_id": certificate_id} if certificate_id else {})}
        body = await self._call("GET", "/internal/v1/duplicates", params=params)
        found = body.get("duplicates")
        if not isinstance(found, list) or not all(isinstance(d, dict) for d in found):
            raise IssuerUnavailable("the issuer's duplicates do not fit the contract")
        return found

    async def resolve(self, certificate_id: str, body: dict[str, Any], actor: str) -> dict[str, Any]:
        answer = await self._call("POST", f"/internal/v1/duplicates/{quote(certificate_id, safe='')}/resolve", json=body,
                                  headers={ACTOR_HEADER: actor}, timeout=RESOLVE_TIMEOUT_S)
        duplicate = answer.get("duplicate")
        if not isinstance(duplicate, dict):
            raise IssuerUnavailable("the issuer's resolution does not fit the contract")
        return duplicate

    async def aclose(self) -> None:
        await self._lazy.aclose()
