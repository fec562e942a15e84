"""``/v1/tokens`` (API tokens: created by admins, shown once, hashed at rest) and
``/v1/requesters/{requester}/keys`` (the keys that sign requests on ``certrail.requests``).
`create_token` and `revoke_token` are shared with ``certrail tokens`` (the CLI writes the
database directly: that is how the first admin token exists)."""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy import Engine

from services.common.connectors.secretbox import SecretBox
from services.common.contracts.admin import AdminOutcome, TokenCreated, TokenRevoked
from services.common.contracts.errors import ErrorCode
from services.common.contracts.identity import Identity, ProfileName
from services.common.contracts.signing import MIN_HMAC_KEY_BYTES
from services.common.db import read_session, write_session
from services.common.db_schema import GatewayRequesterKey
from services.gateway import store
from services.gateway.api_common import AdminPublisher, ApiCode, Problem, body_as, claims_of, in_thread, json_body_doc, require
from services.gateway.policy.tokens import Action, NewToken, Role, TokenClaims, generate_token

MAX_TOKEN_DAYS = 3650
REFUSED_TOKEN_ID = "none"  # the token id of a refused creation's event (no token exists)


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identity: Identity = Field(description="The acting identity (the requester identity of its requests)")
    role: Role
    profiles: Annotated[list[ProfileName], Field(max_length=500)] | None = Field(
        default=None, description="Scope: only these profiles (absent: every profile)")
    description: Annotated[str, Field(max_length=256)] | None = None
    expires_in_days: Annotated[int, Field(ge=1, le=MAX_TOKEN_DAYS)] | None = None
    expires_at: AwareDatetime | None = None


class KeyScheme(StrEnum):
    HMAC = "hmac-sha256"  # also JWS HS256
    PUBLIC_KEY = "jws"  # JWS with an EC P-256 or Ed25519 public key


class RequesterKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")]
    scheme: KeyScheme = KeyScheme.HMAC
    secret_base64: SecretStr | None = Field(default=None, description=f"HMAC: at least {MIN_HMAC_KEY_BYTES} bytes, base64; "
                                            "absent: one is generated and answered once")
    public_key_pem: Annotated[str, Field(max_length=8192)] | None = Field(default=None, description="jws: EC P-256 or Ed25519")


def create_token(engine: Engine, *, identity: str, role: Role, profiles: Sequence[str] | None, description: str | None,
                 created_by: str, now: datetime, expires_at: datetime | None) -> tuple[NewToken, dict[str, Any]]:
    """Store a new token (its hash) and return it with its description; PROFILE_NOT_FOUND when a
    scope names a profile that does not exist."""
    if expires_at is not None and expires_at <= now:
        raise Problem(ErrorCode.SCHEMA_VIOLATION, "the token would already be expired",
                      errors=[{"field": "body.expires_at", "message": "must be in the future"}])
    new = generate_token()
    with write_session(engine) as session:
        for name in profiles or ():
            if store.get_profile(session, name) is None:
                raise Problem(ErrorCode.PROFILE_NOT_FOUND, f"the scope names profile {name!r}, which does not exist", status=422)
        store.add_token(session, token_id=new.token_id, token_hash=new.token_hash, identity=identity, role=role,
                        profiles=list(profiles) if profiles is not None else None, description=description,
                        created_by=created_by, now=now, expires_at=expires_at)
    described = {"token_id": new.token_id, "identity": identity, "role": role.value,
                 "profiles": sorted(profiles) if profiles is not None else None, "description": description,
                 "created_by": created_by, "created_at": now.isoformat(),
                 "expires_at": expires_at.isoformat() if expires_at else None}
    return new, described


def revoke_token(engine: Engine, token_id: str, now: datetime) -> None:
    with write_session(engine) as session:
        if not store.revoke_token(session, token_id, now):
            raise Problem(ApiCode.TOKEN_NOT_FOUND, f"no token {token_id!r}", status=404)


def list_tokens(engine: Engine) -> list[dict[str, Any]]:
    with read_session(engine) as session:
        return store.list_tokens(session)


def _change(described: dict[str, Any]) -> dict[str, Any]:
    return {k: described[k] for k in ("identity", "role", "profiles", "description", "expires_at")}


def tokens_router(engine: Engine, admin: AdminPublisher, clock: Callable[[], datetime]) -> APIRouter:
    api = APIRouter(prefix="/v1/tokens", tags=["tokens"])

    async def refuse(cls: type[TokenCreated] | type[TokenRevoked], token_id: str, actor: str, problem: Problem) -> Problem:
        await admin.publish(cls, actor=actor, subject_field="token_id", subject=token_id, outcome=AdminOutcome.REFUSED,
                            code=problem.code, message=problem.message)
        return problem

    @api.post("", status_code=201, summary="Create an API token (the token is answered once, never again)",
              openapi_extra=json_body_doc(TokenBody))
    async def create(request: Request, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        try:
            require(claims, Action.TOKEN_MANAGE)
            body = await body_as(request, TokenBody)
            if body.expires_in_days is not None and body.expires_at is not None:
                raise Problem(ErrorCode.SCHEMA_VIOLATION, "give expires_in_days or expires_at, not both")
            now = clock()
            expires = body.expires_at or (now + timedelta(days=body.expires_in_days) if body.expires_in_days else None)
            new, described = await in_thread(lambda: create_token(
                engine, identity=body.identity, role=body.role, profiles=body.profiles, description=body.description,
                created_by=claims.identity, now=now, expires_at=expires))
        except Problem as problem:
            raise await refuse(TokenCreated, REFUSED_TOKEN_ID, claims.identity, problem) from None
        await admin.publish(TokenCreated, actor=claims.identity, subject_field="token_id", subject=new.token_id,
                            outcome=AdminOutcome.SUCCEEDED, change=_change(described))
        return {**described, "token": new.token, "note": "store the token now: it is never shown again"}

    @api.get("", summary="List API tokens (never the tokens themselves)")
    async def list_(claims: TokenClaims = Depends(claims_of)) -> list[dict[str, Any]]:
        require(claims, Action.TOKEN_MANAGE)
        return await in_thread(list_tokens, engine)

    @api.delete("/{token_id}", status_code=204, summary="Revoke an API token")
    async def revoke(token_id: str, claims: TokenClaims = Depends(claims_of)) -> None:
        try:
            require(claims, Action.TOKEN_MANAGE)
            await in_thread(revoke_token, engine, token_id, clock())
        except Problem as problem:
            if problem.code != ApiCode.TOKEN_NOT_FOUND:
                raise await refuse(TokenRevoked, token_id, claims.identity, problem) from None
            raise
        await admin.publish(TokenRevoked, actor=claims.identity, subject_field="token_id", subject=token_id,
                            outcome=AdminOutcome.SUCCEEDED, change={"revoked": True})

    return api


def keys_router(engine: Engine, box: SecretBox, clock: Callable[[], datetime]) -> APIRouter:
    api = APIRouter(prefix="/v1/requesters/{requester}/keys", tags=["requester keys"])

    @api.post("", status_code=201, summary="Register a key that signs the requester's Kafka requests",
              openapi_extra=json_body_doc(RequesterKeyBody))
    async def add(requester: Identity, request: Request, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        require(claims, Action.TOKEN_MANAGE)
        body = await body_as(request, RequesterKeyBody)
        secret: bytes | None = None
        generated = False
        if body.scheme is KeyScheme.HMAC:
            if body.public_key_pem is not None:
                raise Problem(ErrorCode.SCHEMA_VIOLATION, "an hmac-sha256 key has no public_key_pem")
            if body.secret_base64 is None:
                secret, generated = secrets.token_bytes(32), True
            else:
                try:
                    secret = base64.b64decode(body.secret_base64.get_secret_value(), validate=True)
                except (binascii.Error, ValueError):
                    raise Problem(ErrorCode.SCHEMA_VIOLATION, "secret_base64 is not base64") from None
        elif body.public_key_pem is None or body.secret_base64 is not None:
            raise Problem(ErrorCode.SCHEMA_VIOLATION, "a jws key needs public_key_pem and no secret_base64")

        def save() -> None:
            with write_session(engine) as session:
                existing = session.get(GatewayRequesterKey, (requester, body.key_id))
                if existing is not None and existing.revoked_at is None:
                    raise Problem("REQUESTER_KEY_EXISTS", f"requester {requester!r} has a key {body.key_id!r}: revoke it first "
                                  "or choose another key id", status=409)
                try:
                    store.add_requester_key(session, box, requester=requester, key_id=body.key_id, secret=secret,
                                            public_key_pem=body.public_key_pem, now=clock())
                except (ValueError, TypeError) as exc:
                    raise Problem(ErrorCode.SCHEMA_VIOLATION, f"the key is not usable: {exc}") from None

        await in_thread(save)
        answer: dict[str, Any] = {"requester": requester, "key_id": body.key_id, "scheme": body.scheme.value}
        if generated:
            assert secret is not None
            answer["secret_base64"] = base64.b64encode(secret).decode("ascii")
            answer["note"] = "store the secret now: it is never shown again"
        return answer

    @api.delete("/{key_id}", status_code=204, summary="Revoke a requester key")
    async def revoke(requester: str, key_id: str, claims: TokenClaims = Depends(claims_of)) -> None:
        require(claims, Action.TOKEN_MANAGE)

        def remove() -> None:
            with write_session(engine) as session:
                if not store.revoke_requester_key(session, requester, key_id, clock()):
                    raise Problem(ApiCode.REQUESTER_KEY_NOT_FOUND, f"requester {requester!r} has no key {key_id!r}", status=404)

        await in_thread(remove)

    return api
