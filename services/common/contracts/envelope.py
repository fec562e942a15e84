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
import math
import re
from datetime import datetime
from typing import Any, ClassVar, Final, Literal

import pydantic_core
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
DATA_CONTENT_TYPE: Final = "application/json"
#: no certrail message is larger than this (a CSR, a leaf and a chain fit easily)
MAX_MESSAGE_BYTES = 256 * 1024
SCHEMA_URI_PREFIX = "urn:certrail:schema:"
#: the deepest nesting of arrays/objects a consumed record may have (certrail's own messages
#: have 4 levels; the limit keeps parsers far from their recursion limits)
MAX_JSON_DEPTH = 32
#: the longest number (characters, sign and exponent included) a consumed record may hold
MAX_JSON_NUMBER_CHARS = 64

#: a candidate CloudEvents type in the raw JSON (the typed validation decides: its type is a literal)
_TYPE_ATTRIBUTE = re.compile(rb'"type"\s*:\s*"(io\.certrail\.[a-z0-9_.]{1,190})"')
#: the fast path's view of the bytes: digits and dots become "0", e/E "e", signs "+", "[" and "{"
#: "[", all else a space; in it, more "[" than `MAX_JSON_DEPTH`, a run of more than
#: `MAX_JSON_NUMBER_CHARS` zeros or (where a float fits) a 3-digit exponent sends the record
#: down the precise path (false alarms inside strings only cost time)
_SHAPE_FROM, _SHAPE_TO = b"0123456789.eE+-[{", b"00000000000ee++[["
_SHAPES = bytes(_SHAPE_TO[_SHAPE_FROM.index(b)] if b in _SHAPE_FROM else 0x20 for b in range(256))
_LONG_MANTISSA = b"0" * (MAX_JSON_NUMBER_CHARS + 1)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
#: a JSON string (skipped) or a bracket
_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_OPENERS = frozenset(b"[{")
_CLOSERS = frozenset(b"]}")


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
    # Literal types of values known at run time only: no type checker can follow them, hence Any
    type_literal: Any = Literal[message_cls.TYPE]
    dataschema_literal: Any = Literal[message_cls.schema_uri()]
    model: type[TypedEvent] = create_model(
        message_cls.__name__ + "Event",
        __base__=TypedEvent,
        __doc__=f"{message_cls.TYPE}: {message_cls.SUMMARY}",
        type=(type_literal, ...),
        dataschema=(dataschema_literal, ...),
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
        "data": event.data,
    }
    # pydantic-core's serializer writes the same bytes as ``json.dumps(..., separators=(",", ":"),
    # ensure_ascii=False)`` of the model's JSON-mode dump (no spaces, UTF-8, the same escapes; messages have no
    # floats), in half the time, on every record a service publishes
    raw = pydantic_core.to_json({k: v for k, v in body.items() if v is not None}, exclude_none=True, by_alias=False)
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


def _structure_too_deep(raw: bytes) -> bool:
    """Whether the JSON text nests arrays/objects deeper than `MAX_JSON_DEPTH` (strings skipped).
    Cheap for certrail's own messages: fewer brackets than the limit means it cannot be too deep."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for token in _STRUCTURE.finditer(raw):
        char = token.group()[0]
        if char in _OPENERS:
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif char in _CLOSERS:
            depth -= 1
    return False


class _JsonLimit(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_mantissa(text: str) -> None:
    mantissa = len(text.lstrip("-").split("e")[0].split("E")[0])
    if mantissa > MAX_JSON_NUMBER_CHARS:
        raise _JsonLimit(f"a number has {mantissa} digits, over the limit of {MAX_JSON_NUMBER_CHARS}")


def _bounded_int(text: str) -> int:
    _check_mantissa(text)
    return int(text)


def _bounded_float(text: str) -> float:
    _check_mantissa(text)
    value = float(text)
    if not math.isfinite(value):
        raise _JsonLimit(f"the number {text} does not fit a 64-bit float")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: a stateless parser object (built once, like a compiled regex: building one per call costs more than parsing)
_BOUNDED_DECODER = json.JSONDecoder(parse_int=_bounded_int, parse_float=_bounded_float, parse_constant=_no_constant)


def load_json(raw: bytes, *, strict: bool = True) -> Any:
    """Parse untrusted JSON bytes within certrail's limits: nesting at most `MAX_JSON_DEPTH`,
    numbers' mantissas at most `MAX_JSON_NUMBER_CHARS` characters and their values finite, no
    NaN/Infinity literals, strict UTF-8 without a BOM, no lone surrogate escapes. Duplicate
    object keys: the last one wins (as in every parser certrail uses). Raises `DecodeError`
    and nothing else. The caller checks the size (`MAX_MESSAGE_BYTES`) first.

    ``strict=False`` keeps only the nesting limit (and Python's own limit on integer digits):
    for reading what a record that did not decode says of itself (the auditor's columns)."""
    if _structure_too_deep(raw):
        raise DecodeError(ErrorCode.JSON_LIMIT_EXCEEDED, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(ErrorCode.UNDECODABLE, f"value is not UTF-8 (byte {exc.start})") from None
    if not strict:
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise DecodeError(ErrorCode.UNDECODABLE, f"value is not JSON within limits: {type(exc).__name__}") from None
    try:
        body = _BOUNDED_DECODER.decode(text)
    except _JsonLimit as exc:
        raise DecodeError(ErrorCode.JSON_LIMIT_EXCEEDED, exc.reason) from None
    except json.JSONDecodeError as exc:
        raise DecodeError(ErrorCode.UNDECODABLE, f"value is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # a NaN/Infinity literal
        raise DecodeError(ErrorCode.UNDECODABLE, f"value is not JSON: {exc}") from None
    except RecursionError:  # unreachable after the depth check; kept so that nothing else escapes
        raise DecodeError(ErrorCode.JSON_LIMIT_EXCEEDED, f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _SURROGATE_ESCAPE.search(raw):  # rare: only then look for a lone surrogate in the parsed strings
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise DecodeError(ErrorCode.UNDECODABLE, "value holds a lone UTF-16 surrogate escape") from None
    return body


@functools.cache
def _holds_any_json(message_cls: type[Message]) -> bool:
    """Whether a field of ``message_cls`` takes a float or any JSON value (the admin events'
    changes): only there can an overflowing exponent validate, so only there is it looked for
    before the fast path (a base64 certificate often looks like one)."""
    schema = json.dumps(message_cls.model_json_schema())
    return "JsonValue" in schema or '"number"' in schema


def _typed_fast(raw: bytes, catalog: Catalog) -> TypedEvent | None:
    """One parse for the common case: the type the bytes name, validated by pydantic straight
    from the bytes, when nothing in them needs `load_json`'s precise checks: few brackets, no
    long digit run, and for a message with a float or any-JSON field no 3-digit exponent and no
    NaN/Infinity (elsewhere strict validation refuses a float; pydantic's parser itself refuses
    lone surrogates, invalid UTF-8 and a byte-order mark). What it accepts, `load_json` accepts
    too. None: take the precise path."""
    match = _TYPE_ATTRIBUTE.search(raw)
    message_cls = catalog.get(match.group(1).decode("ascii")) if match else None
    if message_cls is None:
        return None
    shapes = raw.translate(_SHAPES)
    if _LONG_MANTISSA in shapes or (shapes.count(b"[") > MAX_JSON_DEPTH and _structure_too_deep(raw)):
        return None
    if _holds_any_json(message_cls) and (  # only a float or any-JSON field can take these
        b"0e000" in shapes or b"0e+000" in shapes or b"NaN" in raw or b"Infinity" in raw
    ):
        return None
    try:
        return envelope_model(message_cls).model_validate_json(raw)
    except ValidationError:
        return None  # the precise path names the error (or finds the type the record really declares)


def decode_typed(raw: bytes | None, catalog: Catalog) -> TypedEvent:
    """Parse and validate one record's value into its typed envelope. Raises `DecodeError`
    with a stable code and a precise reason, and nothing else, whatever the bytes."""
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
    typed = _typed_fast(raw, catalog)
    if typed is not None:
        return typed
    body = load_json(raw)
    if not isinstance(body, dict):
        raise DecodeError(ErrorCode.UNDECODABLE, f"value is JSON {type(body).__name__}, not an object")
    declared = body.get("type")
    message_cls = catalog.get(declared) if isinstance(declared, str) else None
    try:
        if message_cls is None:
            CloudEvent.model_validate_json(raw)
        else:
            return envelope_model(message_cls).model_validate_json(raw)
    except ValidationError as exc:
        if message_cls is None:
            raise DecodeError(ErrorCode.NOT_CLOUDEVENT, _describe(exc)) from None
        in_data = all(item["loc"][:1] == ("data",) for item in exc.errors(include_url=False))
        code = ErrorCode.SCHEMA_VIOLATION if in_data else ErrorCode.NOT_CLOUDEVENT
        raise DecodeError(code, f"{declared}: {_describe(exc)}") from None
    raise DecodeError(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"unknown message type {_shown(declared)}")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def decode(raw: bytes | None, catalog: Catalog) -> Envelope:
    """Parse and validate one record's value (`decode_typed`). Raises `DecodeError` with a
    stable code and a precise reason; never anything else."""
    typed = decode_typed(raw, catalog)
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
