"""Deployment targets and bindings: put (add or replace, probed first), remove (refused while bound),
bind and unbind, each with its admin event (TargetCreated/Updated/Deleted, TargetBound/Unbound). An
event carries the target's kind, its non-secret configuration and its secret NAMES (``***``), never a
secret value."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from services.common.connectors.secretbox import SecretBox, SecretBoxError
from services.common.contracts.admin import REDACTED, TargetBound, TargetCreated, TargetDeleted, TargetUnbound, TargetUpdated
from services.common.contracts.identity import PROFILE_NAME_PATTERN
from services.common.db import read_session
from services.common.db_schema import DeployerTargetRow
from services.deployer import store
from services.deployer.config.change import Actor, ConfigCode, Refused, changing, refuse
from services.deployer.config.probe import probe_target
from services.deployer.targets.base import TargetError
from services.deployer.targets.config import SECRET_FIELDS, TargetKind, validate_secrets

Probe = Callable[[store.TargetSpec], Awaitable[None]]


def _invalid(exc: Exception) -> Refused:
    if isinstance(exc, ValidationError):
        text = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors(include_url=False))
    else:
        text = str(exc)
    return Refused(ConfigCode.INVALID_INPUT, text)


def _kept_secrets(actor: Actor, box: SecretBox, name: str, kind: TargetKind, given: dict[str, str]) -> dict[str, str]:
    """The stored secrets a replace of ``name`` leaves out, when the stored target is of the same kind."""
    wanted = set(SECRET_FIELDS[kind]) - set(given)
    if not wanted:
        return {}
    with read_session(actor.engine) as session:
        row = session.get(DeployerTargetRow, name)
        if row is None or row.kind != kind.value or row.secrets is None:
            return {}
        stored = store.get_target(session, name, box).secrets
    return {n: v for n, v in stored.items() if n in wanted}


def _exists(actor: Actor, name: str) -> bool:
    with read_session(actor.engine) as session:
        return session.get(DeployerTargetRow, name) is not None


async def put_target(actor: Actor, box: SecretBox, *, name: str, kind: str, config: dict[str, Any], secrets: dict[str, str],
                     replace: bool, probe: Probe = probe_target) -> store.TargetSpec:
    """Add (or, with ``replace``, replace) a target after validating and probing it. Refused:
    INVALID_INPUT, TARGET_EXISTS (without ``replace``), or the probe's code (TARGET_UNREACHABLE,
    INSTALL_FAILED). A refusal is recorded (when ``name`` is a valid name).

    A replace that leaves out a secret the stored target of the same kind holds keeps the stored
    value (an edit of a webhook's URL does not need its HMAC secret again); the event names the
    secrets given (``secrets``) and the ones kept (``secrets_kept``), never a value."""
    existed = await asyncio.to_thread(_exists, actor, name)
    cls = TargetUpdated if existed else TargetCreated
    about = {"target": name}
    change: dict[str, Any] = {"kind": str(kind)[:32], "secrets": {n[:64]: REDACTED for n in sorted(secrets)[:16]}}

    async def refused(problem: Refused) -> Refused:
        return await asyncio.to_thread(refuse, actor, cls, about, problem, change)

    try:
        target_kind = TargetKind(kind)
        if not re.fullmatch(store.TARGET_NAME_PATTERN, name):
            raise ValueError(f"target name {name!r} must match {store.TARGET_NAME_PATTERN}")
        parsed = store.parse_config(target_kind, config)
        if existed and replace:
            try:
                kept = await asyncio.to_thread(_kept_secrets, actor, box, name, target_kind, secrets)
            except SecretBoxError as exc:
                raise ValueError(f"the stored secrets of target {name!r} cannot be read ({exc}): give them again") from None
            if kept:
                change["secrets_kept"] = sorted(kept)
                secrets = {**kept, **secrets}
        validate_secrets(target_kind, secrets)
    except (ValueError, ValidationError) as exc:
        raise await refused(_invalid(exc)) from None
    change["config"] = parsed.model_dump(mode="json")
    if existed and not replace:
        raise await refused(Refused(ConfigCode.TARGET_EXISTS, f"target {name!r} exists (remove it first, or replace it)",
                                    status=409))
    try:
        await probe(store.TargetSpec(name, target_kind, parsed, tuple(sorted(secrets)), dict(secrets)))
    except TargetError as exc:
        raise await refused(Refused(exc.code, f"the probe failed: {exc.message}")) from None

    def write() -> store.TargetSpec:
        with changing(actor, cls, about) as pending:
            pending.change = change
            try:
                return store.add_target(pending.db, box, name, target_kind, config, secrets, actor.clock(), replace=True)
            except (ValueError, ValidationError) as exc:
                raise _invalid(exc) from None
    return await asyncio.to_thread(write)


def remove_target(actor: Actor, name: str) -> None:
    """TARGET_NOT_FOUND (not recorded); TARGET_IN_USE while a profile is bound to it (recorded)."""
    with changing(actor, TargetDeleted, {"target": name}, unrecorded={ConfigCode.TARGET_NOT_FOUND}) as pending:
        try:
            spec = store.get_target(pending.db, name)
        except store.TargetNotFound as exc:
            raise Refused(ConfigCode.TARGET_NOT_FOUND, str(exc), status=404) from None
        pending.change = {"kind": spec.kind.value}
        bound = [p for p, t in store.bindings(pending.db) if t == name]
        if bound:
            raise Refused(ConfigCode.TARGET_IN_USE, f"target {name!r} is bound to profile(s) {', '.join(bound)}: "
                                                    "unbind it first", status=409)
        store.remove_target(pending.db, name)


def _profile(profile: str) -> None:
    if not re.fullmatch(PROFILE_NAME_PATTERN, profile):
        raise Refused(ConfigCode.INVALID_INPUT, f"profile name {profile[:80]!r} must match {PROFILE_NAME_PATTERN}")


def _bound(actor: Actor, profile: str, target: str) -> bool:
    with read_session(actor.engine) as session:
        return (profile, target) in store.bindings(session, profile)


def bind(actor: Actor, profile: str, target: str) -> bool:
    """Deploy ``profile``'s certificates to ``target``; False (nothing recorded) when it already does.
    TARGET_NOT_FOUND (not recorded), INVALID_INPUT for a profile name that cannot be one (not recorded)."""
    _profile(profile)
    if _bound(actor, profile, target):
        return False
    with changing(actor, TargetBound, {"target": target, "profile": profile},
                  unrecorded={ConfigCode.TARGET_NOT_FOUND}) as pending:
        try:
            store.get_target(pending.db, target)
        except store.TargetNotFound as exc:
            raise Refused(ConfigCode.TARGET_NOT_FOUND, str(exc), status=404) from None
        store.bind(pending.db, profile, target, actor.clock())
        pending.change = {"bound": True}
    return True


#: what a caller that refused a change itself may report (record_refusal): its event class
REPORTED: dict[str, type[TargetCreated | TargetUpdated | TargetDeleted | TargetBound | TargetUnbound] | None] = {
    "put_target": None,  # TargetUpdated when the target exists, else TargetCreated (as put_target's own refusals)
    "remove_target": TargetDeleted,
    "bind": TargetBound,
    "unbind": TargetUnbound,
}


def record_refusal(actor: Actor, action: str, *, target: str, profile: str | None, code: str, message: str,
                   fields: list[str]) -> bool:
    """Record a change that its caller refused before asking for it (the gateway's door: the token may not
    change targets, the body is not a target): its event, outcome refused, ``code`` and ``message``, and
    ``change.fields``: the names of the refused body's fields (never a value). A refused put is
    TargetUpdated when the target exists now, else TargetCreated: what put_target would record. False when
    the event cannot name its subject (a name that is not a target's or a profile's): nothing recorded."""
    cls = REPORTED[action]
    about = {"target": target}
    if cls is None:
        cls = TargetUpdated if _exists(actor, target) else TargetCreated
    elif cls in (TargetBound, TargetUnbound):
        about["profile"] = profile or ""
    before = len(actor.recorded)
    refuse(actor, cls, about, Refused(code, message), {"fields": sorted({f[:200] for f in fields})[:64]} if fields else {})
    return len(actor.recorded) > before


def unbind(actor: Actor, profile: str, target: str) -> None:
    """BINDING_NOT_FOUND (not recorded) when ``profile`` does not deploy to ``target``."""
    _profile(profile)
    with changing(actor, TargetUnbound, {"target": target, "profile": profile},
                  unrecorded={ConfigCode.BINDING_NOT_FOUND}) as pending:
        if not store.unbind(pending.db, profile, target):
            raise Refused(ConfigCode.BINDING_NOT_FOUND, f"profile {profile} is not bound to target {target}", status=404)
        pending.change = {"bound": False}
