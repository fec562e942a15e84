"""The timeline of a certificate, a request or a serial as other services see it: the entries, their
one-line summaries and their JSON form on the auditor's internal API (``/internal/v1/trails/...``, decision
0020). The auditor builds timelines from its audit log (services/auditor/trail.py); this module reads no table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from services.common.contracts.envelope import DecodeError, load_json

_SUMMARY_FIELDS = ("kind", "serial", "status", "reason", "connector", "profile", "requester", "replaces_serial")


@dataclass(frozen=True, slots=True)
class TrailEntry:
    row_id: int
    topic: str
    partition: int
    offset: int
    timestamp: datetime | None
    event_time: datetime | None
    event_type: str | None
    event_id: str | None
    certificate_id: str | None
    request_id: str | None
    decode_error: str | None
    duplicate_of: str | None  # "topic/partition@offset" of the first occurrence
    summary: str


@dataclass(frozen=True, slots=True)
class Trail:
    identifier: str
    certificate_ids: tuple[str, ...]
    entries: tuple[TrailEntry, ...]


def _summary(value: bytes | None, decode_error: str | None) -> str:
    if decode_error:
        return f"invalid: {decode_error}"
    try:  # the row decoded when it was stored; load_json keeps even an older row's bytes bounded
        data: Any = load_json(value or b"{}").get("data", {})
    except (DecodeError, AttributeError):
        return ""
    if not isinstance(data, dict):
        return ""
    parts = [f"{name}={data[name]}" for name in _SUMMARY_FIELDS if isinstance(data.get(name), str | bool)]
    target = data.get("target")
    if isinstance(target, dict):
        parts.append(f"target={target.get('kind')}:{target.get('name')}")
    error = data.get("error")
    if isinstance(error, dict):
        parts.append(f"error={error.get('code')}")
    if isinstance(data.get("code"), str):  # dead letters
        parts.append(f"code={data['code']}")
    return " ".join(parts)


def entry_to_json(entry: TrailEntry) -> dict[str, Any]:
    """An entry as the internal API answers it (times in ISO 8601)."""
    item = asdict(entry)
    item["timestamp"] = entry.timestamp.isoformat() if entry.timestamp is not None else None
    item["event_time"] = entry.event_time.isoformat() if entry.event_time is not None else None
    return item


def entry_from_json(values: dict[str, Any]) -> TrailEntry:
    """The inverse of `entry_to_json` (KeyError/TypeError/ValueError on a malformed answer)."""
    found = {name: values[name] for name in TrailEntry.__dataclass_fields__}
    for name in ("timestamp", "event_time"):
        found[name] = datetime.fromisoformat(found[name]) if found[name] is not None else None
    return TrailEntry(**found)
