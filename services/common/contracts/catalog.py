"""Every message type certrail knows, and which topic each travels on."""

from __future__ import annotations

from services.common.contracts.admin import ADMIN_TYPES
from services.common.contracts.audit import AuditCheckpoint
from services.common.contracts.commands import COMMAND_TYPES
from services.common.contracts.deadletter import DeadLetter
from services.common.contracts.duplicates import DUPLICATE_EVENT_TYPES
from services.common.contracts.envelope import Catalog, Message
from services.common.contracts.events import EVENT_TYPES
from services.common.contracts.keys import KEY_EVENT_TYPES
from services.common.contracts.requests import REQUEST_TYPES
from services.common.contracts.revocation import REVOCATION_EVENT_TYPES
from services.common.contracts.undeploy import UNDEPLOY_EVENT_TYPES

ALL_TYPES: list[type[Message]] = [
    *REQUEST_TYPES,
    *COMMAND_TYPES,
    *EVENT_TYPES,
    *KEY_EVENT_TYPES,
    *REVOCATION_EVENT_TYPES,
    *DUPLICATE_EVENT_TYPES,
    *UNDEPLOY_EVENT_TYPES,
    *ADMIN_TYPES,
    DeadLetter,
    AuditCheckpoint,
]

CATALOG = Catalog(ALL_TYPES)

#: logical channel -> the message types on it (the AsyncAPI document's channels)
CHANNELS: dict[str, list[type[Message]]] = {}
for _cls in ALL_TYPES:
    CHANNELS.setdefault(_cls.CHANNEL, []).append(_cls)
