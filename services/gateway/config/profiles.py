"""Provisioning profiles: create, replace and delete, each with its admin event (ProfileCreated,
ProfileUpdated, ProfileDeleted). A profile holds no secret: the event names the fields changed."""

from __future__ import annotations

from typing import Any

from services.common.contracts.admin import ProfileCreated, ProfileDeleted, ProfileUpdated
from services.common.contracts.errors import ErrorCode
from services.gateway import connector_view, store
from services.gateway.api_common import ApiCode, Problem
from services.gateway.config.actor import Actor
from services.gateway.config.change import changing
from services.gateway.policy import ProvisioningProfile


def _changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in after.items() if before.get(k) != v}


def put_profile(actor: Actor, profile: ProvisioningProfile, *, create: bool) -> dict[str, Any]:
    """Create (PROFILE_EXISTS if it exists) or replace (PROFILE_NOT_FOUND if it does not) a profile;
    its description. CONNECTOR_NOT_FOUND when it names a connector that does not exist."""
    cls = ProfileCreated if create else ProfileUpdated
    with changing(actor, cls, {"profile": profile.name}) as pending:
        existing = store.get_profile(pending.db, profile.name)
        if create and existing is not None:
            raise Problem(ApiCode.PROFILE_EXISTS, f"profile {profile.name!r} exists (PUT /v1/profiles/{profile.name} replaces it)")
        if not create and existing is None:
            raise Problem(ErrorCode.PROFILE_NOT_FOUND, f"no provisioning profile named {profile.name!r}")
        if connector_view.live_status(pending.db, profile.connector) is None:
            raise Problem(ErrorCode.CONNECTOR_NOT_FOUND, f"the profile names connector {profile.connector!r}, which does not exist",
                          status=422)
        stored = store.put_profile(pending.db, profile, actor.clock())
        before = existing.profile.model_dump(mode="json") if existing is not None else {}
        pending.change = _changed(before, profile.model_dump(mode="json"))
    return stored.describe()


def delete_profile(actor: Actor, name: str) -> None:
    """PROFILE_NOT_FOUND (not recorded) when there is no such profile; PROFILE_IN_USE while managed
    certificates use it."""
    with changing(actor, ProfileDeleted, {"profile": name}, unrecorded={ErrorCode.PROFILE_NOT_FOUND}) as pending:
        if store.get_profile(pending.db, name) is None:
            raise Problem(ErrorCode.PROFILE_NOT_FOUND, f"no provisioning profile named {name!r}")
        used = store.certificates_of_profile(pending.db, name)
        if used:
            raise Problem(ApiCode.PROFILE_IN_USE, f"{used} managed certificate(s) use profile {name!r}")
        store.delete_profile(pending.db, name)
