"""Fault injection for the simulator's emCA API port.

`FaultController` holds the current faults and changes them (the admin API
calls it); `FaultMiddleware` wraps the emCA API's ASGI app and applies the
per-request ones. The admin API and the CRL port are never affected.

Fault modes:

- ``down``: the API's listening socket is closed (new connections are refused)
  and live connections are reset (``SO_LINGER`` 0, then aborted); ``up``
  reopens it on the same address. Needs a `Listener` (the server provides one
  over uvicorn's `Server`).
- ``slow_ms``: latency added before every request is handled.
- ``error_rate`` (0..1): that fraction of requests answers ``error_status``
  (default 500) with emCA's "Internal server error".
- ``rate_limit``: that fraction of requests answers 429 with ``Retry-After``.
- ``flap``: a schedule, down for ``down_s`` then up for ``up_s``, repeated
  until cleared or until ``down``/``up`` is set explicitly.
- rotated credentials (`FaultController.rotate_credentials`): an application's
  password (and 4.2.x ClientID) change, so its requests stop authenticating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from emca_sim.backend import RegisteredApp

log = logging.getLogger("emca_sim.faults")


class Listener(Protocol):
    """The API's listening socket, as the ``down`` fault needs it."""

    async def close(self) -> None:
        """Stop accepting connections and reset the open ones."""
        ...

    async def open(self) -> None:
        """Accept connections again, on the same address."""
        ...

    def connection_count(self) -> int: ...


class CredentialRotator(Protocol):
    def rotate_credentials(self, username: str) -> RegisteredApp: ...


@dataclass(frozen=True)
class RateLimit:
    rate: float  # fraction of requests answered 429
    retry_after_s: int


@dataclass(frozen=True)
class Flap:
    up_s: float
    down_s: float


@dataclass
class FaultState:
    down: bool = False
    slow_ms: int = 0
    error_rate: float = 0.0
    error_status: int = 500
    rate_limit: RateLimit | None = None
    flap: Flap | None = None
    rotated_credentials: list[str] = field(default_factory=list)


class RateLimitPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate: float = Field(default=1.0, ge=0.0, le=1.0)
    retry_after_s: int = Field(default=1, ge=0, le=86_400)


class FlapPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    up_s: float = Field(gt=0, le=3600)
    down_s: float = Field(gt=0, le=3600)


class FaultPatch(BaseModel):
    """A change to the faults: fields left out stay as they are; ``null`` clears ``rate_limit``/``flap``."""

    model_config = ConfigDict(extra="forbid")
    down: bool | None = None
    slow_ms: int | None = Field(default=None, ge=0, le=600_000)
    error_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    error_status: int | None = Field(default=None, ge=500, le=599)
    rate_limit: RateLimitPatch | None = None
    flap: FlapPatch | None = None


class FaultController:
    def __init__(self, listener: Listener | None = None, credentials: CredentialRotator | None = None, *,
                 rng: random.Random | None = None) -> None:
        self.state = FaultState()
        self.listener = listener  # may be attached after construction (the server's socket)
        self._credentials = credentials
        self._rng = rng or random.Random()
        self._flap_task: asyncio.Task[None] | None = None
        self._listener_lock = asyncio.Lock()

    def snapshot(self) -> dict[str, Any]:
        result = asdict(self.state)
        result["connections"] = self.listener.connection_count() if self.listener else None
        return result

    # -- down / up / flap
    async def _set_listener(self, down: bool) -> None:
        async with self._listener_lock:
            if down == self.state.down:
                return
            if self.listener is None:
                raise RuntimeError("this API has no listener to take down")
            if down:
                await self.listener.close()
            else:
                await self.listener.open()
            self.state.down = down
            log.info("emCA API %s", "down" if down else "up")

    async def set_down(self, down: bool) -> None:
        await self._stop_flap()
        await self._set_listener(down)

    async def start_flap(self, up_s: float, down_s: float) -> None:
        await self._stop_flap()
        self.state.flap = Flap(up_s=up_s, down_s=down_s)
        self._flap_task = asyncio.create_task(self._flap(up_s, down_s), name="emca-sim-flap")

    async def _flap(self, up_s: float, down_s: float) -> None:
        while True:
            await self._set_listener(True)
            await asyncio.sleep(down_s)
            await self._set_listener(False)
            await asyncio.sleep(up_s)

    async def _stop_flap(self) -> None:
        task, self._flap_task = self._flap_task, None
        self.state.flap = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- per-request faults
    def set_slow(self, ms: int) -> None:
        self.state.slow_ms = ms

    def set_errors(self, rate: float, status: int | None = None) -> None:
        self.state.error_rate = rate
        if status is not None:
            self.state.error_status = status

    def set_rate_limit(self, rate: float, retry_after_s: int) -> None:
        self.state.rate_limit = RateLimit(rate=rate, retry_after_s=retry_after_s) if rate > 0 else None

    def rotate_credentials(self, username: str) -> RegisteredApp:
        if self._credentials is None:
            raise RuntimeError("no credential store to rotate")
        app = self._credentials.rotate_credentials(username)
        if username not in self.state.rotated_credentials:
            self.state.rotated_credentials.append(username)
        return app

    async def apply(self, patch: FaultPatch) -> None:
        given = patch.model_fields_set
        if patch.slow_ms is not None:
            self.set_slow(patch.slow_ms)
        if patch.error_rate is not None or patch.error_status is not None:
            self.set_errors(self.state.error_rate if patch.error_rate is None else patch.error_rate, patch.error_status)
        if "rate_limit" in given:
            limit = patch.rate_limit
            self.set_rate_limit(limit.rate, limit.retry_after_s) if limit else self.set_rate_limit(0, 0)
        if patch.down is not None:
            await self.set_down(patch.down)
        if "flap" in given:
            if patch.flap is None:
                await self.set_down(bool(patch.down))  # stopping the schedule leaves the API up unless told otherwise
            else:
                await self.start_flap(patch.flap.up_s, patch.flap.down_s)

    async def clear(self) -> None:
        """Every fault off and the API up (rotated credentials stay rotated)."""
        await self.set_down(False)
        rotated = self.state.rotated_credentials
        self.state = FaultState(rotated_credentials=rotated)

    async def aclose(self) -> None:
        await self._stop_flap()

    # -- decisions, one per request
    def _hit(self, rate: float) -> bool:
        return rate >= 1.0 or (rate > 0.0 and self._rng.random() < rate)

    def rate_limited(self) -> RateLimit | None:
        limit = self.state.rate_limit
        return limit if limit is not None and self._hit(limit.rate) else None

    def injected_error(self) -> int | None:
        return self.state.error_status if self._hit(self.state.error_rate) else None


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


class FaultMiddleware:
    """Applies latency, 429s and 5xxs to the emCA API's HTTP requests."""

    def __init__(self, app: ASGIApp, controller: FaultController) -> None:
        self.app = app
        self.controller = controller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        controller = self.controller
        if controller.state.slow_ms:
            await asyncio.sleep(controller.state.slow_ms / 1000)
        limit = controller.rate_limited()
        if limit is not None:
            await _send_json(send, 429, {"status": "failure", "result": "Too many requests"},
                             [(b"retry-after", str(limit.retry_after_s).encode())])
            return
        status = controller.injected_error()
        if status is not None:
            await _send_json(send, status, {"status": "failure", "result": "Internal server error"}, [])
            return
        await self.app(scope, receive, send)
