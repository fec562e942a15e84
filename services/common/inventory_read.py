"""The certificate inventory's view as other services see it: the auditor builds the inventory
(services/auditor/inventory.py) and serves it (services/auditor/inventory_read.py, ``/internal/v1/certificates``,
decision 0020); the gateway reads it through that API. This module is the shared contract: the view,
its statuses, and its JSON form on the internal API. It reads no table."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any


class CertificateStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    REVOKED = "revoked"
    SUPERSEDED = "superseded"  # another certificate id replaces it (CertificateSuperseded); valid until it expires
    EXPIRED = "expired"  # derived when read
    FAILED = "failed"


def effective_status(status: str, not_after: datetime | None, now: datetime) -> str:
    """The status to show: an active certificate whose not_after has passed is expired."""
    if status == CertificateStatus.ACTIVE and not_after is not None and not_after <= now:
        return CertificateStatus.EXPIRED.value
    return status


@dataclass(frozen=True, slots=True)
class CertificateView:
    """One inventory row as the gateway and the CLI see it."""

    certificate_id: str
    status: str  # effective: expired when active and past not_after
    serial: str | None
    past_serials: tuple[str, ...]
    subject: str | None
    sans: tuple[str, ...]
    issuer: str | None
    not_before: datetime | None
    not_after: datetime | None
    connector: str | None
    profile: str | None
    requester: str | None
    last_event_type: str
    last_event_at: datetime
    last_error_code: str | None
    deployments: tuple[tuple[str, str, str, str], ...]  # (kind, name, status, serial)


_NAMES = tuple(f.name for f in fields(CertificateView))
_TIMES = ("not_before", "not_after", "last_event_at")


def view_to_json(view: CertificateView) -> dict[str, Any]:
    """The view as the internal API answers it (times in ISO 8601, tuples as lists)."""
    values: dict[str, Any] = {name: getattr(view, name) for name in _NAMES}
    for name in _TIMES:
        values[name] = values[name].isoformat() if values[name] is not None else None
    values["past_serials"], values["sans"] = list(view.past_serials), list(view.sans)
    values["deployments"] = [list(d) for d in view.deployments]
    return values


def view_from_json(values: dict[str, Any]) -> CertificateView:
    """The inverse of `view_to_json` (KeyError/TypeError/ValueError on a malformed answer)."""
    found = {name: values[name] for name in _NAMES}
    for name in _TIMES:
        found[name] = datetime.fromisoformat(found[name]) if found[name] is not None else None
    found["past_serials"], found["sans"] = tuple(found["past_serials"]), tuple(found["sans"])
    found["deployments"] = tuple((str(k), str(n), str(s), str(serial)) for k, n, s, serial in found["deployments"])
    return CertificateView(**found)
