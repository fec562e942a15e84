"""``/v1/acme`` (admin token; what ``certrail acme`` calls): External Account Binding keys and ACME accounts.

- ``POST /v1/acme/eab-keys`` ``{"requester", "profiles": [...]}``: a new EAB key; its HMAC key (base64url) is in
  this answer and nowhere else, ever (stored sealed; the admin event says ``hmac_key: ***``);
- ``GET /v1/acme/eab-keys``: every key (never the HMAC key), unused, used (by which account) or revoked;
- ``DELETE /v1/acme/eab-keys/{key_id}``: revoke (an unused key can no longer create an account);
- ``GET /v1/acme/accounts``: the ACME accounts (admin or auditor);
- ``GET /v1/acme/orders?limit=N``: the newest orders of every account with their authorizations (admin or auditor).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine

from services.common.connectors.secretbox import SecretBox
from services.common.contracts.admin import AcmeEabKeyCreated, AcmeEabKeyRevoked
from services.common.contracts.identity import Identity, ProfileName
from services.common.db import read_session
from services.gateway.acme import changes, orders_store, store
from services.gateway.acme.jws import b64url_encode
from services.gateway.api_common import AdminPublisher, Problem, body_as, claims_of, in_thread, json_body_doc, require
from services.gateway.config.change import refuse
from services.gateway.policy.tokens import Action, TokenClaims

#: the requester of a refusal's event when the request was refused before naming one (or its key)
REFUSED_REQUESTER = "unknown"


class EabKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requester: Identity = Field(description="The requester the ACME account acts as (its requests' requester)")
    profiles: Annotated[list[ProfileName], Field(min_length=1, max_length=100)] = Field(
        description="The provisioning profiles the account may order under (each must allow the requester)")


def list_eab_keys(engine: Engine) -> list[dict[str, Any]]:
    with read_session(engine) as session:
        return [k.describe() for k in store.list_eab_keys(session)]


def list_accounts(engine: Engine) -> list[dict[str, Any]]:
    with read_session(engine) as session:
        return [a.describe() for a in store.list_accounts(session)]


def list_orders(engine: Engine, limit: int, now: datetime) -> list[dict[str, Any]]:
    """The newest orders, each with its status as a client sees it now and its authorizations' (never a token)."""
    with read_session(engine) as session:
        orders = orders_store.recent_orders(session, limit)
        authzs = orders_store.statuses(session, sorted({a for o in orders for a in o.authz_ids}))
    return [{"order_id": o.order_id, "account_id": o.account_id, "status": o.status_at(now), "identifiers": o.identifiers,
             "profiles": o.profiles, "error": (o.error or {}).get("type"), "created_at": o.created_at.isoformat(),
             "expires_at": o.expires_at.isoformat(), "replaces": o.replaces,
             "authorizations": [{"identifier": authzs[a].identifier, "status": authzs[a].status_at(now)}
                                for a in o.authz_ids if a in authzs]}
            for o in orders]


def admin_router(engine: Engine, box: SecretBox, admin: AdminPublisher, clock: Callable[[], datetime],
                 directory_url: str) -> APIRouter:
    api = APIRouter(prefix="/v1/acme", tags=["acme"])

    @api.post("/eab-keys", status_code=201, openapi_extra=json_body_doc(EabKeyBody),
              summary="Create an External Account Binding key (its HMAC key is answered once, never again)")
    async def create(request: Request, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        actor = admin.actor(engine, claims.identity)
        try:
            try:
                require(claims, Action.TOKEN_MANAGE)
                body = await body_as(request, EabKeyBody)
            except Problem as problem:
                raise await in_thread(refuse, actor, AcmeEabKeyCreated,
                                      {"requester": REFUSED_REQUESTER, "eab_key_id": changes.REFUSED_KEY_ID}, problem) from None
            key, hmac_key = await in_thread(lambda: changes.create_eab_key(actor, box, requester=body.requester,
                                                                           profiles=list(body.profiles)))
        finally:
            await admin.flush(actor)
        return {**key.describe(), "hmac_key": b64url_encode(hmac_key), "directory": directory_url,
                "note": "store the HMAC key now: it is never shown again; it creates one ACME account"}

    @api.get("/eab-keys", summary="List External Account Binding keys (never their HMAC keys)")
    async def list_keys(claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        require(claims, Action.TOKEN_MANAGE)
        return {"eab_keys": await in_thread(list_eab_keys, engine)}

    @api.delete("/eab-keys/{key_id}", summary="Revoke an External Account Binding key")
    async def revoke(key_id: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        actor = admin.actor(engine, claims.identity)
        try:
            try:
                require(claims, Action.TOKEN_MANAGE)
            except Problem as problem:
                raise await in_thread(refuse, actor, AcmeEabKeyRevoked,
                                      {"requester": REFUSED_REQUESTER, "eab_key_id": key_id}, problem) from None
            revoked = await in_thread(changes.revoke_eab_key, actor, key_id)
        finally:
            await admin.flush(actor)
        return revoked.describe()

    @api.get("/accounts", summary="List ACME accounts")
    async def accounts(claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        require(claims, Action.AUDIT_READ)
        return {"accounts": await in_thread(list_accounts, engine)}

    @api.get("/orders", summary="List the newest ACME orders with their authorizations")
    async def orders(claims: TokenClaims = Depends(claims_of),
                     limit: Annotated[int, Query(ge=1, le=500, description="At most this many, newest first")] = 100,
                     ) -> dict[str, Any]:
        require(claims, Action.AUDIT_READ)
        return {"orders": await in_thread(list_orders, engine, limit, clock())}

    return api
