"""Every message model accepts a valid example and rejects malformed ones with
a clear, coded error; encoding is deterministic and round-trips."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from services.common.contracts.catalog import ALL_TYPES, CATALOG
from services.common.contracts.envelope import (
    MAX_MESSAGE_BYTES,
    DecodeError,
    Message,
    declared_type,
    decode,
    encode,
    make_event,
    record_headers,
)
from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import MAX_CSR_CHARS
from services.common.contracts.identity import message_id
from tests.unit.examples import CERT_ID, NOW, examples

EXAMPLES = examples()
TYPE_IDS = [cls.__name__ for cls in ALL_TYPES]


def _event_bytes(message: Message) -> bytes:
    event = make_event(
        message,
        id=message_id("cause-1", message.TYPE),
        source="/certrail/test",
        time=NOW,
        subject=CERT_ID,
        correlationid="req-1",
        causationid="cause-1",
    )
    return encode(event)


def _body(cls: type[Message]) -> dict[str, Any]:
    return json.loads(_event_bytes(EXAMPLES[cls]))


def _decode_error(body: dict[str, Any] | bytes) -> DecodeError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(DecodeError) as info:
        decode(raw, CATALOG)
    return info.value


def test_every_type_has_an_example() -> None:
    assert set(EXAMPLES) == set(ALL_TYPES)


def test_types_are_versioned_and_unique() -> None:
    types = [cls.TYPE for cls in ALL_TYPES]
    assert len(types) == len(set(types))
    for cls in ALL_TYPES:
        assert cls.TYPE.startswith("io.certrail.")
        assert cls.schema_version() >= 1
        assert cls.schema_uri().endswith(cls.TYPE)


def _standard_library_bytes(raw: bytes, message: Message) -> bytes:
    """The event as ``json.dumps`` writes it from the model's JSON-mode dump: what `encode` wrote before it used
    pydantic-core's serializer, and what it must keep writing (stored outcomes are compared and re-published)."""
    body = json.loads(raw)
    body["data"] = message.model_dump(mode="json", exclude_none=True)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("cls", ALL_TYPES, ids=TYPE_IDS)
def test_encoding_is_byte_for_byte_the_standard_librarys(cls: type[Message]) -> None:
    raw = _event_bytes(EXAMPLES[cls])
    assert raw == _standard_library_bytes(raw, EXAMPLES[cls])


def test_hostile_text_is_escaped_as_the_standard_library_escapes_it() -> None:
    from services.common.contracts.events import DeploymentFailed
    from services.common.contracts.fields import ErrorInfo

    text = 'quote " backslash \\ tab \t newline \n nul \x00 esc \x1b del \x7f \u2028 é 証明書 \U0001f512 </script>'
    base = EXAMPLES[DeploymentFailed]
    assert isinstance(base, DeploymentFailed)
    message = base.model_copy(update={"error": ErrorInfo(code=ErrorCode.INSTALL_FAILED, message=text)})
    raw = _event_bytes(message)
    assert raw == _standard_library_bytes(raw, message)
    assert decode(raw, CATALOG).data == message


@pytest.mark.parametrize("cls", ALL_TYPES, ids=TYPE_IDS)
def test_valid_example_round_trips(cls: type[Message]) -> None:
    raw = _event_bytes(EXAMPLES[cls])
    decoded = decode(raw, CATALOG)
    assert type(decoded.data) is cls
    assert decoded.data == EXAMPLES[cls]
    assert decoded.subject == CERT_ID and decoded.correlationid == "req-1" and decoded.causationid == "cause-1"
    assert decoded.time == NOW
    # deterministic: re-encoding the decoded event gives the same bytes
    assert encode(decoded) == raw
    body = json.loads(raw)
    assert body["specversion"] == "1.0"
    assert body["datacontenttype"] == "application/json"
    assert body["dataschema"] == cls.schema_uri()
    assert body["time"] == "2026-11-27T12:00:00Z"


@pytest.mark.parametrize("cls", ALL_TYPES, ids=TYPE_IDS)
def test_missing_required_field_is_a_schema_violation(cls: type[Message]) -> None:
    required = [name for name, f in cls.model_fields.items() if f.is_required()]
    assert required, f"{cls.__name__} has no required field"
    for name in required:
        body = _body(cls)
        del body["data"][name]
        error = _decode_error(body)
        assert error.code is ErrorCode.SCHEMA_VIOLATION
        assert f"data.{name}" in error.reason and "Field required" in error.reason


@pytest.mark.parametrize("cls", ALL_TYPES, ids=TYPE_IDS)
def test_unknown_field_is_rejected(cls: type[Message]) -> None:
    body = _body(cls)
    body["data"]["surprise"] = 1
    error = _decode_error(body)
    assert error.code is ErrorCode.SCHEMA_VIOLATION
    assert "data.surprise" in error.reason and "Extra inputs are not permitted" in error.reason


@pytest.mark.parametrize("cls", ALL_TYPES, ids=TYPE_IDS)
def test_wrong_type_is_rejected(cls: type[Message]) -> None:
    body = _body(cls)
    name = next(n for n, f in cls.model_fields.items() if f.is_required())
    body["data"][name] = [{"not": "this"}]
    error = _decode_error(body)
    assert error.code is ErrorCode.SCHEMA_VIOLATION
    assert f"data.{name}" in error.reason


def test_strict_no_coercion_of_numbers_from_strings() -> None:
    from services.common.contracts.commands import IssueCertificate

    body = _body(IssueCertificate)
    body["data"]["revision"] = "1"
    error = _decode_error(body)
    assert error.code is ErrorCode.SCHEMA_VIOLATION and "data.revision" in error.reason


def test_oversize_field_is_rejected() -> None:
    from services.common.contracts.requests import IssueRequested

    body = _body(IssueRequested)
    pem = body["data"]["csr"]
    filler = "A" * (MAX_CSR_CHARS + 1)
    body["data"]["csr"] = pem.replace("-----\n", "-----\n" + filler + "\n", 1)
    error = _decode_error(body)
    assert error.code is ErrorCode.SCHEMA_VIOLATION
    assert "data.csr" in error.reason and "at most" in error.reason


def test_oversize_record_is_rejected_before_parsing() -> None:
    error = _decode_error(b"{" + b" " * MAX_MESSAGE_BYTES + b"}")
    assert error.code is ErrorCode.MESSAGE_TOO_LARGE
    assert str(MAX_MESSAGE_BYTES) in error.reason


def test_encode_refuses_to_produce_an_oversize_record() -> None:
    from services.common.contracts.admin import AdminOutcome, ProfileUpdated

    big = ProfileUpdated(
        profile="web", actor="admin", outcome=AdminOutcome.SUCCEEDED, change={"k": "x" * (MAX_MESSAGE_BYTES + 10)}
    )
    event = make_event(big, id="x", source="/t", time=NOW)
    with pytest.raises(ValueError, match="over the"):
        encode(event)


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda b: b.pop("specversion"), "specversion"),
        (lambda b: b.update(specversion="0.3"), "specversion"),
        (lambda b: b.pop("id"), "id"),
        (lambda b: b.update(time="yesterday"), "time"),
        (lambda b: b.update(time="2026-11-27T12:00:00"), "time"),  # no timezone
        (lambda b: b.update(source=""), "source"),
        (lambda b: b.update(dataschema="urn:certrail:schema:other"), "dataschema"),
        (lambda b: b.update(extra_attribute="x"), "extra_attribute"),
    ],
    ids=["no-specversion", "old-specversion", "no-id", "bad-time", "naive-time", "empty-source", "wrong-dataschema", "unknown-attribute"],
)
def test_malformed_envelope_is_not_a_cloudevent(mutate: Any, where: str) -> None:
    from services.common.contracts.events import CertificateDeployed

    body = _body(CertificateDeployed)
    mutate(body)
    error = _decode_error(body)
    assert error.code is ErrorCode.NOT_CLOUDEVENT
    assert where in error.reason


def test_unknown_type_is_named() -> None:
    from services.common.contracts.events import CertificateDeployed

    body = _body(CertificateDeployed)
    body["type"] = "io.certrail.certificate.teleported.v1"
    error = _decode_error(body)
    assert error.code is ErrorCode.UNKNOWN_MESSAGE_TYPE
    assert "io.certrail.certificate.teleported.v1" in error.reason


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (b"\xff\xfe\x00garbage", ErrorCode.UNDECODABLE, "not UTF-8"),
        (b"not json at all", ErrorCode.UNDECODABLE, "not JSON"),
        (b"[1, 2, 3]", ErrorCode.UNDECODABLE, "not an object"),
        (b"", ErrorCode.UNDECODABLE, "not JSON"),
        (b"{}", ErrorCode.NOT_CLOUDEVENT, "specversion"),
    ],
    ids=["binary", "text", "array", "empty", "empty-object"],
)
def test_undecodable_bytes(raw: bytes, code: ErrorCode, fragment: str) -> None:
    error = _decode_error(raw)
    assert error.code is code
    assert fragment in error.reason


def test_tombstone_is_undecodable() -> None:
    with pytest.raises(DecodeError) as info:
        decode(None, CATALOG)
    assert info.value.code is ErrorCode.UNDECODABLE


def test_private_key_anywhere_is_refused() -> None:
    from services.common.contracts.requests import IssueRequested
    from tests.unit.examples import private_key_pem

    body = _body(IssueRequested)
    body["data"]["csr"] = body["data"]["csr"] + private_key_pem()
    error = _decode_error(body)
    assert error.code is ErrorCode.PRIVATE_KEY_SUBMITTED
    assert "BEGIN" not in error.reason


def test_make_event_requires_aware_time() -> None:
    from services.common.contracts.events import CertificateExpiring

    with pytest.raises(ValueError, match="timezone-aware"):
        make_event(EXAMPLES[CertificateExpiring], id="x", source="/t", time=datetime(2026, 1, 1))


def test_non_utc_time_survives_round_trip() -> None:
    from services.common.contracts.events import CertificateExpiring

    t = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    raw = encode(make_event(EXAMPLES[CertificateExpiring], id="x", source="/t", time=t))
    assert decode(raw, CATALOG).time == t
    assert decode(raw, CATALOG).time.astimezone(UTC) == datetime(2026, 1, 1, 6, 30, tzinfo=UTC)


def test_models_are_immutable() -> None:
    from services.common.contracts.events import CertificateDeployed

    with pytest.raises(Exception, match="frozen"):
        EXAMPLES[CertificateDeployed].serial = "00"  # type: ignore[misc]


@pytest.mark.parametrize("cls", ALL_TYPES, ids=TYPE_IDS)
def test_record_headers_name_the_type_the_body_declares(cls: type[Message]) -> None:
    value = _event_bytes(EXAMPLES[cls])
    assert declared_type(value) == cls.TYPE
    assert declared_type(value.decode("utf-8")) == cls.TYPE
    assert record_headers(declared_type(value)) == {"content-type": "application/cloudevents+json", "ce_type": cls.TYPE}


@pytest.mark.parametrize("value", [b"", b"not json", b"[1, 2]", b'{"type": 7}', b"{}", b"\xff\xfe"])
def test_declared_type_of_something_else_is_none_and_no_type_header(value: bytes) -> None:
    assert declared_type(value) is None
    assert record_headers(declared_type(value)) == {"content-type": "application/cloudevents+json"}
