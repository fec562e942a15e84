"""Who sent a request on Kafka: the ``auth`` part (RequestAuth) verified against
the requester's registered key, then the profile's allowed requesters.

The signed bytes, the two schemes and the client side (`sign_request`,
`signed`) are the signed-request contract, services/common/contracts/signing.py
(module docstring: the specification for upstream teams). Here, the gateway's
policy:

* `RequesterKey`: one registered key (an HMAC secret of at least 32 bytes, or
  an ES256 (P-256) or Ed25519 public key), bound to one requester identity;
* `RequesterKeys`: the lookup by (requester, key_id), with `InMemoryRequesterKeys`;
* `verify_request_auth`: UNAUTHENTICATED (no auth, unknown key id) or
  REQUEST_SIGNATURE_INVALID (wrong scheme for the key, bad HMAC, bad or
  disallowed JWS);
* `authorise_requester`: REQUESTER_NOT_AUTHORISED.

The algorithm is pinned by the registered key, never taken from the token:
HS256 for an HMAC secret, ES256 for a P-256 key, EdDSA for an Ed25519 key;
``alg: none`` and every other value are refused before any verification.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.api_jws import PyJWS
from pydantic import BaseModel, ValidationError

from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import RequestAuth
from services.common.contracts.signing import (
    AUTH_MEMBER,
    MIN_HMAC_KEY_BYTES,
    AuthScheme,
    JwsAlgorithm,
    PublicKey,
    b64url,
    check_public_key,
    hmac_sha256_signature,
    jws_algorithm_for,
    request_signing_bytes,
)
from services.gateway.policy.profile import ProvisioningProfile
from services.gateway.policy.violation import PolicyViolation, shown


@dataclass(frozen=True)
class RequesterKey:
    """One key registered for one requester. Exactly one of ``secret`` (HMAC,
    usable with hmac-sha256 and JWS HS256) and ``public_key`` (JWS only)."""

    requester: str
    key_id: str
    secret: bytes | None = field(default=None, repr=False)
    public_key: PublicKey | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.secret is None) == (self.public_key is None):
            raise ValueError("a requester key is either an HMAC secret or a public key")
        if self.secret is not None and len(self.secret) < MIN_HMAC_KEY_BYTES:
            raise ValueError(f"an HMAC requester key needs at least {MIN_HMAC_KEY_BYTES} bytes, not {len(self.secret)}")
        if self.public_key is not None:
            check_public_key(self.public_key)

    @classmethod
    def from_public_pem(cls, requester: str, key_id: str, pem: bytes) -> RequesterKey:
        key = serialization.load_pem_public_key(pem)
        if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
            raise ValueError(f"a requester public key must be EC P-256 or Ed25519, not {type(key).__name__}")
        return cls(requester=requester, key_id=key_id, public_key=key)

    @property
    def jws_algorithm(self) -> JwsAlgorithm:
        """The only JWS ``alg`` this key verifies."""
        if self.public_key is not None:
            return jws_algorithm_for(self.public_key)
        return JwsAlgorithm.HS256


class RequesterKeys(Protocol):
    """Registered requester keys. ``get`` returns None for an unknown (or
    retired) key id; a key registered for another requester is not found."""

    def get(self, requester: str, key_id: str) -> RequesterKey | None: ...


class InMemoryRequesterKeys:
    """`RequesterKeys` held in a dict (tests, static configuration)."""

    def __init__(self, keys: list[RequesterKey] | None = None) -> None:
        self._keys: dict[tuple[str, str], RequesterKey] = {}
        for key in keys or []:
            self.add(key)

    def add(self, key: RequesterKey) -> None:
        self._keys[(key.requester, key.key_id)] = key

    def remove(self, requester: str, key_id: str) -> None:
        self._keys.pop((requester, key_id), None)

    def get(self, requester: str, key_id: str) -> RequesterKey | None:
        return self._keys.get((requester, key_id))


# -- verification (gateway) ---------------------------------------------------


def _bad(message: str) -> PolicyViolation:
    return PolicyViolation(ErrorCode.REQUEST_SIGNATURE_INVALID, message)


def _auth_of(data: BaseModel | Mapping[str, Any]) -> tuple[str, RequestAuth | None]:
    if isinstance(data, BaseModel):
        requester, auth = getattr(data, "requester", None), getattr(data, AUTH_MEMBER, None)
    else:
        requester, auth = data.get("requester"), data.get(AUTH_MEMBER)
        if auth is not None:
            try:
                auth = RequestAuth.model_validate(auth, strict=False)
            except ValidationError:
                raise PolicyViolation(
                    ErrorCode.UNAUTHENTICATED, "the request's auth is malformed (scheme, key_id, signature)"
                ) from None
    if not isinstance(requester, str) or not requester:
        raise PolicyViolation(ErrorCode.UNAUTHENTICATED, "the request names no requester")
    if auth is not None and not isinstance(auth, RequestAuth):
        raise TypeError("auth must be a RequestAuth")
    return requester, auth


def _verify_hmac(key: RequesterKey, auth: RequestAuth, payload: bytes) -> None:
    if key.secret is None:
        raise _bad(f"key {shown(auth.key_id)} is a {key.jws_algorithm} public key: sign with scheme jws, not hmac-sha256")
    expected = hmac_sha256_signature(key.secret, payload)
    if not hmac.compare_digest(expected.encode("ascii"), auth.signature.encode("ascii")):
        raise _bad(
            f"the HMAC-SHA256 (key {shown(auth.key_id)}) does not match the canonical JSON of the request data"
            " (base64url without padding, over the data without auth)"
        )


def _verify_jws(key: RequesterKey, auth: RequestAuth, payload: bytes) -> None:
    token = auth.signature
    parts = token.split(".")
    if len(parts) != 3:
        raise _bad("the JWS is not in compact serialisation (header.payload.signature)")
    jws = PyJWS()
    try:
        header = jws.get_unverified_header(token)
    except jwt.exceptions.PyJWTError as exc:
        raise _bad(f"the JWS header cannot be read ({exc})") from None
    algorithm = header.get("alg")
    expected = key.jws_algorithm
    if algorithm != expected.value:
        raise _bad(f"JWS alg {shown(str(algorithm))} is not accepted: key {shown(auth.key_id)} verifies only {expected}")
    if "crit" in header or header.get("b64", True) is not True:
        raise _bad("JWS 'crit' and 'b64' headers are not accepted (detach the base64url payload instead, RFC 7515 Appendix F)")
    kid = header.get("kid")
    if kid is not None and kid != auth.key_id:
        raise _bad(f"the JWS kid {shown(str(kid))} differs from the auth key_id {shown(auth.key_id)}")
    if parts[1] == "":
        token = f"{parts[0]}.{b64url(payload)}.{parts[2]}"
    verification_key = key.secret if key.secret is not None else key.public_key
    try:
        signed_payload = jws.decode(token, verification_key, algorithms=[expected.value])  # type: ignore[arg-type]
    except jwt.exceptions.PyJWTError as exc:
        raise _bad(f"the JWS does not verify with key {shown(auth.key_id)} ({exc})") from None
    if not hmac.compare_digest(signed_payload, payload):
        raise _bad("the JWS payload is not the canonical JSON of the request data (without auth)")


def verify_request_auth(data: BaseModel | Mapping[str, Any], keys: RequesterKeys) -> RequesterKey:
    """Check a Kafka request's ``auth`` against its requester's registered key.

    ``data`` is the request's ``data`` object as received (preferred: the
    signature covers the members the requester sent) or the validated model.
    Returns the key that verified. Raises PolicyViolation: UNAUTHENTICATED (no
    auth, unknown key id for this requester), REQUEST_SIGNATURE_INVALID."""
    requester, auth = _auth_of(data)
    if auth is None:
        raise PolicyViolation(
            ErrorCode.UNAUTHENTICATED, "a request on Kafka must carry auth (an HMAC-SHA256 or a JWS by the requester's key)"
        )
    key = keys.get(requester, auth.key_id)
    if key is None or key.requester != requester:
        raise PolicyViolation(ErrorCode.UNAUTHENTICATED, f"unknown key id {shown(auth.key_id)} for requester {shown(requester)}")
    try:
        payload = request_signing_bytes(data)
    except ValueError as exc:
        raise _bad(f"the request data has no canonical JSON form ({exc})") from None
    if auth.scheme == AuthScheme.HMAC_SHA256:
        _verify_hmac(key, auth, payload)
    else:
        _verify_jws(key, auth, payload)
    return key


def authorise_requester(requester: str, profile: ProvisioningProfile) -> None:
    """Raises PolicyViolation(REQUESTER_NOT_AUTHORISED) unless the profile lists
    ``requester`` (the list itself is not disclosed)."""
    if not profile.allows_requester(requester):
        raise PolicyViolation(
            ErrorCode.REQUESTER_NOT_AUTHORISED, f"requester {shown(requester)} is not allowed to use profile {profile.name!r}"
        )
