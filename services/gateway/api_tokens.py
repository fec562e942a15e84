"""``/v1/tokens`` (API tokens: created by admins, shown once, hashed at rest) and
``/v1/requesters/{requester}/keys`` (the keys that sign requests on ``certrail.requests``).
Every change goes through services/gateway/config/ (the table and its admin event in one
transaction; decision 0019), as ``certrail tokens`` does."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy import Engine

from services.common.connectors.secretbox import SecretBox
from services.common.contracts.admin import RequesterKeyAdded, RequesterKeyRevoked, TokenCreated, TokenRevoked
from services.common.contracts.errors import ErrorCode
from services.common.contracts.identity import Identity, ProfileName
from services.common.contracts.signing import MIN_HMAC_KEY_BYTES
from services.common.db import read_session
from services.gateway import store
from services.gateway.api_common import AdminPublisher, Problem, body_as, claims_of, in_thread, json_body_doc, require
from services.gateway.config import tokens as config_tokens
from services.gateway.config.actor import Actor
from services.gateway.config.change import refuse
from services.gateway.config.tokens import REFUSED_TOKEN_ID, KeyScheme
from services.gateway.policy.tokens import Action, NewToken, Role, TokenClaims

MAX_TOKEN_DAYS = 3650


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identity: Identity = Field(description="The acting identity (the requester identity of its requests)")
    role: Role
    profiles: Annotated[list[ProfileName], Field(max_length=500)] | None = Field(
        default=None, description="Scope: only these profiles (absent: every profile)")
    description: Annotated[str, Field(max_length=256)] | None = None
    expires_in_days: Annotated[int, Field(ge=1, le=MAX_TOKEN_DAYS)] | None = None
    expires_at: AwareDatetime | None = None


class RequesterKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")]
    scheme: KeyScheme = KeyScheme.HMAC
    secret_base64: SecretStr | None = Field(default=None, description=f"HMAC: at least {MIN_HMAC_KEY_BYTES} bytes, base64; "
                                            "absent: one is generated and answered once")
    public_key_pem: Annotated[str, Field(max_length=8192)] | None = Field(default=None, description="jws: EC P-256 or Ed25519")


def create_token(engine: Engine, *, identity: str, role: Role, profiles: Sequence[str] | None, description: str | None,
                 created_by: str, now: datetime, expires_at: datetime | None) -> tuple[NewToken, dict[str, Any]]:
    """`services.gateway.config.tokens.create_token` by ``created_by`` at ``now`` (its TokenCreated stays in the
    outbox for the gateway's relay): how tests and seeding code make a token."""
    return config_tokens.create_token(Actor(engine, created_by, lambda: now), identity=identity, role=role,
                                      profiles=profiles, description=description, expires_at=expires_at)


def list_tokens(engine: Engine) -> list[dict[str, Any]]:
    with read_session(engine) as session:
        return store.list_tokens(session)


def tokens_router(engine: Engine, admin: AdminPublisher, clock: Callable[[], datetime]) -> APIRouter:
    api = APIRouter(prefix="/v1/tokens", tags=["tokens"])

    @api.post("", status_code=201, summary="Create an API token (the token is answered once, never again)",
              openapi_extra=json_body_doc(TokenBody))
    async def create(request: Request, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        actor = admin.actor(engine, claims.identity)
        try:
            try:
                require(claims, Action.TOKEN_MANAGE)
                body = await body_as(request, TokenBody)
                if body.expires_in_days is not None and body.expires_at is not None:
                    raise Problem(ErrorCode.SCHEMA_VIOLATION, "give expires_in_days or expires_at, not both")
            except Problem as problem:
                raise await in_thread(refuse, actor, TokenCreated, {"token_id": REFUSED_TOKEN_ID}, problem) from None
            now = clock()
            expires = body.expires_at or (now + timedelta(days=body.expires_in_days) if body.expires_in_days else None)
            new, described = await in_thread(lambda: config_tokens.create_token(
                actor, identity=body.identity, role=body.role, profiles=body.profiles, description=body.description,
                expires_at=expires))
        finally:
            await admin.flush(actor)
        return {**described, "token": new.token, "note": "store the token now: it is never shown again"}

    @api.get("", summary="List API tokens (never the tokens themselves)")
    async def list_(claims: TokenClaims = Depends(claims_of)) -> list[dict[str, Any]]:
        require(claims, Action.TOKEN_MANAGE)
        return await in_thread(list_tokens, engine)

    @api.delete("/{token_id}", status_code=204, summary="Revoke an API token")
    async def revoke(token_id: str, claims: TokenClaims = Depends(claims_of)) -> None:
        actor = admin.actor(engine, claims.identity)
        try:
            try:
                require(claims, Action.TOKEN_MANAGE)
            except Problem as problem:
                raise await in_thread(refuse, actor, TokenRevoked, {"token_id": token_id}, problem) from None
            await in_thread(config_tokens.revoke_token, actor, token_id)
        finally:
            await admin.flush(actor)

    return api


def keys_router(engine: Engine, box: SecretBox, clock: Callable[[], datetime], admin: AdminPublisher | None = None) -> APIRouter:
    """``admin``: publishes each change's event at once; without it, the gateway's outbox relay publishes them."""
    api = APIRouter(prefix="/v1/requesters/{requester}/keys", tags=["requester keys"])

    async def flush(actor: Actor) -> None:
        if admin is not None:
            await admin.flush(actor)

    @api.post("", status_code=201, summary="Register a key that signs the requester's Kafka requests",
              openapi_extra=json_body_doc(RequesterKeyBody))
    async def add(requester: Identity, request: Request, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        actor = Actor(engine, claims.identity, clock)
        about = {"requester": requester, "key_id": "-"}
        try:
            try:
                require(claims, Action.TOKEN_MANAGE)
                body = await body_as(request, RequesterKeyBody)
            except Problem as problem:
                raise await in_thread(refuse, actor, RequesterKeyAdded, about, problem) from None
            secret = await in_thread(lambda: config_tokens.add_requester_key(
                actor, box, requester=requester, key_id=body.key_id, scheme=body.scheme,
                secret_base64=body.secret_base64.get_secret_value() if body.secret_base64 is not None else None,
                public_key_pem=body.public_key_pem))
        finally:
            await flush(actor)
        answer: dict[str, Any] = {"requester": requester, "key_id": body.key_id, "scheme": body.scheme.value}
        if secret is not None:
            answer["secret_base64"] = base64.b64encode(secret).decode("ascii")
            answer["note"] = "store the secret now: it is never shown again"
        return answer

    @api.delete("/{key_id}", status_code=204, summary="Revoke a requester key")
    async def revoke(requester: str, key_id: str, claims: TokenClaims = Depends(claims_of)) -> None:
        actor = Actor(engine, claims.identity, clock)
        try:
            try:
                require(claims, Action.TOKEN_MANAGE)
            except Problem as problem:
                raise await in_thread(refuse, actor, RequesterKeyRevoked, {"requester": requester, "key_id": key_id},
                                      problem) from None
            await in_thread(lambda: config_tokens.revoke_requester_key(actor, requester=requester, key_id=key_id))
        finally:
            await flush(actor)

    return api
