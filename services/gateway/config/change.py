"""One configuration change: a write transaction that also records its admin event, or, when the
change is refused (a `Problem`), a transaction that records only the refusal
(services/common/admin_outbox.py's `ChangePath`, over the gateway's outbox).

``with changing(actor, cls, about, unrecorded=...) as pending:`` writes through ``pending.db``;
``refuse(actor, cls, about, problem, change)`` records a refusal made before any write."""

from __future__ import annotations

from services.common.admin_outbox import ChangePath, Pending
from services.gateway.api_common import Problem
from services.gateway.config.actor import Actor
from services.gateway.config.outbox import OUTBOX

__all__ = ["Actor", "Pending", "changing", "refuse"]

PATH = ChangePath(OUTBOX, Problem)
refuse = PATH.refuse
changing = PATH.changing
