"""API tokens and requester keys: create and revoke, each with its admin event (TokenCreated,
TokenRevoked, RequesterKeyAdded, RequesterKeyRevoked). The token and the HMAC secret are never
in an event: only their ids, the scheme, and ``secret: ***``."""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from services.common.connectors.secretbox import SecretBox
from services.common.contracts.admin import REDACTED, RequesterKeyAdded, RequesterKeyRevoked, TokenCreated, TokenRevoked
from services.common.contracts.errors import ErrorCode
from services.common.db_schema import GatewayRequesterKey
from services.gateway import store
from services.gateway.api_common import ApiCode, Problem
from services.gateway.config.change import Actor, changing
from services.gateway.policy.tokens import NewToken, Role, generate_token

REFUSED_TOKEN_ID = "none"  # the token id of a refused creation's event (no token exists)


class KeyScheme(StrEnum):
    HMAC = "hmac-sha256"  # also JWS HS256
    PUBLIC_KEY = "jws"  # JWS with an EC P-256 or Ed25519 public key


def create_token(actor: Actor, *, identity: str, role: Role, profiles: Sequence[str] | None, description: str | None,
                 expires_at: datetime | None) -> tuple[NewToken, dict[str, Any]]:
    """Store a new token (its hash) created by ``actor``; the token and its description.
    PROFILE_NOT_FOUND when a scope names a profile that does not exist."""
    now = actor.clock()
    with changing(actor, TokenCreated, {"token_id": REFUSED_TOKEN_ID}) as pending:
        pending.change = {"identity": identity, "role": role.value,
                          "profiles": sorted(profiles) if profiles is not None else None, "description": description,
                          "expires_at": expires_at.isoformat() if expires_at else None}
        if expires_at is not None and expires_at <= now:
            raise Problem(ErrorCode.SCHEMA_VIOLATION, "the token would already be expired",
                          errors=[{"field": "body.expires_at", "message": "must be in the future"}])
        for name in profiles or ():
            if store.get_profile(pending.db, name) is None:
                raise Problem(ErrorCode.PROFILE_NOT_FOUND, f"the scope names profile {name!r}, which does not exist", status=422)
        new = generate_token()
        store.add_token(pending.db, token_id=new.token_id, token_hash=new.token_hash, identity=identity, role=role,
                        profiles=list(profiles) if profiles is not None else None, description=description,
                        created_by=actor.name, now=now, expires_at=expires_at)
        pending.about["token_id"] = new.token_id
    described = {"token_id": new.token_id, "identity": identity, "role": role.value,
                 "profiles": sorted(profiles) if profiles is not None else None, "description": description,
                 "created_by": actor.name, "created_at": now.isoformat(),
                 "expires_at": expires_at.isoformat() if expires_at else None}
    return new, described


def revoke_token(actor: Actor, token_id: str) -> None:
    """TOKEN_NOT_FOUND (not recorded: there is nothing to audit) when no such token exists."""
    with changing(actor, TokenRevoked, {"token_id": token_id}, unrecorded={ApiCode.TOKEN_NOT_FOUND}) as pending:
        if not store.revoke_token(pending.db, token_id, actor.clock()):
            raise Problem(ApiCode.TOKEN_NOT_FOUND, f"no token {token_id!r}", status=404)
        pending.change = {"revoked": True}


def _key_material(scheme: KeyScheme, secret_base64: str | None, public_key_pem: str | None) -> tuple[bytes | None, bool]:
    if scheme is KeyScheme.HMAC:
        if public_key_pem is not None:
            raise Problem(ErrorCode.SCHEMA_VIOLATION, "an hmac-sha256 key has no public_key_pem")
        if secret_base64 is None:
            return secrets.token_bytes(32), True
        try:
            return base64.b64decode(secret_base64, validate=True), False
        except (binascii.Error, ValueError):
            raise Problem(ErrorCode.SCHEMA_VIOLATION, "secret_base64 is not base64") from None
    if public_key_pem is None or secret_base64 is not None:
        raise Problem(ErrorCode.SCHEMA_VIOLATION, "a jws key needs public_key_pem and no secret_base64")
    return None, False


def add_requester_key(actor: Actor, box: SecretBox, *, requester: str, key_id: str, scheme: KeyScheme,
                      secret_base64: str | None, public_key_pem: str | None) -> bytes | None:
    """Register a key for ``requester``; the HMAC secret when it was generated here (to answer once), else None.
    REQUESTER_KEY_EXISTS while a key with that id is not revoked; SCHEMA_VIOLATION for an unusable key."""
    with changing(actor, RequesterKeyAdded, {"requester": requester, "key_id": key_id}) as pending:
        pending.change = {"scheme": scheme.value, **({"secret": REDACTED} if scheme is KeyScheme.HMAC else {})}
        secret, generated = _key_material(scheme, secret_base64, public_key_pem)
        if public_key_pem is not None:
            pending.change["public_key_pem"] = public_key_pem
        existing = pending.db.get(GatewayRequesterKey, (requester, key_id))
        if existing is not None and existing.revoked_at is None:
            raise Problem("REQUESTER_KEY_EXISTS", f"requester {requester!r} has a key {key_id!r}: revoke it first "
                          "or choose another key id", status=409)
        try:
            store.add_requester_key(pending.db, box, requester=requester, key_id=key_id, secret=secret,
                                    public_key_pem=public_key_pem, now=actor.clock())
        except (ValueError, TypeError) as exc:
            raise Problem(ErrorCode.SCHEMA_VIOLATION, f"the key is not usable: {exc}") from None
    return secret if generated else None


def revoke_requester_key(actor: Actor, *, requester: str, key_id: str) -> None:
    """REQUESTER_KEY_NOT_FOUND (not recorded) when the requester has no such key."""
    with changing(actor, RequesterKeyRevoked, {"requester": requester, "key_id": key_id},
                  unrecorded={ApiCode.REQUESTER_KEY_NOT_FOUND}) as pending:
        if not store.revoke_requester_key(pending.db, requester, key_id, actor.clock()):
            raise Problem(ApiCode.REQUESTER_KEY_NOT_FOUND, f"requester {requester!r} has no key {key_id!r}", status=404)
        pending.change = {"revoked": True}
