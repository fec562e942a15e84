"""The signed-request contract: the bytes a requester signs and the two schemes.

For upstream teams (any language): the bytes to sign are the request's
``data`` object -- exactly the JSON object you put under ``data`` in the
CloudEvent -- **without its ``auth`` member**, serialised as

* object members sorted by key (the keys are plain ASCII field names),
* no insignificant whitespace (``,`` and ``:`` as separators),
* strings as JSON strings with only ``"``, ``\\`` and control characters
  escaped (non-ASCII characters written as themselves, not ``\\uXXXX``),
* integers in decimal; no floating-point numbers (no request field has one),
* encoded as UTF-8.

For certrail's request data (ASCII keys, no floats) this is exactly RFC 8785
(JSON Canonicalization Scheme), so any JCS library produces the same bytes.
In Python: ``json.dumps(data, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode("utf-8")``.

Then ``auth`` is either

* ``{"scheme": "hmac-sha256", "key_id": ..., "signature": base64url(HMAC-SHA256(key, bytes))}``
  (base64url without ``=`` padding, 43 characters), or
* ``{"scheme": "jws", "key_id": ..., "signature": <compact JWS>}`` whose payload
  is those bytes: attached (``header.payload.signature``) or detached as in
  RFC 7515 Appendix F (``header..signature``, the payload left out). Allowed
  ``alg``: HS256 with an HMAC key, ES256 with a registered P-256 key, EdDSA
  with a registered Ed25519 key. A ``kid`` header, if present, must equal
  ``key_id``. ``crit`` (so RFC 7797 ``b64: false``) is not accepted.

The gateway verifies the signature against the ``data`` object as it was
received (the members you sent, with the values you sent), not against a
re-serialisation of the validated model: sign exactly the object you send,
including any ``null`` members or defaults you chose to write out.

Here: the canonical bytes (`canonical_json`, `request_signing_bytes`), the
primitives both sides use (`hmac_sha256_signature`, `jws_algorithm_for`,
`check_public_key`), and `sign_request` / `signed`, what clients (the
deployer's bot, tests, benchmarks) call to produce ``auth``. Which keys are
registered and what a failed verification answers are the gateway's policy
(services/gateway/policy/request_auth.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.api_jws import PyJWS
from pydantic import BaseModel

from services.common.contracts.fields import RequestAuth

__all__ = [
    "AUTH_MEMBER",
    "MIN_HMAC_KEY_BYTES",
    "AuthScheme",
    "JwsAlgorithm",
    "PrivateKey",
    "PublicKey",
    "b64url",
    "canonical_json",
    "check_public_key",
    "hmac_sha256_signature",
    "jws_algorithm_for",
    "request_payload",
    "request_signing_bytes",
    "sign_request",
    "signed",
]

AUTH_MEMBER = "auth"
MIN_HMAC_KEY_BYTES = 32

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class AuthScheme(StrEnum):
    HMAC_SHA256 = "hmac-sha256"
    JWS = "jws"


class JwsAlgorithm(StrEnum):
    HS256 = "HS256"
    ES256 = "ES256"
    EDDSA = "EdDSA"


# -- the canonical bytes ------------------------------------------------------


def _check(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        raise ValueError(f"{where}: floating-point numbers have no canonical form here")
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: object keys must be strings")
            _check(item, f"{where}.{key}")
        return
    raise ValueError(f"{where}: {type(value).__name__} is not a JSON value")


def canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes of a JSON value (see the module docstring).
    Raises ValueError for floats, non-string keys, non-JSON types and strings
    that are not valid Unicode (lone surrogates)."""
    _check(value, "$")
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("$: a string is not valid Unicode (lone surrogate)") from None


def request_payload(data: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """A request's data object without ``auth``: for a model, its JSON form as
    certrail encodes it (``exclude_none``); for a mapping (the ``data`` object as
    received), its members as they are."""
    if isinstance(data, BaseModel):
        body = data.model_dump(mode="json", exclude_none=True)
    else:
        body = dict(data)
    body.pop(AUTH_MEMBER, None)
    return body


def request_signing_bytes(data: BaseModel | Mapping[str, Any]) -> bytes:
    """What a requester signs: the canonical JSON of the request data without ``auth``."""
    return canonical_json(request_payload(data))


# -- primitives shared by signer and verifier ---------------------------------


def b64url(raw: bytes) -> str:
    """base64url without ``=`` padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def hmac_sha256_signature(secret: bytes, payload: bytes) -> str:
    """The hmac-sha256 scheme's ``signature``: base64url (no padding) of HMAC-SHA256(secret, payload)."""
    return b64url(hmac.new(secret, payload, hashlib.sha256).digest())


def check_public_key(key: PublicKey) -> None:
    """Raises ValueError unless ``key`` is a P-256 or Ed25519 public key."""
    if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"an EC requester key must be P-256 (ES256), not {key.curve.name}")
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise ValueError(f"a requester public key must be EC P-256 or Ed25519, not {type(key).__name__}")


def jws_algorithm_for(key: bytes | PublicKey | PrivateKey) -> JwsAlgorithm:
    """The only JWS ``alg`` a key signs or verifies: pinned by the key, never taken from a token."""
    if isinstance(key, bytes):
        return JwsAlgorithm.HS256
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return JwsAlgorithm.EDDSA
    return JwsAlgorithm.ES256


# -- signing (clients) --------------------------------------------------------


def sign_request(
    data: BaseModel | Mapping[str, Any],
    key_id: str,
    key: bytes | PrivateKey,
    *,
    scheme: AuthScheme | None = None,
    detached: bool = True,
) -> RequestAuth:
    """The ``auth`` part for a request's data (a request model or its ``data``
    object; any ``auth`` in it is ignored). ``key`` is the HMAC secret (scheme
    hmac-sha256 by default, or jws for an HS256 JWS) or a P-256 / Ed25519
    private key (jws). JWS payloads are detached (RFC 7515 Appendix F) unless
    ``detached`` is false; attached payloads fit only small requests (a
    signature is at most 4096 characters)."""
    payload = request_signing_bytes(data)
    if isinstance(key, bytes):
        if len(key) < MIN_HMAC_KEY_BYTES:
            raise ValueError(f"an HMAC requester key needs at least {MIN_HMAC_KEY_BYTES} bytes")
        scheme = scheme or AuthScheme.HMAC_SHA256
        if scheme is AuthScheme.HMAC_SHA256:
            return RequestAuth(scheme=scheme.value, key_id=key_id, signature=hmac_sha256_signature(key, payload))
    else:
        if scheme is AuthScheme.HMAC_SHA256:
            raise ValueError("hmac-sha256 needs a shared secret, not a private key")
        check_public_key(key.public_key())
    algorithm = jws_algorithm_for(key)
    token = PyJWS().encode(payload, key, algorithm=algorithm.value, headers={"kid": key_id, "typ": None})
    if detached:
        header, _, signature = token.split(".")
        token = f"{header}..{signature}"
    return RequestAuth(scheme=AuthScheme.JWS.value, key_id=key_id, signature=token)


M = TypeVar("M", bound=BaseModel)


def signed(request: M, key_id: str, key: bytes | PrivateKey, *, scheme: AuthScheme | None = None) -> M:
    """``request`` (a request model) with its ``auth`` set by `sign_request`."""
    return request.model_copy(update={AUTH_MEMBER: sign_request(request, key_id, key, scheme=scheme)})
