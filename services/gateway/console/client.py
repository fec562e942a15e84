"""The console's way to the data: the ``/v1`` API itself, called in-process (httpx's ASGI
transport into the same FastAPI app) with the signed-in user's own token. Every read and
write therefore goes through exactly the code, the authorisation, the validation and the
admin events of ``/v1``; the console adds no second path to the data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx


class SignedOut(Exception):
    """The API answered 401: the session's token no longer authenticates."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def code(self) -> str:
        return str(self.body.get("code", f"HTTP_{self.status}")) if isinstance(self.body, dict) else f"HTTP_{self.status}"

    @property
    def message(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("message"), str):
            return self.body["message"]
        return f"the gateway answered {self.status}"

    @property
    def errors(self) -> list[dict[str, str]]:
        listed = self.body.get("errors") if isinstance(self.body, dict) else None
        return [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []


def seg(value: str) -> str:
    """One path segment, percent-encoded (names may hold spaces, certificate ids slashes)."""
    return quote(value, safe="")


class ApiClient:
    def __init__(self, app: Any) -> None:
        self._app = app

    async def call(self, token: str, method: str, path: str, *, json: Any = None,
                   params: dict[str, Any] | None = None) -> Reply:
        assert path.startswith("/v1/")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self._app), base_url="http://console.internal") as client:
            response = await client.request(method, path, json=json, params=params,
                                            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = None
        reply = Reply(response.status_code, body)
        if reply.status == 401:
            raise SignedOut(reply.message)
        return reply
