"""One change to the deployer's configuration: a write transaction that also records its admin event, or,
when the change is refused (a `Refused`), a transaction that records only the refusal
(services/common/admin_outbox.py's `ChangePath`, over the deployer's outbox).

``with changing(actor, cls, about, unrecorded=...) as pending:`` writes through ``pending.db``;
``refuse(actor, cls, about, refused, change)`` records a refusal made before any write."""

from __future__ import annotations

from enum import StrEnum

from services.common.admin_outbox import Actor, ChangePath, Pending
from services.deployer.config.outbox import OUTBOX

__all__ = ["Actor", "ConfigCode", "Pending", "Refused", "changing", "refuse"]


class ConfigCode(StrEnum):
    """The path's own stable codes (beside ErrorCode's TARGET_UNREACHABLE / INSTALL_FAILED from a probe)."""

    INVALID_INPUT = "INVALID_INPUT"
    TARGET_NOT_FOUND = "TARGET_NOT_FOUND"
    TARGET_EXISTS = "TARGET_EXISTS"
    TARGET_IN_USE = "TARGET_IN_USE"
    BINDING_NOT_FOUND = "BINDING_NOT_FOUND"


class Refused(Exception):
    """A change that is not made: a stable ``code`` and a message without secrets; ``status`` for the API."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = str(code), message, status


PATH = ChangePath(OUTBOX, Refused)
refuse = PATH.refuse
changing = PATH.changing
