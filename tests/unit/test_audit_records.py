"""What the auditor stores for a record: never an exception whatever the bytes,
the same verdict as the shared decoder, envelope columns fit for any database,
and no private key ever."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from services.auditor.records import (
    INVALID_TYPE,
    RawRecord,
    decode_record,
    derive_attributes,
    envelope_attributes,
    headers_from_json,
    headers_to_json,
    prepare,
)
from services.auditor.sql import sqlite_text
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import DecodeError, Message, decode, encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateIssued
from tests.unit.examples import CERT_ID, NOW, examples, private_key_pem

EXAMPLES = examples()
HEADERS = (("content-type", b"application/cloudevents+json"),)


def _raw(value: bytes | None, key: bytes | None = b"k", headers: tuple[tuple[str, bytes], ...] = HEADERS) -> RawRecord:
    return RawRecord("certrail.events", 0, 7, 1767225600000, 0, key, value, headers)


def _event(cls: type[Message], **envelope: Any) -> bytes:
    values = {"id": "evt-1", "source": "/certrail/test", "time": NOW, "subject": CERT_ID, "correlationid": "req-1"}
    values.update(envelope)
    return encode(make_event(EXAMPLES[cls], **values))


def _verdict(raw: bytes | None) -> tuple[str, str | None]:
    try:
        return "valid", decode(raw, CATALOG).type
    except DecodeError as exc:
        return "invalid", str(exc.code)


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.TYPE)
def test_every_valid_example_is_valid_with_its_type(cls: type[Message]) -> None:
    raw = _event(cls)
    event, failure = decode_record(raw, CATALOG)
    assert failure is None and event is not None and event.type == cls.TYPE
    entry = prepare(_raw(raw), CATALOG)
    assert entry.decode_error is None and entry.type_label == cls.TYPE
    assert entry.attributes.event_id == "evt-1" and entry.attributes.correlation_id == "req-1"
    assert entry.attributes.event_time == NOW


def _mutations() -> list[tuple[str, bytes | None]]:
    body = json.loads(_event(CertificateIssued))
    cases: list[tuple[str, bytes | None]] = [
        ("tombstone", None),
        ("binary", b"\xff\xfe\x00garbage"),
        ("text", b"not json"),
        ("array", b"[1,2]"),
        ("empty object", b"{}"),
        ("too large", b"{" + b" " * 300_000 + b"}"),
        ("private key", json.dumps({**body, "subject": private_key_pem()}).encode()),
    ]
    for name, change in [
        ("unknown type", {"type": "io.certrail.certificate.teleported.v1"}),
        ("type of another message", {"type": "io.certrail.certificate.deployed.v1"}),
        ("schema violation", {"data": {**body["data"], "serial": "not hex"}}),
        ("naive time", {"time": "2026-11-27T12:00:00"}),
        ("extra attribute", {"extra": 1}),
        ("duplicate type key", None),
    ]:
        if change is None:
            text = json.dumps(body)
            cases.append((name, text.replace('"type": ', '"type": "io.certrail.certificate.deployed.v1", "type": ', 1).encode()))
        else:
            cases.append((name, json.dumps({**body, **change}).encode()))
    return cases


@pytest.mark.parametrize(("name", "raw"), _mutations(), ids=[n for n, _ in _mutations()])
def test_same_verdict_and_code_as_the_shared_decoder(name: str, raw: bytes | None) -> None:
    verdict, detail = _verdict(raw)
    event, failure = decode_record(raw, CATALOG)
    if verdict == "valid":
        assert event is not None and event.type == detail, name
    else:
        assert failure is not None and str(failure.code) == detail, name
    entry = prepare(_raw(raw), CATALOG)  # never raises
    assert (entry.decode_error is None) == (verdict == "valid")
    if verdict == "invalid":
        assert entry.type_label == INVALID_TYPE and entry.decode_reason


def test_invalid_record_keeps_what_its_envelope_says() -> None:
    body = json.loads(_event(CertificateIssued))
    body["data"]["serial"] = "zz"
    entry = prepare(_raw(json.dumps(body).encode()), CATALOG)
    assert entry.decode_error == ErrorCode.SCHEMA_VIOLATION
    assert entry.attributes.event_id == "evt-1" and entry.attributes.certificate_id == CERT_ID
    assert entry.inventory is None


def test_private_keys_are_removed_from_value_key_and_headers() -> None:
    pem = private_key_pem()
    value = json.dumps({"note": pem}).encode()
    entry = prepare(_raw(value, key=pem.encode(), headers=(("x-key", pem.encode()), *HEADERS)), CATALOG)
    assert entry.decode_error == ErrorCode.PRIVATE_KEY_SUBMITTED
    assert entry.private_keys_removed == 3
    stored = (entry.value or b"") + (entry.key or b"") + b"".join(v for _, v in entry.headers)
    assert b"BEGIN" not in stored and b"PRIVATE KEY REMOVED sha256:" in stored
    assert entry.original_size == len(value) and entry.original_sha256 and len(entry.original_sha256) == 64


def test_text_columns_are_cleaned_for_any_database() -> None:
    value = json.dumps({"id": "a\u0000b", "subject": "x\ud800y", "type": "t" * 500, "time": "not a time"}).encode()
    attrs = envelope_attributes(value)
    assert attrs.event_id == "a\ufffdb"
    assert attrs.subject is not None and "\ud800" not in attrs.subject
    assert attrs.event_type is not None and len(attrs.event_type) == 200
    assert attrs.event_time is None


def test_derived_columns_agree_between_the_typed_and_the_json_paths() -> None:
    for cls in EXAMPLES:
        raw = _event(cls)
        event, _ = decode_record(raw, CATALOG)
        assert derive_attributes(raw, event) == envelope_attributes(raw), cls.TYPE


def test_times_are_utc() -> None:
    raw = _event(CertificateIssued, time=datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    assert prepare(_raw(raw), CATALOG).attributes.event_time == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("sqlite_times", [False, True])
@pytest.mark.parametrize(
    "when",
    [
        datetime(1, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=5))),  # before year 1 in UTC
        datetime(9999, 12, 31, 23, 0, tzinfo=timezone(-timedelta(hours=5))),  # after 9999 in UTC
    ],
)
def test_a_valid_time_that_utc_cannot_hold_never_stops_the_auditor(when: datetime, sqlite_times: bool) -> None:
    """Valid RFC 3339, but no instant a column can store: the record is stored (without an
    event time) and not folded into the inventory, instead of failing its batch forever."""
    issued = EXAMPLES[CertificateIssued].model_copy(update={"not_after": when})
    in_data = encode(make_event(issued, id="evt-1", source="/t", time=NOW, subject=CERT_ID))
    in_envelope = _event(CertificateIssued, time=when)
    for raw, event_time in ((in_data, NOW), (in_envelope, None)):
        entry = prepare(_raw(raw), CATALOG, sqlite_times=sqlite_times)
        assert (entry.decode_error, entry.type_label, entry.inventory) == (None, CertificateIssued.TYPE, None)
        expected = sqlite_text(event_time) if sqlite_times and event_time is not None else event_time
        assert entry.attributes.event_time == expected


def test_headers_round_trip() -> None:
    headers = (("content-type", b"application/cloudevents+json"), ("bin", b"\x00\xff"))
    assert headers_from_json(headers_to_json(headers)) == headers
    assert headers_to_json(()) is None and headers_from_json(None) == ()
