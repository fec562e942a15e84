"""The webhook target: an HTTPS POST of the certificate bundle, signed, TLS verified.

Body (JSON, UTF-8)::

    {"action": "deploy"|"rollback", "certificate_id": ..., "serial": ..., "certificate": PEM,
     "chain": [PEM, ...], "private_key": PEM (only with include_private_key, bot-held keys)}

Headers: ``X-Certrail-Timestamp`` (Unix seconds) and ``X-Certrail-Signature:
v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>``; receivers recompute it over
the raw body and refuse stale timestamps. The receiver acknowledges with 2xx and a
JSON body ``{"serial": "<the serial it installed>"}``: that serial is what verify
checks. Connection errors, timeouts, 429 and 5xx are retried with capped
exponential backoff (then TARGET_UNREACHABLE); other answers are INSTALL_FAILED.
Rollback POSTs the previously deployed bundle with action "rollback", only when the
receiver may have taken the failed one (it answered 2xx or 5xx, or the connection broke
after the request went out): a receiver never reached, or one that refused (4xx, 429),
changed nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import ssl
import time
from collections.abc import Awaitable, Callable

import httpx

from services.common.contracts.errors import ErrorCode
from services.deployer.targets.base import Bundle, TargetError
from services.deployer.targets.config import WebhookTargetConfig

SIGNATURE_HEADER = "X-Certrail-Signature"
TIMESTAMP_HEADER = "X-Certrail-Timestamp"


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return "v1=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def body_of(bundle: Bundle, action: str, include_private_key: bool) -> bytes:
    payload: dict[str, object] = {"action": action, "certificate_id": bundle.certificate_id, "serial": bundle.serial,
                                  "certificate": bundle.certificate_pem, "chain": list(bundle.chain_pem)}
    if include_private_key and bundle.private_key_pem is not None:
        payload["private_key"] = bundle.private_key_pem.decode()
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


class WebhookTarget:
    kind = "webhook"

    def __init__(self, name: str, config: WebhookTargetConfig, hmac_secret: str, *, previous: Bundle | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.config = config
        self._secret = hmac_secret.encode()
        self.previous = previous
        self._sleep = sleep
        self._clock = clock
        self._acknowledged: dict[str, str | None] = {}
        self._delivered: set[str] = set()  # serials whose deploy the receiver may have acted on

    def _verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=self.config.ca_file) if self.config.ca_file else True

    async def _post(self, bundle: Bundle, action: str, code: ErrorCode) -> str | None:
        body = body_of(bundle, action, self.config.include_private_key)
        delay = self.config.backoff_initial_s
        last = "no attempt"
        async with httpx.AsyncClient(verify=self._verify(), timeout=self.config.timeout_s, follow_redirects=False) as client:
            for attempt in range(1, self.config.attempts + 1):
                timestamp = str(int(self._clock()))
                headers = {"content-type": "application/json", TIMESTAMP_HEADER: timestamp,
                           SIGNATURE_HEADER: signature(self._secret, timestamp, body)}
                try:
                    response = await client.post(self.config.url, content=body, headers=headers)
                except httpx.ConnectError as exc:
                    if isinstance(exc.__cause__, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
                        raise TargetError(code, f"the receiver's TLS certificate does not verify: {exc}") from None
                    last = f"cannot connect ({exc})"
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__} ({exc})"
                    if action == "deploy" and not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                        self._delivered.add(bundle.serial)  # sent, answer lost: it may have installed it
                else:
                    if action == "deploy" and (response.is_success or response.status_code >= 500):
                        self._delivered.add(bundle.serial)
                    if response.is_success:
                        try:
                            answer = response.json()
                        except ValueError:
                            answer = {}
                        serial = answer.get("serial") if isinstance(answer, dict) else None
                        return serial if isinstance(serial, str) else None
                    if response.status_code != 429 and response.status_code < 500:
                        raise TargetError(code, f"the receiver answered {response.status_code}: {response.text[:300]}")
                    last = f"HTTP {response.status_code}"
                if attempt < self.config.attempts:
                    await self._sleep(delay)
                    delay = min(delay * 2, self.config.backoff_max_s)
        raise TargetError(ErrorCode.TARGET_UNREACHABLE if code is ErrorCode.INSTALL_FAILED else code,
                          f"{self.config.url} failed {self.config.attempts} times, last: {last}", transient=True)

    async def deploy(self, bundle: Bundle) -> None:
        self._acknowledged[bundle.serial] = await self._post(bundle, "deploy", ErrorCode.INSTALL_FAILED)

    async def verify(self, bundle: Bundle) -> str:
        acknowledged = self._acknowledged.get(bundle.serial)
        if acknowledged != bundle.serial:
            raise TargetError(ErrorCode.VERIFY_FAILED,
                              f"the receiver acknowledged serial {acknowledged!r}, not {bundle.serial} (answer {{\"serial\": ...}})")
        return acknowledged

    async def rollback(self, bundle: Bundle) -> bool:
        if self.previous is None or self.previous.serial == bundle.serial or bundle.serial not in self._delivered:
            return False
        acknowledged = await self._post(self.previous, "rollback", ErrorCode.ROLLBACK_FAILED)
        if acknowledged != self.previous.serial:
            raise TargetError(ErrorCode.ROLLBACK_FAILED, f"the receiver acknowledged {acknowledged!r} for the rollback")
        return True
