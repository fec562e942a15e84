"""The CloudEvents 1.0 envelope, structured JSON mode.

Every Kafka record certrail writes is one JSON object with the CloudEvents
attributes ``specversion``, ``id``, ``source``, ``type``, ``time``, ``subject``,
``datacontenttype``, ``dataschema`` and ``data``, plus the extensions
``correlationid`` (the original request id) and ``causationid`` (the id of the
message that caused this one). The record carries the header
``content-type: application/cloudevents+json``.

A message class (a `Message` subclass) describes ``data``; `envelope_model`
builds the typed envelope of that class (used to validate and to export the
JSON Schema), so one validation pass checks both the envelope and the data.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, create_model

from services.common.contracts.errors import ErrorCode
from services.common.contracts.identity import MessageId
from services.common.contracts.redaction import contains_private_key

CONTENT_TYPE = "application/cloudevents+json"
CONTENT_TYPE_HEADER = "content-type"
#: the CloudEvents Kafka binding's ``type`` attribute header (binary-mode name), set beside the
#: structured body so a consumer can skip a type it does not handle without parsing the body
#: (docs/decisions/0010-batched-consumption-and-ce-type-header.md); the body's ``type`` stays authoritative
TYPE_HEADER = "ce_type"
SPEC_VERSION = "1.0"
DATA_CONTENT_TYPE = "application/json"
#: no certrail message is larger than this (a CSR, a leaf and a chain fit easily)
MAX_MESSAGE_BYTES = 256 * 1024
SCHEMA_URI_PREFIX = "urn:certrail:schema:"


class Message(BaseModel):
    """Base of every command's and event's ``data``: strict, immutable,
    unknown fields rejected. Subclasses set TYPE (the CloudEvents type, which
    ends in its schema version), CHANNEL (the topic it travels on) and SUMMARY."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    TYPE: ClassVar[str]
    CHANNEL: ClassVar[str]
    SUMMARY: ClassVar[str]

    @classmethod
    def schema_version(cls) -> int:
        return int(cls.TYPE.rsplit(".v", 1)[1])

    @classmethod
    def schema_uri(cls) -> str:
        return SCHEMA_URI_PREFIX + cls.TYPE


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 envelope whose data is not yet typed."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    specversion: Literal["1.0"]
    id: MessageId
    source: str = Field(min_length=1, max_length=256, description="URI-reference of the producing service")
    type: str = Field(min_length=1, max_length=200, pattern=r"^io\.certrail\.[a-z0-9_.]+\.v[0-9]+$")
    time: AwareDatetime
    subject: str | None = Field(default=None, max_length=256, description="The certificate id, where there is one")
    datacontenttype: Literal["application/json"] = DATA_CONTENT_TYPE
    dataschema: str = Field(max_length=256)
    correlationid: str | None = Field(default=None, max_length=128, description="The original request id")
    causationid: str | None = Field(default=None, max_length=128, description="The id of the causing message")
    data: dict[str, Any]


class TypedEvent(CloudEvent):
    """Base of the typed envelopes built by `envelope_model`."""

    data: Any  # narrowed per message type


@functools.cache
def envelope_model(message_cls: type[Message]) -> type[TypedEvent]:
    """The envelope model of one message type: the CloudEvents attributes with
    ``type`` and ``dataschema`` fixed and ``data`` the message's model."""
    model: type[TypedEvent] = create_model(
        message_cls.__name__ + "Event",
        __base__=TypedEvent,
        __doc__=f"{message_cls.TYPE}: {message_cls.SUMMARY}",
        type=(Literal[message_cls.TYPE], ...),  # type: ignore[valid-type]
        dataschema=(Literal[message_cls.schema_uri()], ...),  # type: ignore[valid-type]
        data=(message_cls, ...),
    )
    return model


class Envelope(BaseModel):
    """A decoded message: the envelope attributes and the typed data."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    id: str
    source: str
    type: str
    time: datetime
    subject: str | None
    correlationid: str | None
    causationid: str | None
    data: Message


class DecodeError(Exception):
    """The bytes are not a valid certrail message. ``code`` is stable."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class Catalog:
    """The known message types, looked up by CloudEvents type."""

    def __init__(self, classes: list[type[Message]]) -> None:
        by_type: dict[str, type[Message]] = {}
        for cls in classes:
            if cls.TYPE in by_type:
                raise ValueError(f"message type {cls.TYPE} defined twice")
            by_type[cls.TYPE] = cls
        self._by_type = by_type

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_type.values())

    def get(self, message_type: str) -> type[Message] | None:
        return self._by_type.get(message_type)

    def types(self) -> list[str]:
        return sorted(self._by_type)


def make_event(
    data: Message,
    *,
    id: str,
    source: str,
    time: datetime,
    subject: str | None = None,
    correlationid: str | None = None,
    causationid: str | None = None,
) -> Envelope:
    """A new envelope around ``data``; ``time`` must be timezone-aware."""
    if time.tzinfo is None:
        raise ValueError("event time must be timezone-aware")
    return Envelope(
        id=id,
        source=source,
        type=data.TYPE,
        time=time,
        subject=subject,
        correlationid=correlationid,
        causationid=causationid,
        data=data,
    )


def record_headers(message_type: str | None) -> dict[str, str]:
    """The Kafka headers of a certrail record: its content type and, when known, its type."""
    headers = {CONTENT_TYPE_HEADER: CONTENT_TYPE}
    if message_type:
        headers[TYPE_HEADER] = message_type
    return headers


def declared_type(value: bytes | str) -> str | None:
    """The ``type`` an encoded event declares (for the ``ce_type`` header of a record re-published
    from storage), or None when the bytes are no JSON object with a string type."""
    try:
        declared = json.loads(value).get("type")
    except (ValueError, AttributeError):
        return None
    return declared if isinstance(declared, str) else None


def encode(event: Envelope) -> bytes:
    """Structured-mode JSON bytes of an event (deterministic for equal input)."""
    body: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "time": event.time.isoformat().replace("+00:00", "Z"),
        "subject": event.subject,
        "datacontenttype": DATA_CONTENT_TYPE,
        "dataschema": type(event.data).schema_uri(),
        "correlationid": event.correlationid,
        "causationid": event.causationid,
        "data": event.data.model_dump(mode="json", exclude_none=True),
    }
    body = {k: v for k, v in body.items() if v is not None}
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{event.type} is {len(raw)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit")
    return raw


def _describe(error: ValidationError, prefix: str = "") -> str:
    parts = []
    for item in error.errors(include_url=False)[:10]:
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{prefix}{where}: {item['msg']}")
    more = error.error_count() - 10
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def decode(raw: bytes | None, catalog: Catalog) -> Envelope:
    """Parse and validate one record's value. Raises `DecodeError` with a
    stable code and a precise reason; never anything else."""
    if raw is None:
        raise DecodeError(ErrorCode.UNDECODABLE, "record has no value (tombstone)")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise DecodeError(
            ErrorCode.MESSAGE_TOO_LARGE, f"record value is {len(raw)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit"
        )
    if contains_private_key(raw):
        raise DecodeError(
            ErrorCode.PRIVATE_KEY_SUBMITTED,
            "the message contains a private key; private keys never travel on Kafka (the key was not stored)",
        )
    try:
        text = raw.decode("utf-8")
        body = json.loads(text)
    except UnicodeDecodeError as exc:
        raise DecodeError(ErrorCode.UNDECODABLE, f"value is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DecodeError(ErrorCode.UNDECODABLE, f"value is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(body, dict):
        raise DecodeError(ErrorCode.UNDECODABLE, f"value is JSON {type(body).__name__}, not an object")
    declared = body.get("type")
    message_cls = catalog.get(declared) if isinstance(declared, str) else None
    if message_cls is None:
        try:
            CloudEvent.model_validate_json(text)
        except ValidationError as exc:
            raise DecodeError(ErrorCode.NOT_CLOUDEVENT, _describe(exc)) from None
        raise DecodeError(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"unknown message type {declared!r}")
    try:
        typed = envelope_model(message_cls).model_validate_json(text)
    except ValidationError as exc:
        in_data = all(item["loc"][:1] == ("data",) for item in exc.errors(include_url=False))
        code = ErrorCode.SCHEMA_VIOLATION if in_data else ErrorCode.NOT_CLOUDEVENT
        raise DecodeError(code, f"{declared}: {_describe(exc)}") from None
    return Envelope(
        id=typed.id,
        source=typed.source,
        type=typed.type,
        time=typed.time,
        subject=typed.subject,
        correlationid=typed.correlationid,
        causationid=typed.causationid,
        data=typed.data,
    )
