"""The HTTP API's pure parts: problem codes to statuses, admin-event errors, multipart parsing and
request answers (the routes themselves: tests/integration/test_gateway_api.py)."""

from __future__ import annotations

import base64
import json

import pytest

from services.common.contracts.errors import ErrorCode
from services.gateway.api_certificates import answer_response
from services.gateway.api_common import (
    MAX_JSON_DEPTH,
    Problem,
    bounded_json,
    event_error,
    multipart_parts,
    status_of,
    validation_problem,
)
from services.gateway.api_connectors import _multipart, spec_from
from services.gateway.intake import Answer
from services.gateway.policy.violation import shown


@pytest.mark.parametrize(("code", "status"), [
    ("UNAUTHENTICATED", 401),
    ("REQUESTER_NOT_AUTHORISED", 403),
    ("PROFILE_NOT_FOUND", 404),
    ("CONNECTOR_NOT_FOUND", 404),
    ("REQUEST_NOT_FOUND", 404),
    ("ISSUING_CA_NOT_FOUND", 422),  # emCA has no such CA: the input is wrong, the route exists
    ("CA_PROFILE_NOT_FOUND", 422),
    ("DUPLICATE_REQUEST_CONFLICT", 409),
    ("CONNECTOR_IN_USE", 409),
    ("CONNECTOR_DISABLED", 409),
    ("CA_AUTH_FAILED", 422),
    ("CA_UNREACHABLE", 422),
    ("SCHEMA_VIOLATION", 422),
    ("INVALID_INPUT", 422),
    ("TOPIC_NOT_CREATED", 503),
    ("BODY_TOO_LARGE", 413),
    ("AUTH_THROTTLED", 429),
    ("JSON_LIMIT_EXCEEDED", 422),
], ids=lambda v: str(v))
def test_status_of_each_code(code: str, status: int) -> None:
    assert status_of(code) == status


def test_event_errors_keep_the_precise_code() -> None:
    assert event_error("CA_AUTH_FAILED", "no").model_dump() == {"code": ErrorCode.CA_AUTH_FAILED, "message": "no"}
    in_use = event_error("CONNECTOR_IN_USE", "profiles: web")
    assert (in_use.code, in_use.message) == (ErrorCode.HANDLER_REJECTED, "CONNECTOR_IN_USE: profiles: web")
    assert event_error("INVALID_INPUT", "x").code is ErrorCode.SCHEMA_VIOLATION
    assert len(event_error("CA_REJECTED", "m" * 5000).message) == 2000


def test_validation_problems_never_echo_input() -> None:
    problem = validation_problem([{"loc": ("password",), "msg": "too short", "input": "hunter2"}], ("body",))
    body = json.loads(problem.response().body)
    assert body == {"code": "SCHEMA_VIOLATION", "message": "body.password: too short",
                    "errors": [{"field": "body.password", "message": "too short"}]}


def test_multipart_fields_and_files() -> None:
    raw = (b"--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nca-one\r\n"
           b"--b\r\nContent-Disposition: form-data; name=\"pfx\"; filename=\"a.pfx\"\r\n"
           b"Content-Type: application/octet-stream\r\n\r\n\x00\x01\xff\r\n--b--\r\n")
    assert _multipart("multipart/form-data; boundary=b", raw) == {
        "name": "ca-one", "pfx_base64": base64.b64encode(b"\x00\x01\xff").decode()}
    with pytest.raises(Problem) as info:
        _multipart("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n")
    assert info.value.code == "SCHEMA_VIOLATION"


def test_connector_spec_errors_name_the_field_not_the_value() -> None:
    with pytest.raises(Problem) as info:
        spec_from({"name": "ca", "version": "V4.2.3", "base_url": "http://emca.example", "username": "u", "issuing_ca": "CA",
                   "subscriber_id": "S", "default_profile": "P", "password": "s3cret-value", "client_id": "cid-secret"})
    assert info.value.code == "INVALID_INPUT" and "HTTPS only" in info.value.message
    assert "s3cret" not in info.value.message


def test_answers() -> None:
    accepted = answer_response(Answer("r1", "accepted", "issue", "c1", "i1", "cmd", "evt", replayed=True))
    assert accepted.status_code == 202 and accepted.headers["location"] == "/v1/requests/r1"
    assert json.loads(accepted.body)["replayed"] is True
    rejected = answer_response(Answer("r2", "rejected", "issue", "c1", event_id="e",
                                      error={"code": "SAN_NOT_ALLOWED", "message": "no"}))
    assert rejected.status_code == 422
    assert json.loads(rejected.body) == {"code": "SAN_NOT_ALLOWED", "message": "no", "request_id": "r2",
                                         "status_url": "/v1/requests/r2", "replayed": False, "event_id": "e"}


@pytest.mark.parametrize(("raw", "code", "fragment"), [
    (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "JSON_LIMIT_EXCEEDED", "deeper than 32 levels"),
    (b"[" * 100_000, "JSON_LIMIT_EXCEEDED", "deeper than 32 levels"),  # the parser's own recursion, caught
    (b'{"n": ' + b"9" * 33 + b"}", "JSON_LIMIT_EXCEEDED", "longer than 32 characters"),
    (b'{"n": -1e400}', "JSON_LIMIT_EXCEEDED", "64-bit float"),
    (b'{"n": NaN}', "SCHEMA_VIOLATION", "not JSON"),
    (b"[" + b"1," * 50_000 + b"1]", "JSON_LIMIT_EXCEEDED", "more than 50000 JSON values"),
    (b"\xff", "SCHEMA_VIOLATION", "not JSON"),
], ids=["depth", "recursion", "long number", "infinite", "NaN", "many values", "not UTF-8"])
def test_bounded_json_refuses_precisely(raw: bytes, code: str, fragment: str) -> None:
    with pytest.raises(Problem) as refused:
        bounded_json(raw)
    assert (refused.value.code, refused.value.status) == (code, 422) and fragment in refused.value.message


def test_bounded_json_accepts_what_fits() -> None:
    nested = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert bounded_json(nested) is not None
    assert bounded_json(b'{"n": 12345678901234567890, "f": 1.5e300}') == {"n": 12345678901234567890, "f": 1.5e300}


def test_multipart_parts_are_flat_and_few() -> None:
    flat = b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n--b--\r\n'
    [part] = multipart_parts("multipart/form-data; boundary=b", flat)
    assert (part.name, part.filename, part.payload) == ("a", None, b"x")
    nested = b'--b\r\nContent-Disposition: form-data; name="a"\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n' \
             b'--c\r\n\r\ny\r\n--c--\r\n--b--\r\n'
    with pytest.raises(Problem, match="must not itself be multipart"):
        multipart_parts("multipart/form-data; boundary=b", nested)


def test_shown_values_are_bounded_and_escaped() -> None:
    assert shown("dns:www.example.com") == "'dns:www.example.com'"
    assert shown("a\u202eb\x00c") == "'a\\u202eb\\x00c'"
    assert len(shown("x" * 1000)) == 87 and shown("x" * 1000).endswith("\\u2026'")
