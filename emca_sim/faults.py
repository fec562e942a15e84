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
- ``foreign_key``: every certificate issued meanwhile is a genuine one of the
  profile's CA, with the CSR's subject and extensions, for a fresh key of the
  same type instead of the CSR's (`FaultyBackend` wraps the dialects' backend):
  a client that checks the key against its CSR refuses it.
- ``crl``: the CRL port (`CrlFaultMiddleware`) answers every ``/crl/`` request
  with 503 (``"unavailable"``) or with bytes that are no CRL (``"garbage"``);
  CA certificates are still served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from emca_sim.backend import CaInfo, Issued, Pending, ProfileInfo, RegisteredApp, SimBackend, SimError
from emca_sim.ca import load_csr

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


#: what the CRL port answers under the ``crl`` fault: 503, or a 200 whose body is no CRL
CrlFault = Literal["unavailable", "garbage"]


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
    foreign_key: bool = False
    crl: CrlFault | None = None


class RateLimitPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate: float = Field(default=1.0, ge=0.0, le=1.0)
    retry_after_s: int = Field(default=1, ge=0, le=86_400)


class FlapPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    up_s: float = Field(gt=0, le=3600)
    down_s: float = Field(gt=0, le=3600)


class FaultPatch(BaseModel):
    """A change to the faults: fields left out stay as they are; ``null`` clears ``rate_limit``/``flap``/``crl``."""

    model_config = ConfigDict(extra="forbid")
    down: bool | None = None
    slow_ms: int | None = Field(default=None, ge=0, le=600_000)
    error_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    error_status: int | None = Field(default=None, ge=500, le=599)
    rate_limit: RateLimitPatch | None = None
    flap: FlapPatch | None = None
    foreign_key: bool | None = None
    crl: CrlFault | None = None


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
        if patch.foreign_key is not None:
            self.state.foreign_key = patch.foreign_key
        if "crl" in given:
            self.state.crl = patch.crl
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

    def foreign_csr(self, csr_pem: str) -> str:
        """``csr_pem`` itself, or under ``foreign_key`` a CSR with its subject and extensions for a fresh key."""
        if not self.state.foreign_key:
            return csr_pem
        try:
            csr = load_csr(csr_pem)
            extensions, key = list(csr.extensions), _fresh_key_like(csr.public_key())
        except (SimError, ValueError):
            return csr_pem  # the CA refuses it as it would anyway
        if key is None:
            return csr_pem
        builder = x509.CertificateSigningRequestBuilder().subject_name(csr.subject)
        for extension in extensions:
            builder = builder.add_extension(extension.value, extension.critical)
        algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
        log.warning("foreign_key fault: signing %s for another key than its CSR's", csr.subject.rfc4514_string())
        return builder.sign(key, algorithm).public_bytes(Encoding.PEM).decode()


_FreshKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


def _fresh_key_like(public_key: object) -> _FreshKey | None:
    """A new private key of the same type (and size or curve) as ``public_key``; None for other key types."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return rsa.generate_private_key(public_exponent=65537, key_size=public_key.key_size)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return ec.generate_private_key(public_key.curve)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return ed25519.Ed25519PrivateKey.generate()
    if isinstance(public_key, ed448.Ed448PublicKey):
        return ed448.Ed448PrivateKey.generate()
    return None


class FaultyBackend:
    """The dialects' `SimBackend`: the simulated CA itself, but for issuance under the ``foreign_key`` fault."""

    def __init__(self, backend: SimBackend, controller: FaultController) -> None:
        self._backend = backend
        self._controller = controller

    def issue(self, *, profile: str, subscriber_id: str, csr_pem: str, application_id: str | None,
              dedupe_by_application_id: bool) -> Issued | Pending:
        return self._backend.issue(profile=profile, subscriber_id=subscriber_id,
                                   csr_pem=self._controller.foreign_csr(csr_pem), application_id=application_id,
                                   dedupe_by_application_id=dedupe_by_application_id)

    def application(self, username: str) -> RegisteredApp | None:
        return self._backend.application(username)

    def application_by_client_id(self, client_id: str) -> RegisteredApp | None:
        return self._backend.application_by_client_id(client_id)

    def remember_txn(self, username: str, txn: str) -> bool:
        return self._backend.remember_txn(username, txn)

    def count_request(self, method: str) -> None:
        self._backend.count_request(method)

    def profiles(self) -> list[ProfileInfo]:
        return self._backend.profiles()

    def profile(self, name: str) -> ProfileInfo | None:
        return self._backend.profile(name)

    def profile_by_id(self, profile_id: str) -> ProfileInfo | None:
        return self._backend.profile_by_id(profile_id)

    def cas(self) -> list[CaInfo]:
        return self._backend.cas()

    def subscriber_exists(self, subscriber_id: str) -> bool:
        return self._backend.subscriber_exists(subscriber_id)

    def pending(self, request_id: str) -> Pending:
        return self._backend.pending(request_id)

    def certificate(self, serial: str) -> Issued:
        return self._backend.certificate(serial)

    def revoke(self, serial: str, reason: str) -> Issued:
        return self._backend.revoke(serial, reason)

    def crl_der(self, ca_name: str) -> bytes:
        return self._backend.crl_der(ca_name)

    def chain(self, ca_name: str) -> tuple[str, ...]:
        return self._backend.chain(ca_name)


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


#: what the ``crl: "garbage"`` fault serves: DER-ish bytes that no parser takes for a CRL
GARBAGE_CRL = b"\x30\x03\x02\x01\x00 this is not a CRL"


class CrlFaultMiddleware:
    """Applies the ``crl`` fault to the CRL port's ``/crl/`` requests (CA certificates are never affected)."""

    def __init__(self, app: ASGIApp, controller: FaultController) -> None:
        self.app = app
        self.controller = controller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fault = self.controller.state.crl
        if scope["type"] != "http" or fault is None or not str(scope.get("path", "")).startswith("/crl/"):
            await self.app(scope, receive, send)
            return
        if fault == "unavailable":
            await _send_plain(send, 503, b"CRL publisher unavailable\n", b"text/plain")
        else:
            await _send_plain(send, 200, GARBAGE_CRL, b"application/pkix-crl")


async def _send_plain(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
