"""emCA connectors: create, update, enable, disable, delete and rotate-secrets, each with its admin event
(ConnectorCreated/Updated/Activated/Deactivated/Deleted), secrets as ``***`` (decisions 0019 and 0034).

The registry (registry.py) validates against emCA and writes ``emca_connectors``; the event goes into the issuer's
outbox inside the registry's write transaction (its ``record`` hook), so the change and its event commit together
or not at all. A refusal writes no connector and records only the event, in a transaction of its own. The actor is
who the caller names (the gateway passes its token's identity, ``certrail connectors`` ``cli:<user>``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.orm import Session

from services.common.admin_outbox import Actor
from services.common.connectors.models import ChangeAction, ConnectorChange, ConnectorEdit, ConnectorError, ConnectorSpec
from services.common.contracts.admin import (
    AdminOutcome,
    ConnectorActivated,
    ConnectorCreated,
    ConnectorDeactivated,
    ConnectorDeleted,
    ConnectorUpdated,
)
from services.common.contracts.envelope import Message
from services.common.contracts.errors import ErrorCode
from services.common.db import write_session
from services.issuer.registry import outbox
from services.issuer.registry.registry import ConnectorRegistry, RecordChange
from services.issuer.registry.repository import RotationReport

__all__ = ["EVENTS", "create_connector", "delete_connector", "disable_connector", "enable_connector", "record",
           "record_refusal", "rotate_secrets", "update_connector"]

EVENTS: dict[ChangeAction, type[Message]] = {
    ChangeAction.CREATED: ConnectorCreated,
    ChangeAction.UPDATED: ConnectorUpdated,
    ChangeAction.ACTIVATED: ConnectorActivated,
    ChangeAction.DEACTIVATED: ConnectorDeactivated,
    ChangeAction.DELETED: ConnectorDeleted,
}


def record_refusal(actor: Actor, action: ChangeAction, name: str, code: str, message: str,
                   change: dict[str, Any] | None = None) -> bool:
    """A connector change refused before the registry saw it (at the caller's door: authorisation, the body);
    False when it names nothing recordable (not even a valid connector name)."""
    before = len(actor.recorded)
    record(actor, ConnectorChange(action, name, AdminOutcome.REFUSED, dict(change or {}), code, message))
    return len(actor.recorded) > before


def _write(session: Session, actor: Actor, change: ConnectorChange) -> int | None:
    return outbox.record(session, EVENTS[change.action], about={"connector": change.connector}, actor=actor.name,
                         outcome=change.outcome, now=actor.clock(), change=dict(change.change), code=change.error_code,
                         message=change.error_message)


def record(actor: Actor, change: ConnectorChange) -> None:
    """A change's event in a transaction of its own (a refusal: nothing else is written)."""
    with write_session(actor.engine) as session:
        seq = _write(session, actor, change)
    if seq is not None:
        actor.recorded.append(seq)


class _InTransaction:
    """The registry's ``record`` hook: writes each change's event in the registry's transaction; the rows count as
    recorded only once the registry returned, i.e. committed."""

    def __init__(self, actor: Actor) -> None:
        self.actor = actor
        self.seqs: list[int] = []

    def __call__(self, session: Session, change: ConnectorChange) -> None:
        seq = _write(session, self.actor, change)
        if seq is not None:
            self.seqs.append(seq)

    def committed(self) -> None:
        self.actor.recorded.extend(self.seqs)


async def _recorded(actor: Actor, action: ChangeAction, name: str,
                    run: Callable[[RecordChange], Awaitable[ConnectorChange]]) -> ConnectorChange:
    hook = _InTransaction(actor)
    try:
        change = await run(hook)
    except ConnectorError as error:
        if error.change is not None:
            await asyncio.to_thread(record, actor, error.change)
        elif error.code != ErrorCode.CONNECTOR_NOT_FOUND:  # nothing to audit about a connector that does not exist
            await asyncio.to_thread(record_refusal, actor, action, name, str(error.code), error.message)
        raise
    hook.committed()
    return change


async def create_connector(actor: Actor, registry: ConnectorRegistry, spec: ConnectorSpec) -> ConnectorChange:
    return await _recorded(actor, ChangeAction.CREATED, spec.name, lambda hook: registry.create(spec, record=hook))


async def update_connector(actor: Actor, registry: ConnectorRegistry, name: str, edit: ConnectorEdit) -> ConnectorChange:
    return await _recorded(actor, ChangeAction.UPDATED, name, lambda hook: registry.update(name, edit, record=hook))


async def enable_connector(actor: Actor, registry: ConnectorRegistry, name: str) -> ConnectorChange:
    return await _recorded(actor, ChangeAction.ACTIVATED, name, lambda hook: registry.enable(name, record=hook))


async def disable_connector(actor: Actor, registry: ConnectorRegistry, name: str, reason: str | None) -> ConnectorChange:
    return await _recorded(actor, ChangeAction.DEACTIVATED, name,
                           lambda hook: asyncio.to_thread(registry.disable, name, reason, record=hook))


async def delete_connector(actor: Actor, registry: ConnectorRegistry, name: str) -> ConnectorChange:
    return await _recorded(actor, ChangeAction.DELETED, name, lambda hook: asyncio.to_thread(registry.delete, name, record=hook))


def rotate_secrets(actor: Actor, registry: ConnectorRegistry) -> RotationReport:
    """Re-encrypt every connector's secrets under the current key: a ConnectorUpdated (``secrets_reencrypted``) for
    each connector re-encrypted, in the same transaction."""
    hook = _InTransaction(actor)
    report = registry.rotate_secrets(record=hook)
    hook.committed()
    return report
