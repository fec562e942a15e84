"""The gateway's client of the deployer's internal API (decision 0020): deployment targets and their
bindings to provisioning profiles (services/deployer/internal_api.py). The gateway authorises (its tokens)
and names the actor (``X-Certrail-Actor``); the deployer validates, probes, stores and records.

`answer_of` classifies one answer: 2xx is the body; a 4xx problem ``{"code", "message"}`` is
`DeployerRefused` (passed on with its code and status); everything else (refused connection, timeout,
5xx, 401: the deployer refuses this service's token, a 4xx without a problem, an answer off the
contract) is `DeployerUnavailable` (the API answers it 503). Views are rebuilt from their known fields:
secret names only, never a value."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from services.common.internal_api import Endpoint, InternalUnavailable, LazyFailover, endpoint_from
from services.common.internal_failover import FailoverClient

log = logging.getLogger(__name__)

ACTOR_HEADER = "X-Certrail-Actor"
#: the longest message of the deployer's passed on
MAX_MESSAGE_CHARS = 2000


class DeployerUnavailable(InternalUnavailable):
    """The deployer gave no usable answer."""


class DeployerRefused(Exception):
    """The deployer refused the call (a 4xx problem): passed on with its code and status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Answered:
    status: int
    body: Any


def answer_of(status: int, body: Any) -> Answered:
    """One answer of the deployer's: `Answered` (2xx), `DeployerRefused` (a 4xx problem) or
    `DeployerUnavailable` (anything else)."""
    if 200 <= status < 300:
        return Answered(status, body)
    if status == 401:
        raise DeployerUnavailable("the deployer refused this service's internal token")
    problem = body if isinstance(body, dict) else {}
    code, message = problem.get("code"), problem.get("message")
    if 400 <= status < 500 and isinstance(code, str) and code and isinstance(message, str):
        if code in ("NOT_FOUND", "METHOD_NOT_ALLOWED"):  # no such route: a deployer of another version
            raise DeployerUnavailable(f"the deployer does not serve this call ({status} {code})")
        raise DeployerRefused(status, code[:100], message[:MAX_MESSAGE_CHARS])
    raise DeployerUnavailable(f"the deployer answered {status}")


def _seg(value: str) -> str:
    return quote(value, safe="")


def view_of(body: Any) -> dict[str, Any]:
    """A target's view from the deployer's, with its known fields only."""
    if not isinstance(body, dict) or not isinstance(body.get("config"), dict):
        raise DeployerUnavailable("the deployer's target does not fit the contract")
    secrets, profiles = body.get("secrets"), body.get("profiles")
    if not isinstance(secrets, list) or not isinstance(profiles, list):
        raise DeployerUnavailable("the deployer's target does not fit the contract")
    return {"name": str(body.get("name")), "kind": str(body.get("kind")), "config": body["config"],
            "secrets": [str(s) for s in secrets], "profiles": [str(p) for p in profiles]}


class DeployerApi:
    """``endpoint``: an `Endpoint`, or a function that makes one at the first call (the token file is read
    then); ``transport``: tests' in-process deployer."""

    def __init__(self, endpoint: Endpoint | Callable[[], Endpoint], transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._lazy = LazyFailover(endpoint, transport, service="deployer", unavailable=DeployerUnavailable)

    @classmethod
    def from_settings(cls, settings: Any, transport: httpx.AsyncBaseTransport | None = None) -> DeployerApi:
        """From GatewaySettings (``deployer_url``, ``internal``), read at the first call."""

        return cls(lambda: endpoint_from(settings, settings.deployer_url), transport)

    def _http(self) -> FailoverClient:
        return self._lazy.client()

    async def _call(self, method: str, path: str, *, actor: str | None = None, json: Any = None,
                    params: dict[str, str] | None = None) -> Answered:
        headers = {ACTOR_HEADER: actor} if actor is not None else {}
        try:
            answer = await self._http().request(method, path, headers=headers, json=json, params=params)
        except httpx.HTTPError as exc:  # refused, timeout, protocol: the message names no header
            log.warning("internal call to the deployer failed: %s %s: %s", method, path, type(exc).__name__)
            raise DeployerUnavailable(f"the deployer did not answer ({type(exc).__name__})") from None
        try:
            body = answer.json() if answer.content else None
        except ValueError:
            body = None
            if 200 <= answer.status_code < 300:
                raise DeployerUnavailable("the deployer answered something that is not JSON") from None
        if answer.status_code == 401 or answer.status_code >= 500:
            level = logging.ERROR if answer.status_code == 401 else logging.WARNING
            log.log(level, "internal call to the deployer: %s %s answered %d", method, path, answer.status_code)
        return answer_of(answer.status_code, body)

    async def targets(self) -> list[dict[str, Any]]:
        body = (await self._call("GET", "/internal/v1/targets")).body
        if not isinstance(body, dict) or not isinstance(body.get("targets"), list):
            raise DeployerUnavailable("the deployer's target list does not fit the contract")
        return [view_of(item) for item in body["targets"]]

    async def target(self, name: str) -> dict[str, Any]:
        return view_of((await self._call("GET", f"/internal/v1/targets/{_seg(name)}")).body)

    async def put_target(self, name: str, body: dict[str, Any], actor: str) -> tuple[int, dict[str, Any]]:
        """(201 added / 200 replaced, the view)."""
        answered = await self._call("PUT", f"/internal/v1/targets/{_seg(name)}", actor=actor, json=body)
        return answered.status, view_of(answered.body)

    async def delete_target(self, name: str, actor: str) -> None:
        await self._call("DELETE", f"/internal/v1/targets/{_seg(name)}", actor=actor)

    async def probe(self, name: str) -> dict[str, Any]:
        body = (await self._call("POST", f"/internal/v1/targets/{_seg(name)}/probe")).body
        if not isinstance(body, dict) or not isinstance(body.get("reachable"), bool):
            raise DeployerUnavailable("the deployer's probe does not fit the contract")
        return {"target": name, "reachable": body["reachable"], "code": body.get("code"), "message": body.get("message")}

    async def bound_targets(self, profile: str) -> list[str]:
        body = (await self._call("GET", "/internal/v1/bindings", params={"profile": profile})).body
        if not isinstance(body, dict) or not isinstance(body.get("bindings"), list):
            raise DeployerUnavailable("the deployer's bindings do not fit the contract")
        return [str(b["target"]) for b in body["bindings"] if isinstance(b, dict) and b.get("profile") == profile]

    async def bind(self, profile: str, target: str, actor: str) -> int:
        """201 bound / 200 already bound."""
        return (await self._call("PUT", f"/internal/v1/profiles/{_seg(profile)}/targets/{_seg(target)}", actor=actor)).status

    async def unbind(self, profile: str, target: str, actor: str) -> None:
        await self._call("DELETE", f"/internal/v1/profiles/{_seg(profile)}/targets/{_seg(target)}", actor=actor)

    async def report_refusal(self, action: str, *, target: str, profile: str | None, actor: str, code: str, message: str,
                             fields: list[str]) -> bool:
        """Have the deployer record a change the gateway refused (its admin event, outcome refused); whether it
        was recorded (False: the names cannot be a target's or a profile's)."""
        body = {"action": action, "target": target[:200], "profile": profile[:200] if profile else None, "code": code[:64],
                "message": message[:MAX_MESSAGE_CHARS], "fields": [f[:200] for f in fields[:64]]}
        answered = await self._call("POST", "/internal/v1/refusals", actor=actor, json=body)
        if not isinstance(answered.body, dict) or not isinstance(answered.body.get("recorded"), bool):
            raise DeployerUnavailable("the deployer's answer to a refusal does not fit the contract")
        return bool(answered.body["recorded"])

    async def aclose(self) -> None:
        await self._lazy.aclose()
