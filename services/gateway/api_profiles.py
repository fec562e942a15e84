"""``/v1/profiles``: provisioning profiles ("provisioning bots"). Admins write (a token scoped to
profiles writes only those); every role reads what its token may see. The body is a
`ProvisioningProfile` as JSON; its connector must exist; a profile that certificates are managed
under cannot be deleted. Every change, refused ones too, goes through services/gateway/config/
(the table and its admin event in one transaction; decision 0019)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import Engine

from services.common.contracts.admin import ProfileCreated, ProfileDeleted, ProfileUpdated
from services.common.contracts.envelope import Message
from services.common.contracts.errors import ErrorCode
from services.common.db import read_session
from services.gateway import store
from services.gateway.api_common import (
    AdminPublisher,
    Problem,
    claims_of,
    in_thread,
    json_body_doc,
    json_values,
    parse_model,
)
from services.gateway.config import profiles as config_profiles
from services.gateway.config.change import refuse
from services.gateway.policy import ProvisioningProfile
from services.gateway.policy.tokens import Action, Role, TokenClaims, authorise, readable_profiles
from services.gateway.policy.violation import shown


def router(engine: Engine, admin: AdminPublisher, clock: Callable[[], datetime]) -> APIRouter:
    api = APIRouter(prefix="/v1/profiles", tags=["profiles"])

    def may_write(claims: TokenClaims, name: str) -> None:
        # scoped tokens write only their profiles; the check needs only the name
        if claims.role is not Role.ADMIN:
            raise Problem(ErrorCode.REQUESTER_NOT_AUTHORISED, f"role {claims.role} may not {Action.PROFILE_WRITE} (allowed roles: admin)")
        if claims.profiles is not None and name not in claims.profiles:
            raise Problem(ErrorCode.REQUESTER_NOT_AUTHORISED, f"token {claims.token_id} is not scoped to profile {name!r}")

    async def write(cls: type[Message], request: Request, claims: TokenClaims, name: str | None, create: bool) -> dict[str, Any]:
        actor = admin.actor(engine, claims.identity)
        subject = name
        try:
            try:
                if name is not None:
                    may_write(claims, name)
                _, values = await json_values(request)
                if subject is None and isinstance(values.get("name"), str):
                    subject = values["name"]
                profile = parse_model(ProvisioningProfile, values)
                if name is not None and profile.name != name:
                    raise Problem(ErrorCode.SCHEMA_VIOLATION, f"the body names profile {profile.name!r}, the path {name!r}",
                                  errors=[{"field": "body.name", "message": "must equal the name in the path"}])
                may_write(claims, profile.name)
            except Problem as problem:
                raise await in_thread(refuse, actor, cls, {"profile": subject or "-"}, problem) from None
            return await in_thread(lambda: config_profiles.put_profile(actor, profile, create=create))
        finally:
            await admin.flush(actor)

    @api.post("", status_code=201, summary="Create a provisioning profile", openapi_extra=json_body_doc(ProvisioningProfile))
    async def create(request: Request, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        return await write(ProfileCreated, request, claims, None, True)

    @api.put("/{name}", summary="Replace a provisioning profile", openapi_extra=json_body_doc(ProvisioningProfile))
    async def replace(name: str, request: Request, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        return await write(ProfileUpdated, request, claims, name, False)

    @api.get("", summary="List the provisioning profiles the token may see")
    async def list_(claims: TokenClaims = Depends(claims_of)) -> list[dict[str, Any]]:
        authorise(claims, Action.PROFILE_READ)  # every role may list; scope filters

        def load() -> list[dict[str, Any]]:
            with read_session(engine) as session:
                profiles = store.list_profiles(session)
            visible = readable_profiles(claims, [p.profile for p in profiles])  # requesters: the profiles that list them
            return [p.describe() for p in profiles if visible is None or p.profile.name in visible]

        return await in_thread(load)

    @api.get("/{name}", summary="Show a provisioning profile")
    async def show(name: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        def load() -> Any:
            with read_session(engine) as session:
                return store.get_profile(session, name)

        stored = await in_thread(load)
        if stored is None:
            raise Problem(ErrorCode.PROFILE_NOT_FOUND, f"no provisioning profile named {name!r}")
        decision = authorise(claims, Action.PROFILE_READ, stored.profile)
        if not decision.allowed:
            raise Problem(ErrorCode.REQUESTER_NOT_AUTHORISED, decision.reason)
        if readable_profiles(claims, [stored.profile]) == frozenset():  # a requester the profile does not list
            raise Problem(ErrorCode.REQUESTER_NOT_AUTHORISED,
                          f"requester {shown(claims.identity)} is not among profile {shown(name)}'s allowed requesters")
        return stored.describe()

    @api.delete("/{name}", status_code=204, summary="Delete a provisioning profile (refused while certificates use it)")
    async def delete(name: str, claims: TokenClaims = Depends(claims_of)) -> None:
        actor = admin.actor(engine, claims.identity)
        try:
            try:
                may_write(claims, name)
            except Problem as problem:
                raise await in_thread(refuse, actor, ProfileDeleted, {"profile": name}, problem) from None
            await in_thread(config_profiles.delete_profile, actor, name)
        finally:
            await admin.flush(actor)

    return api
