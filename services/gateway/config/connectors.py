"""emCA connectors: create, update, enable, disable, delete and rotate-secrets, each with its
admin event (ConnectorCreated/Updated/Activated/Deactivated/Deleted), secrets as ``***``.

The connector registry (services/common/connectors/registry.py) validates against emCA and
writes ``emca_connectors`` in a transaction of its own; the event is written to the outbox in
the next transaction, at once (decision 0019 names this seam: a crash between the two loses the
event of a committed change; the fix is a registry hook that writes inside its transaction).
A refusal writes no connector and records only the event."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from sqlalchemy import Engine

from services.common.connectors.models import ChangeAction, ConnectorChange, ConnectorEdit, ConnectorError, ConnectorSpec
from services.common.connectors.registry import ConnectorRegistry
from services.common.connectors.repository import RotationReport
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
from services.gateway.config import outbox
from services.gateway.config.actor import Actor

EVENTS: dict[ChangeAction, type[Message]] = {
    ChangeAction.CREATED: ConnectorCreated,
    ChangeAction.UPDATED: ConnectorUpdated,
    ChangeAction.ACTIVATED: ConnectorActivated,
    ChangeAction.DEACTIVATED: ConnectorDeactivated,
    ChangeAction.DELETED: ConnectorDeleted,
}


def registry_engine(registry: ConnectorRegistry) -> Engine:
    """The database the registry writes (where the outbox is)."""
    return registry.engine


def record_refusal(actor: Actor, action: ChangeAction, name: str, code: str, message: str,
                   change: dict[str, Any] | None = None) -> None:
    """A connector change refused before the registry saw it (authorisation, the body)."""
    record(actor, ConnectorChange(action, name, AdminOutcome.REFUSED, dict(change or {}), code, message))


def record(actor: Actor, change: ConnectorChange) -> None:
    with write_session(actor.engine) as session:
        seq = outbox.record(session, EVENTS[change.action], about={"connector": change.connector}, actor=actor.name,
                            outcome=change.outcome, now=actor.clock(), change=dict(change.change), code=change.error_code,
                            message=change.error_message)
    if seq is not None:
        actor.recorded.append(seq)


async def _recorded(actor: Actor, action: ChangeAction, name: str, run: Awaitable[ConnectorChange]) -> ConnectorChange:
    try:
        change = await run
    except ConnectorError as error:
        if error.change is not None:
            await asyncio.to_thread(record, actor, error.change)
        elif error.code != ErrorCode.CONNECTOR_NOT_FOUND:  # nothing to audit about a connector that does not exist
            await asyncio.to_thread(record_refusal, actor, action, name, str(error.code), error.message)
        raise
    await asyncio.to_thread(record, actor, change)
    return change


async def create_connector(actor: Actor, registry: ConnectorRegistry, spec: ConnectorSpec) -> ConnectorChange:
    return await _recorded(actor, ChangeAction.CREATED, spec.name, registry.create(spec))


async def update_connector(actor: Actor, registry: ConnectorRegistry, name: str, edit: ConnectorEdit) -> ConnectorChange:
    return await _recorded(actor, ChangeAction.UPDATED, name, registry.update(name, edit))


async def enable_connector(actor: Actor, registry: ConnectorRegistry, name: str) -> ConnectorChange:
    return await _recorded(actor, ChangeAction.ACTIVATED, name, registry.enable(name))


async def disable_connector(actor: Actor, registry: ConnectorRegistry, name: str, reason: str | None) -> ConnectorChange:
    return await _recorded(actor, ChangeAction.DEACTIVATED, name, asyncio.to_thread(registry.disable, name, reason))


async def delete_connector(actor: Actor, registry: ConnectorRegistry, name: str) -> ConnectorChange:
    return await _recorded(actor, ChangeAction.DELETED, name, asyncio.to_thread(registry.delete, name))


def rotate_secrets(actor: Actor, registry: ConnectorRegistry) -> RotationReport:
    """Re-encrypt every connector's secrets under the current key: a ConnectorUpdated
    (``secrets_reencrypted``) for each connector re-encrypted."""
    report = registry.rotate_secrets()
    for name in report.rotated:
        record(actor, ConnectorChange(ChangeAction.UPDATED, name, AdminOutcome.SUCCEEDED, {"secrets_reencrypted": True}))
    return report
