"""HTTP API tokens: generation, hashing at rest, verification, and the
authorisation decision `authorise(claims, action, profile)`.

A token reads ``ctr_<token id: 12 hex>_<secret: 43 base64url characters>``.
The ``ctr_`` prefix lets secret scanners recognise a leaked token; the token id
(also the id named in TokenCreated/TokenRevoked events) finds the stored record;
the secret carries 256 bits from `secrets.token_urlsafe`.

At rest only SHA-256(token) is kept. A slow password hash (bcrypt, scrypt,
Argon2) exists to make guessing *low-entropy* passwords expensive; a 256-bit
random secret cannot be guessed whatever the hash's speed, so a fast hash
loses nothing and keeps every API call cheap. The comparison is constant-time
(`hmac.compare_digest`).

Roles: ``admin`` manages connectors, profiles and tokens, and may renew and
revoke any certificate in its scope; ``requester`` asks for certificates under
the profiles that list its identity (issue, renew, revoke) and reads what is
in its scope; ``auditor`` reads everything in its scope and the audit log, and
changes nothing. A token may be scoped to profiles: it then acts only on those
profiles, and cannot do anything that is not about one profile (connector and
token management, reading connectors or the audit log). Listing with a scoped
token must be filtered by `visible_profiles`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from services.common.contracts.errors import ErrorCode
from services.gateway.policy.profile import ProvisioningProfile
from services.gateway.policy.violation import PolicyViolation, shown

TOKEN_PREFIX = "ctr_"
TOKEN_ID_HEX_CHARS = 12
TOKEN_SECRET_BYTES = 32
_TOKEN = re.compile(r"^ctr_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class Role(StrEnum):
    ADMIN = "admin"
    REQUESTER = "requester"
    AUDITOR = "auditor"


class Action(StrEnum):
    CERTIFICATE_ISSUE = "certificate.issue"
    CERTIFICATE_RENEW = "certificate.renew"
    CERTIFICATE_REVOKE = "certificate.revoke"
    CERTIFICATE_READ = "certificate.read"
    REQUEST_READ = "request.read"
    PROFILE_READ = "profile.read"
    PROFILE_WRITE = "profile.write"  # create, edit, delete
    CONNECTOR_READ = "connector.read"
    CONNECTOR_WRITE = "connector.write"  # create, edit, activate, deactivate, delete, test
    TOKEN_MANAGE = "token.manage"
    AUDIT_READ = "audit.read"


#: who may do what
ROLES: dict[Action, frozenset[Role]] = {
    Action.CERTIFICATE_ISSUE: frozenset({Role.REQUESTER}),
    Action.CERTIFICATE_RENEW: frozenset({Role.REQUESTER, Role.ADMIN}),
    Action.CERTIFICATE_REVOKE: frozenset({Role.REQUESTER, Role.ADMIN}),
    Action.CERTIFICATE_READ: frozenset(Role),
    Action.REQUEST_READ: frozenset(Role),
    Action.PROFILE_READ: frozenset(Role),
    Action.PROFILE_WRITE: frozenset({Role.ADMIN}),
    Action.CONNECTOR_READ: frozenset({Role.ADMIN, Role.AUDITOR}),
    Action.CONNECTOR_WRITE: frozenset({Role.ADMIN}),
    Action.TOKEN_MANAGE: frozenset({Role.ADMIN}),
    Action.AUDIT_READ: frozenset({Role.ADMIN, Role.AUDITOR}),
}
#: actions about one profile (the others are global)
PROFILE_ACTIONS = frozenset(
    {
        Action.CERTIFICATE_ISSUE,
        Action.CERTIFICATE_RENEW,
        Action.CERTIFICATE_REVOKE,
        Action.CERTIFICATE_READ,
        Action.REQUEST_READ,
        Action.PROFILE_READ,
        Action.PROFILE_WRITE,
    }
)
#: actions that need the profile to be given (the reads may list instead)
NEEDS_PROFILE = frozenset({Action.CERTIFICATE_ISSUE, Action.CERTIFICATE_RENEW, Action.CERTIFICATE_REVOKE, Action.PROFILE_WRITE})
#: actions for which a requester's identity must be among the profile's allowed requesters
REQUESTER_LISTED = frozenset({Action.CERTIFICATE_ISSUE, Action.CERTIFICATE_RENEW, Action.CERTIFICATE_REVOKE})


@dataclass(frozen=True)
class NewToken:
    """A freshly generated token: show ``token`` once, store ``token_hash``."""

    token_id: str
    token: str = field(repr=False)
    token_hash: str


@dataclass(frozen=True)
class TokenClaims:
    """What a stored token grants. ``identity`` is the acting identity (named in
    admin events; the requester identity of HTTP requests). ``profiles`` None:
    every profile; otherwise only those."""

    token_id: str
    identity: str
    role: Role
    profiles: frozenset[str] | None = None


@dataclass(frozen=True)
class StoredToken:
    """A token record as kept at rest (never the token itself)."""

    claims: TokenClaims
    token_hash: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    """An authorisation answer: allowed, or denied with a code and a reason."""

    allowed: bool
    reason: str
    code: ErrorCode | None = None

    def raise_if_denied(self) -> None:
        if not self.allowed:
            assert self.code is not None
            raise PolicyViolation(self.code, self.reason)


def hash_token(token: str) -> str:
    """The at-rest form of a token: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def generate_token() -> NewToken:
    token_id = secrets.token_hex(TOKEN_ID_HEX_CHARS // 2)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(TOKEN_SECRET_BYTES)}"
    return NewToken(token_id=token_id, token=token, token_hash=hash_token(token))


def token_id_of(presented: str) -> str:
    """The token id in a presented token (to find its record); raises
    PolicyViolation(UNAUTHENTICATED) when it is not a certrail token at all."""
    match = _TOKEN.match(presented)
    if match is None:
        raise PolicyViolation(ErrorCode.UNAUTHENTICATED, "the bearer token is not a certrail API token (ctr_...)")
    return match.group(1)


def verify_token(presented: str, token_hash: str) -> bool:
    """Whether ``presented`` is the token stored as ``token_hash`` (constant time)."""
    return hmac.compare_digest(hash_token(presented).encode("ascii"), token_hash.encode("ascii"))


def authenticate_token(presented: str, stored: StoredToken | None, now: datetime) -> TokenClaims:
    """The claims of a presented token, given the record found under its token id
    (None when there is none). Raises PolicyViolation(UNAUTHENTICATED) for a
    malformed, unknown, wrong, revoked or expired token; the reasons do not
    tell an unknown id from a wrong secret."""
    token_id = token_id_of(presented)
    if stored is None or stored.claims.token_id != token_id or not verify_token(presented, stored.token_hash):
        raise PolicyViolation(ErrorCode.UNAUTHENTICATED, "the bearer token is not valid")
    if stored.revoked_at is not None and stored.revoked_at <= now:
        raise PolicyViolation(ErrorCode.UNAUTHENTICATED, f"token {token_id} was revoked")
    if stored.expires_at is not None and stored.expires_at <= now:
        raise PolicyViolation(ErrorCode.UNAUTHENTICATED, f"token {token_id} expired")
    return stored.claims


def visible_profiles(claims: TokenClaims) -> frozenset[str] | None:
    """The profiles a token may see (None: all), to filter listings."""
    return claims.profiles


def readable_profiles(claims: TokenClaims, profiles: Iterable[ProvisioningProfile]) -> frozenset[str] | None:
    """The profiles whose certificates, inventory and request timelines the token may read (None:
    every profile). Admin and auditor tokens: their scope. Requester tokens: only the profiles
    that list the requester's identity, within the token's scope (a requester named in no profile
    reads no certificate; its own requests stay readable, see services/gateway/api_certificates.py)."""
    if claims.role is not Role.REQUESTER:
        return claims.profiles
    listed = frozenset(p.name for p in profiles if p.allows_requester(claims.identity))
    return listed if claims.profiles is None else listed & claims.profiles


def may_read_profile(scope: frozenset[str] | None, profile: str | None) -> bool:
    """Whether a certificate under ``profile`` (None: unknown) is readable within ``scope``
    (from `readable_profiles`)."""
    return scope is None or (profile is not None and profile in scope)


def _deny(reason: str) -> Decision:
    return Decision(allowed=False, reason=reason, code=ErrorCode.REQUESTER_NOT_AUTHORISED)


def authorise(claims: TokenClaims, action: Action, profile: ProvisioningProfile | None = None) -> Decision:
    """May the token ``claims`` do ``action`` (on ``profile``)? Pure; denials carry
    REQUESTER_NOT_AUTHORISED and a precise reason.

    ``profile`` is the profile acted on: required for issue/renew/revoke and
    profile writes (the certificate's profile for renew and revoke); for the
    reads, None means a listing, to be filtered by `visible_profiles`."""
    allowed_roles = ROLES[action]
    if claims.role not in allowed_roles:
        roles = ", ".join(sorted(allowed_roles))
        return _deny(f"role {claims.role} may not {action} (allowed roles: {roles})")
    if action not in PROFILE_ACTIONS:
        if claims.profiles is not None:
            return _deny(f"token {claims.token_id} is scoped to profiles; {action} needs an unscoped token")
        return Decision(allowed=True, reason=f"role {claims.role} may {action}")
    if profile is None:
        if action in NEEDS_PROFILE:
            raise ValueError(f"{action} is about one profile: pass it")
        scope = "its profiles" if claims.profiles is not None else "every profile"
        return Decision(allowed=True, reason=f"role {claims.role} may {action}, listing {scope}")
    if claims.profiles is not None and profile.name not in claims.profiles:
        return _deny(f"token {claims.token_id} is not scoped to profile {profile.name!r}")
    if action in REQUESTER_LISTED and claims.role is Role.REQUESTER and not profile.allows_requester(claims.identity):
        return _deny(f"requester {shown(claims.identity)} is not allowed to use profile {profile.name!r}")
    return Decision(allowed=True, reason=f"role {claims.role} may {action} on profile {profile.name!r}")
