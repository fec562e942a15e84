"""The gateway's client of the issuer's internal API (decision 0020): possible duplicate issuances
(services/issuer/duplicates/internal_api.py) and the emCA connector registry (services/issuer/registry/
internal_api.py, decision 0034). The gateway authorises (its tokens) and names the actor (``X-Certrail-Actor``);
the issuer checks, validates at emCA, revokes, stores and records.

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
#: a connector change validates against emCA (several calls) and may create a topic
CONNECTOR_CHANGE_TIMEOUT_S = 120.0
CONNECTORS = "/internal/v1/connectors"


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

    # -- the connector registry (decision 0034) ---------------------------------------------------------------

    @staticmethod
    def _part(body: Any, name: str, kind: type) -> Any:
        part = body.get(name)
        if not isinstance(part, kind):
            raise IssuerUnavailable(f"the issuer's connector answer does not fit the contract ({name})")
        return part

    async def _change(self, method: str, path: str, actor: str, json: Any = None) -> dict[str, Any]:
        body: dict[str, Any] = await self._call(method, path, json=json, headers={ACTOR_HEADER: actor},
                                                timeout=CONNECTOR_CHANGE_TIMEOUT_S)
        return body

    async def connectors(self) -> list[dict[str, Any]]:
        found = self._part(await self._call("GET", CONNECTORS), "connectors", list)
        if not all(isinstance(c, dict) for c in found):
            raise IssuerUnavailable("the issuer's connectors do not fit the contract")
        return found

    async def connector(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self._part(await self._call("GET", f"{CONNECTORS}/{quote(name, safe='')}"), "connector", dict)
        return found

    async def create_connector(self, spec: dict[str, Any], actor: str) -> dict[str, Any]:
        """``{"connector", "change"}`` (``spec``: models.spec_to_wire)."""
        answer = await self._change("POST", CONNECTORS, actor, spec)
        self._part(answer, "connector", dict)
        self._part(answer, "change", dict)
        return answer

    async def update_connector(self, name: str, edit: dict[str, Any], actor: str) -> dict[str, Any]:
        answer = await self._change("PATCH", f"{CONNECTORS}/{quote(name, safe='')}", actor, edit)
        self._part(answer, "connector", dict)
        self._part(answer, "change", dict)
        return answer

    async def activate_connector(self, name: str, actor: str) -> dict[str, Any]:
        """``{"connector", "events"}``."""
        answer = await self._change("POST", f"{CONNECTORS}/{quote(name, safe='')}/activate", actor)
        self._part(answer, "connector", dict)
        return answer

    async def deactivate_connector(self, name: str, reason: str | None, actor: str) -> dict[str, Any]:
        """``{"connector", "events"}``."""
        answer = await self._change("POST", f"{CONNECTORS}/{quote(name, safe='')}/deactivate", actor, {"reason": reason})
        self._part(answer, "connector", dict)
        return answer

    async def test_connector(self, name: str, actor: str) -> dict[str, Any]:
        answer = await self._change("POST", f"{CONNECTORS}/{quote(name, safe='')}/test", actor)
        self._part(answer, "connector", dict)
        self._part(answer, "checks", list)
        return answer

    async def delete_connector(self, name: str, actor: str) -> dict[str, Any]:
        """``{"deleted", "events"}``."""
        return await self._change("DELETE", f"{CONNECTORS}/{quote(name, safe='')}", actor)

    async def rotate_connector_secrets(self, actor: str) -> dict[str, Any]:
        return await self._change("POST", f"{CONNECTORS}/rotate-secrets", actor)

    async def connector_refused(self, action: str, connector: str, code: str, message: str, change: dict[str, Any] | None,
                                actor: str) -> None:
        """Report a change refused at the gateway's door, for the issuer to record as its admin event."""
        await self._call("POST", f"{CONNECTORS}/refusals", headers={ACTOR_HEADER: actor},
                         json={"action": action, "connector": connector[:300], "code": code[:100],
                               "message": (message or "refused")[:2000], "change": change or {}})

    async def aclose(self) -> None:
        await self._lazy.aclose()
