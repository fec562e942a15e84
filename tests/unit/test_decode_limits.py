"""`decode` is the one bounded path every consumed record takes: whatever the bytes, it returns an
envelope or raises `DecodeError` with a stable code, never anything else (issue 17)."""

from __future__ import annotations

import json
import random

import pytest

from services.common.contracts.admin import ProfileCreated
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import (
    MAX_JSON_DEPTH,
    MAX_JSON_NUMBER_CHARS,
    DecodeError,
    decode,
    encode,
    load_json,
    make_event,
)
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateIssued
from services.common.contracts.requests import IssueRequested
from tests.unit.examples import CERT_ID, NOW, examples

EXAMPLES = examples()


def _valid(data_cls: type = IssueRequested) -> dict:
    return json.loads(encode(make_event(EXAMPLES[data_cls], id="evt-1", source="/t", time=NOW, subject=CERT_ID)))


def _with(path: tuple[str, ...], value: object, data_cls: type = IssueRequested) -> bytes:
    body = _valid(data_cls)
    target = body
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = value
    return json.dumps(body).encode()


def _raw_with(path: tuple[str, ...], literal: bytes, data_cls: type = IssueRequested) -> bytes:
    """A valid body with the value at ``path`` replaced by raw JSON text (for what json.dumps cannot write)."""
    return _with(path, "__MARK__", data_cls).replace(b'"__MARK__"', literal)


DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 40_000 + b"1" + b"}" * 40_000
HUGE_NUMBER = b'{"n":' + b"7" * 50_000 + b"}"

HOSTILE: dict[str, tuple[bytes | None, ErrorCode]] = {
    "deep arrays (200 kB)": (DEEP_ARRAY, ErrorCode.JSON_LIMIT_EXCEEDED),
    "deep objects": (DEEP_OBJECT, ErrorCode.JSON_LIMIT_EXCEEDED),
    "one level too deep": (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), ErrorCode.JSON_LIMIT_EXCEEDED),
    "too deep inside data": (_raw_with(("data", "request_id"), b"[" * 40 + b"]" * 40), ErrorCode.JSON_LIMIT_EXCEEDED),
    "50,000-digit number": (HUGE_NUMBER, ErrorCode.JSON_LIMIT_EXCEEDED),
    "50,000-digit number in an envelope": (_raw_with(("data", "validity_days"), b"9" * 50_000), ErrorCode.JSON_LIMIT_EXCEEDED),
    "65-digit number": (_raw_with(("data", "validity_days"), b"1" * (MAX_JSON_NUMBER_CHARS + 1)), ErrorCode.JSON_LIMIT_EXCEEDED),
    "float overflow 1e999999": (_raw_with(("data", "validity_days"), b"1e999999"), ErrorCode.JSON_LIMIT_EXCEEDED),
    "float overflow -1.5e+309": (_raw_with(("data", "validity_days"), b"-1.5e+309"), ErrorCode.JSON_LIMIT_EXCEEDED),
    "NaN literal": (_raw_with(("data", "validity_days"), b"NaN"), ErrorCode.UNDECODABLE),
    "Infinity literal": (_raw_with(("data", "validity_days"), b"-Infinity"), ErrorCode.UNDECODABLE),
    "lone high surrogate": (_raw_with(("data", "request_id"), b'"\\ud800"'), ErrorCode.UNDECODABLE),
    "lone low surrogate": (_raw_with(("subject",), b'"x\\udc00y"'), ErrorCode.UNDECODABLE),
    "invalid UTF-8": (b'{"specversion":"1.0","id":"\xff\xfe"}', ErrorCode.UNDECODABLE),
    "UTF-8 encoded surrogate": (b'{"id":"\xed\xa0\x80"}', ErrorCode.UNDECODABLE),
    "byte order mark": (b"\xef\xbb\xbf" + json.dumps(_valid()).encode(), ErrorCode.UNDECODABLE),
    "empty value": (b"", ErrorCode.UNDECODABLE),
    "NUL byte": (b"\x00", ErrorCode.UNDECODABLE),
    "tombstone": (None, ErrorCode.UNDECODABLE),
    "root array": (b"[1,2]", ErrorCode.UNDECODABLE),
    "root string": (b'"io.certrail.request.issue.v1"', ErrorCode.UNDECODABLE),
    "root number": (b"12", ErrorCode.UNDECODABLE),
    "root null": (b"null", ErrorCode.UNDECODABLE),
    "truncated": (json.dumps(_valid()).encode()[:-3], ErrorCode.UNDECODABLE),
    "empty object": (b"{}", ErrorCode.NOT_CLOUDEVENT),
    "unknown type": (_with(("type",), "io.certrail.nothing.v1"), ErrorCode.UNKNOWN_MESSAGE_TYPE),
    "data a list": (_with(("data",), [1]), ErrorCode.SCHEMA_VIOLATION),
    "data field a number": (_with(("data", "request_id"), 5), ErrorCode.SCHEMA_VIOLATION),
    "unknown data field": (_with(("data", "extra"), "x"), ErrorCode.SCHEMA_VIOLATION),
    "oversize": (b'{"a":"' + b"x" * 300_000 + b'"}', ErrorCode.MESSAGE_TOO_LARGE),
    "invalid UTF-8 in a typed message": (_raw_with(("data", "request_id"), b'"\xff"'), ErrorCode.UNDECODABLE),
    # an admin event's change takes any JSON value: the limits hold there too
    "any-JSON: NaN": (_raw_with(("data", "change", "x"), b"NaN", ProfileCreated), ErrorCode.UNDECODABLE),
    "any-JSON: 1e999": (_raw_with(("data", "change", "x"), b"1e999", ProfileCreated), ErrorCode.JSON_LIMIT_EXCEEDED),
    "any-JSON: 65 digits": (_raw_with(("data", "change", "x"), b"9" * 65, ProfileCreated), ErrorCode.JSON_LIMIT_EXCEEDED),
    "any-JSON: 33 levels": (_raw_with(("data", "change", "x"), b"[" * 31 + b"]" * 31, ProfileCreated),
                            ErrorCode.JSON_LIMIT_EXCEEDED),
}
WRONG_TYPES = [1, 1.5, True, None, [], {}, "", "x" * 300]
for attribute in ("specversion", "id", "source", "type", "time", "subject", "datacontenttype", "dataschema",
                  "correlationid", "causationid"):
    for index, wrong in enumerate(WRONG_TYPES):
        if attribute in {"subject", "correlationid", "causationid"} and wrong in (None, ""):
            continue  # optional and free text: null and "" are allowed
        code = ErrorCode.NOT_CLOUDEVENT
        HOSTILE[f"{attribute} = {json.dumps(wrong)[:12]} ({index})"] = (_with((attribute,), wrong), code)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_bytes_give_a_decode_error_with_a_stable_code(name: str) -> None:
    raw, code = HOSTILE[name]
    with pytest.raises(DecodeError) as raised:
        decode(raw, CATALOG)
    assert raised.value.code is code, raised.value.reason
    assert len(raised.value.reason) < 3000


def test_duplicate_keys_mean_the_last_one_everywhere() -> None:
    body = json.dumps(_valid())
    raw = body.replace('"request_id":', '"request_id":"first","request_id":', 1).encode()
    envelope = decode(raw, CATALOG)
    assert envelope.data.request_id == _valid()["data"]["request_id"]  # the last one wins ...
    assert load_json(raw)["data"]["request_id"] == envelope.data.request_id  # ... for the signature check too


@pytest.mark.parametrize("data_cls", [IssueRequested, CertificateIssued])
def test_valid_messages_still_decode(data_cls: type) -> None:
    raw = encode(make_event(EXAMPLES[data_cls], id="evt-1", source="/t", time=NOW, subject=CERT_ID))
    assert decode(raw, CATALOG).data == EXAMPLES[data_cls]
    # and the precise path agrees with the fast one: the same message behind 33 opening brackets in a string
    padded = _with(("data", "request_id" if data_cls is IssueRequested else "certificate_id"), "[" * 40, data_cls)
    with pytest.raises(DecodeError) as raised:
        decode(padded, CATALOG)
    assert raised.value.code is ErrorCode.SCHEMA_VIOLATION  # brackets inside a string are not nesting


def test_an_admin_change_within_the_limits_decodes() -> None:
    raw = _raw_with(("data", "change", "x"), b'[1.5e300, -2, "NaN", {"a": [' + b"9" * 64 + b"]}]", ProfileCreated)
    assert decode(raw, CATALOG).data.change["x"][0] == 1.5e300  # type: ignore[attr-defined]


def test_the_limits_are_inclusive() -> None:
    assert load_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    assert load_json(b"[" + b"9" * MAX_JSON_NUMBER_CHARS + b"]") == [int("9" * MAX_JSON_NUMBER_CHARS)]
    assert load_json(b'["\\ud83d\\ude00"]') == ["\U0001f600"]  # a surrogate pair is fine


def test_random_mutations_of_a_valid_message_never_raise_anything_else() -> None:
    rng = random.Random(17)
    seed = encode(make_event(EXAMPLES[CertificateIssued], id="evt-1", source="/t", time=NOW, subject=CERT_ID))
    alphabet = b'[]{}":,0123456789eE.-+\\u NaInfity\xff\x00'
    for _ in range(3000):
        raw = bytearray(seed)
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(raw))
            action = rng.random()
            if action < 0.4:
                raw[position] = rng.choice(alphabet)
            elif action < 0.7:
                raw[position:position] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
            else:
                del raw[position : position + rng.randint(1, 20)]
        try:
            decode(bytes(raw), CATALOG)
        except DecodeError:
            continue
        load_json(bytes(raw))  # what decode accepted (maybe on its fast path), the precise parser accepts too
