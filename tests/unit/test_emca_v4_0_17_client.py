"""The connector's V4.0.17 dialect: response parsing and failure classification,
as tables of named cases, plus its inputs (serials, revoke reasons, AES key, PFX)."""

from __future__ import annotations

import ast
import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import pkcs7

from services.common.contracts.errors import ErrorCode
from services.common.emca.dialects import v4_0_17 as v4
from services.common.emca.dialects.v4_0_17 import FailureCategory as Cat
from services.common.emca.dialects.v4_0_17 import FailureReason as Why
from tests.unit.test_emca_v4_0_17_vectors import AES_KEY, KEYS

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
LEAF = x509.load_pem_x509_certificate(KEYS["leaf_certificate_pem"].encode())
ISSUING = x509.load_pem_x509_certificate(KEYS["issuing_ca_certificate_pem"].encode())
ROOT = x509.load_pem_x509_certificate(KEYS["root_ca_certificate_pem"].encode())
LEAF_B64 = base64.b64encode(LEAF.public_bytes(serialization.Encoding.DER)).decode()


def body(status: str, result: object, subscriber_id: str | None = None, request_id: str | None = None) -> bytes:
    return json.dumps({"status": status, "result": result, "subscriberId": subscriber_id, "requestId": request_id}).encode()


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# ---------------------------------------------------------------- failure messages

MESSAGES = [
    ("missing parameter", "Invalid parameter", Why.INVALID_PARAMETER, Cat.CONNECTOR_FAULT, None),
    ("AES decryption failed", "Invalid input data", Why.DECRYPTION_FAILED, Cat.CONNECTOR_FAULT, ErrorCode.CA_DECRYPTION_FAILED),
    (
        "username, password or IP",
        "Invalid request details found",
        Why.AUTHENTICATION_FAILED,
        Cat.CONNECTOR_FAULT,
        ErrorCode.CA_AUTH_FAILED,
    ),
    (
        "PKCS#7 signature",
        "Signature verification failed",
        Why.SIGNATURE_FAILED,
        Cat.CONNECTOR_FAULT,
        ErrorCode.CA_SIGNATURE_FAILED,
    ),
    ("server error", "Internal server error", Why.INTERNAL_ERROR, Cat.TRANSIENT, ErrorCode.CA_UNREACHABLE),
    (
        "unknown profile",
        "Invalid Certificate Profile name",
        Why.UNKNOWN_PROFILE,
        Cat.REQUEST_PERMANENT,
        ErrorCode.CA_PROFILE_NOT_FOUND,
    ),
    (
        "case and spacing ignored",
        "  invalid   REQUEST details found ",
        Why.AUTHENTICATION_FAILED,
        Cat.CONNECTOR_FAULT,
        ErrorCode.CA_AUTH_FAILED,
    ),
    ("unknown subscriber", "Invalid Subscriber ID", Why.UNKNOWN_SUBSCRIBER, Cat.CONNECTOR_FAULT, ErrorCode.SUBSCRIBER_INVALID),
    ("unknown CA", "Invalid CA name", Why.UNKNOWN_CA, Cat.CONNECTOR_FAULT, ErrorCode.ISSUING_CA_NOT_FOUND),
    ("bad CSR with a detail", "Invalid CSR: SAN not allowed", Why.CSR_REJECTED, Cat.REQUEST_PERMANENT, ErrorCode.CA_REJECTED),
    ("unknown serial or request", "No record found", Why.NOT_FOUND, Cat.REQUEST_PERMANENT, ErrorCode.CERTIFICATE_NOT_FOUND),
    ("already revoked", "Certificate already revoked", Why.ALREADY_REVOKED, Cat.REQUEST_PERMANENT, ErrorCode.REVOCATION_REJECTED),
    ("approval rejected", "Request rejected: no", Why.APPROVAL_REJECTED, Cat.REQUEST_PERMANENT, ErrorCode.APPROVAL_REJECTED),
    ("anything else", "Key size not permitted by policy", Why.CA_REJECTED, Cat.REQUEST_PERMANENT, ErrorCode.CA_REJECTED),
]


@pytest.mark.parametrize(("name", "message", "reason", "category", "code"), MESSAGES, ids=[m[0] for m in MESSAGES])
def test_failure_messages_are_classified(name: str, message: str, reason: Why, category: Cat, code: ErrorCode | None) -> None:
    assert v4.classify_message(message) is reason
    with pytest.raises(v4.EmcaFailure) as caught:
        v4.parse_envelope(200, {}, body("failure", message))
    assert (caught.value.reason, caught.value.category, caught.value.error_code, caught.value.message) == (
        reason,
        category,
        code,
        message,
    )
    assert caught.value.http_status == 200 and caught.value.retry_after is None


# ---------------------------------------------------------------- HTTP level

HTTP = [
    ("429 with delta-seconds", 429, {"Retry-After": "7"}, b"", Why.RATE_LIMITED, Cat.TRANSIENT, 7.0),
    ("503 with an HTTP date", 503, {"retry-after": "Sun, 01 Jun 2025 12:00:30 GMT"}, b"", Why.SERVER_ERROR, Cat.TRANSIENT, 30.0),
    ("503 with a past date", 503, {"Retry-After": "Sun, 01 Jun 2025 11:00:00 GMT"}, b"", Why.SERVER_ERROR, Cat.TRANSIENT, 0.0),
    ("503 with garbage Retry-After", 503, {"Retry-After": "soon"}, b"", Why.SERVER_ERROR, Cat.TRANSIENT, None),
    (
        "500 with the documented envelope",
        500,
        {},
        body("failure", "Internal server error"),
        Why.INTERNAL_ERROR,
        Cat.TRANSIENT,
        None,
    ),
    (
        "500 with another envelope",
        500,
        {},
        body("failure", "Invalid request details found"),
        Why.SERVER_ERROR,
        Cat.TRANSIENT,
        None,
    ),
    ("502 from a proxy", 502, {}, b"<html>Bad Gateway</html>", Why.SERVER_ERROR, Cat.TRANSIENT, None),
    ("404: wrong base URL", 404, {}, b"<html>Not Found</html>", Why.HTTP_ERROR, Cat.CONNECTOR_FAULT, None),
    ("401 from a proxy", 401, {}, b"", Why.HTTP_ERROR, Cat.CONNECTOR_FAULT, None),
    ("400 with an envelope", 400, {}, body("failure", "Invalid parameter"), Why.INVALID_PARAMETER, Cat.CONNECTOR_FAULT, None),
    ("200 that is not JSON", 200, {}, b"<html>login</html>", Why.MALFORMED_RESPONSE, Cat.CONNECTOR_FAULT, None),
    ("200 JSON without status", 200, {}, b'{"result": "x"}', Why.MALFORMED_RESPONSE, Cat.CONNECTOR_FAULT, None),
    ("200 with an unknown status", 200, {}, body("maybe", "x"), Why.MALFORMED_RESPONSE, Cat.CONNECTOR_FAULT, None),
    ("200 JSON array", 200, {}, b"[]", Why.MALFORMED_RESPONSE, Cat.CONNECTOR_FAULT, None),
]


@pytest.mark.parametrize(
    ("name", "status", "headers", "raw", "reason", "category", "retry_after"), HTTP, ids=[h[0] for h in HTTP]
)
def test_http_level_failures(
    name: str, status: int, headers: dict, raw: bytes, reason: Why, category: Cat, retry_after: float | None
) -> None:
    with pytest.raises(v4.EmcaFailure) as caught:
        v4.parse_envelope(status, headers, raw, now=NOW)
    assert (caught.value.reason, caught.value.category, caught.value.retry_after, caught.value.http_status) == (
        reason,
        category,
        retry_after,
        status,
    )


def test_status_is_case_insensitive_as_in_the_documented_samples() -> None:
    envelope = v4.parse_envelope(200, {}, body("Success", "ok", "SUB", None))
    assert (envelope.status, envelope.result, envelope.subscriber_id, envelope.request_id) == ("success", "ok", "SUB", None)


# ---------------------------------------------------------------- issuance answers

P7B_B64 = base64.b64encode(pkcs7.serialize_certificates([ROOT, LEAF, ISSUING], serialization.Encoding.DER)).decode()

ISSUE = [
    (
        "base64 DER certificate",
        body("success", LEAF_B64, "SUB"),
        v4.IssuedCertificate(pem(LEAF), (), v4.canonical_serial(LEAF.serial_number), "SUB"),
    ),
    (
        "PEM certificate tolerated",
        body("success", pem(LEAF), "SUB"),
        v4.IssuedCertificate(pem(LEAF), (), v4.canonical_serial(LEAF.serial_number), "SUB"),
    ),
    (
        "base64 with line breaks",
        body("success", "\n".join(LEAF_B64[i : i + 64] for i in range(0, len(LEAF_B64), 64))),
        v4.IssuedCertificate(pem(LEAF), (), v4.canonical_serial(LEAF.serial_number)),
    ),
    (
        "PKCS#7 in any order: leaf and ordered chain",
        body("success", P7B_B64, "SUB"),
        v4.IssuedCertificate(pem(LEAF), (pem(ISSUING), pem(ROOT)), v4.canonical_serial(LEAF.serial_number), "SUB"),
    ),
    (
        "approved request keeps its id",
        body("success", LEAF_B64, "SUB", "REQ-1"),
        v4.IssuedCertificate(pem(LEAF), (), v4.canonical_serial(LEAF.serial_number), "SUB", "REQ-1"),
    ),
    (
        "manual approval: message and request id",
        body("Success", " your request proceded sucssusfully", "SUB", "REQ-1"),
        v4.PendingApproval("REQ-1", " your request proceded sucssusfully", "SUB"),
    ),
    (
        "still pending",
        body("pending", "Request is pending for approval", "SUB", "REQ-1"),
        v4.PendingApproval("REQ-1", "Request is pending for approval", "SUB"),
    ),
    (
        "numeric request id",
        json.dumps({"status": "success", "result": "ok", "requestId": 42}).encode(),
        v4.PendingApproval("42", "ok", None),
    ),
]


@pytest.mark.parametrize(("name", "raw", "expected"), ISSUE, ids=[i[0] for i in ISSUE])
def test_issue_answers(name: str, raw: bytes, expected: object) -> None:
    assert v4.parse_issue_response(200, {}, raw) == expected


@pytest.mark.parametrize(
    "raw", [body("success", "done"), body("success", None), body("success", "", None, "")], ids=["text", "null", "empty"]
)
def test_success_without_certificate_or_request_id_is_malformed(raw: bytes) -> None:
    with pytest.raises(v4.EmcaFailure) as caught:
        v4.parse_issue_response(200, {}, raw)
    assert caught.value.reason is Why.MALFORMED_RESPONSE and caught.value.category is Cat.CONNECTOR_FAULT


# ---------------------------------------------------------------- revoke, profiles


def test_revoke_answers() -> None:
    done = v4.parse_revoke_response(
        200, {}, body("success", "Certificate revoked successfully"), serial="0A1B", reason="superseded"
    )
    assert done == v4.Revocation(serial="a1b", reason="superseded", message="Certificate revoked successfully")
    again = v4.parse_revoke_response(200, {}, body("failure", "Certificate already revoked"), serial=0xA1B, reason="superseded")
    assert again.already_revoked and again.serial == "a1b"
    with pytest.raises(v4.EmcaFailure) as caught:
        v4.parse_revoke_response(200, {}, body("failure", "No record found"), serial="a1b", reason="superseded")
    assert caught.value.reason is Why.NOT_FOUND


PROFILE_LISTS = [
    (
        "objects",
        body("success", [{"profileName": "A", "profileId": "1"}, {"profileName": "B", "profileId": None}]),
        (v4.ProfileSummary("A", "1"), v4.ProfileSummary("B", None)),
    ),
    ("names only", body("success", ["A", "B"]), (v4.ProfileSummary("A", None), v4.ProfileSummary("B", None))),
    ("JSON inside a string", body("success", json.dumps([{"profileName": "A", "profileId": 7}])), (v4.ProfileSummary("A", "7"),)),
    ("empty: no such CA", body("success", []), ()),
]


@pytest.mark.parametrize(("name", "raw", "expected"), PROFILE_LISTS, ids=[p[0] for p in PROFILE_LISTS])
def test_profile_lists(name: str, raw: bytes, expected: tuple) -> None:
    assert v4.parse_profile_list_response(200, {}, raw) == expected


@pytest.mark.parametrize(
    "result", ["a sentence", {"profiles": []}, [{"id": 1}], [3]], ids=["text", "object", "no name", "number"]
)
def test_unreadable_profile_lists_are_malformed(result: object) -> None:
    with pytest.raises(v4.EmcaFailure) as caught:
        v4.parse_profile_list_response(200, {}, body("success", result))
    assert caught.value.reason is Why.MALFORMED_RESPONSE


INFO = {
    "profileName": "A",
    "profileId": "1",
    "issuingCA": "CA One",
    "validityDays": 365,
    "keyTypes": ["EC-P256"],
    "manualAuthorization": True,
    "issuingCAChain": [base64.b64encode(ISSUING.public_bytes(serialization.Encoding.DER)).decode()],
}
EXPECTED_INFO = v4.ProfileDetails("A", "1", "CA One", 365, ("EC-P256",), True, (pem(ISSUING),))
PROFILE_INFOS = [
    ("object", body("success", INFO), EXPECTED_INFO),
    ("JSON inside a string", body("success", json.dumps(INFO)), EXPECTED_INFO),
    (
        "only the essentials",
        body("success", {"profileName": "A", "issuingCA": "CA One"}),
        v4.ProfileDetails("A", None, "CA One", None, (), False, ()),
    ),
]


@pytest.mark.parametrize(("name", "raw", "expected"), PROFILE_INFOS, ids=[p[0] for p in PROFILE_INFOS])
def test_profile_info(name: str, raw: bytes, expected: v4.ProfileDetails) -> None:
    assert v4.parse_profile_info_response(200, {}, raw) == expected


@pytest.mark.parametrize(
    "result",
    [
        {"profileName": "A"},
        {"issuingCA": "X"},
        "text",
        {**INFO, "issuingCAChain": ["not a cert"]},
        {**INFO, "validityDays": "a year"},
    ],
    ids=["no CA", "no name", "text", "bad chain", "bad validity"],
)
def test_unreadable_profile_info_is_malformed(result: object) -> None:
    with pytest.raises(v4.EmcaFailure) as caught:
        v4.parse_profile_info_response(200, {}, body("success", result))
    assert caught.value.reason is Why.MALFORMED_RESPONSE


def test_profile_info_failure_keeps_its_classification() -> None:
    with pytest.raises(v4.EmcaFailure) as caught:
        v4.parse_profile_info_response(200, {}, body("failure", "Invalid Certificate Profile name"))
    assert caught.value.category is Cat.REQUEST_PERMANENT and caught.value.error_code is ErrorCode.CA_PROFILE_NOT_FOUND


# ---------------------------------------------------------------- inputs

SERIALS = [
    ("int", 0xA1B, "a1b"),
    ("upper hex", "0A1B", "a1b"),
    ("colons", "0a:1b", "a1b"),
    ("0x prefix", "0x0a1b", "a1b"),
    ("zero-padded 32", "0" * 29 + "A1B", "a1b"),
    ("zero", 0, "0"),
]


@pytest.mark.parametrize(("name", "given", "canonical"), SERIALS, ids=[s[0] for s in SERIALS])
def test_canonical_serial(name: str, given: int | str, canonical: str) -> None:
    assert v4.canonical_serial(given) == canonical


@pytest.mark.parametrize("given", ["", "xyz", "12 34 g", -1], ids=["empty", "not hex", "g", "negative"])
def test_bad_serials(given: int | str) -> None:
    with pytest.raises(ValueError):
        v4.canonical_serial(given)


AES_KEYS = [
    ("base64", base64.b64encode(AES_KEY).decode()),
    ("base64 bytes with newline", base64.b64encode(AES_KEY) + b"\n"),
    ("hex", AES_KEY.hex()),
    ("upper hex", AES_KEY.hex().upper()),
    ("raw", AES_KEY),
]


@pytest.mark.parametrize(("name", "given"), AES_KEYS, ids=[k[0] for k in AES_KEYS])
def test_aes_key_forms(name: str, given: str | bytes) -> None:
    assert v4.parse_aes_key(given) == AES_KEY


@pytest.mark.parametrize(
    "given",
    [base64.b64encode(bytes(16)).decode(), "zz" * 32, "not a key", bytes(31)],
    ids=["AES-128", "bad hex", "text", "31 bytes"],
)
def test_bad_aes_keys(given: str | bytes) -> None:
    with pytest.raises(ValueError):
        v4.parse_aes_key(given)


def test_load_pfx() -> None:
    signer = v4.load_pfx(base64.b64decode(KEYS["pfx_b64"]), KEYS["pfx_password"])
    assert signer.certificate == x509.load_pem_x509_certificate(KEYS["signer_certificate_pem"].encode())
    assert signer.additional_certificates == (ROOT,)
    assert "private_key" not in repr(signer)


@pytest.mark.parametrize(
    ("data", "password"),
    [(base64.b64decode(KEYS["pfx_b64"]), "wrong"), (b"not a pfx", "x"), (base64.b64decode(KEYS["pfx_b64"]), None)],
    ids=["wrong password", "garbage", "no password"],
)
def test_pfx_that_cannot_be_opened(data: bytes, password: str | None) -> None:
    with pytest.raises(v4.PfxError):
        v4.load_pfx(data, password)


def requests() -> v4.V4017Requests:
    signer = v4.load_pfx(base64.b64decode(KEYS["pfx_b64"]), KEYS["pfx_password"])
    creds = v4.Credentials(username=KEYS["username"], password=KEYS["password"], aes_key=AES_KEY, signer=signer)
    return v4.V4017Requests(creds, random_bytes=lambda n: bytes(n), clock=lambda: NOW)


def inner_of(request: v4.EmcaRequest) -> dict:
    raw = base64.b64decode(json.loads(request.body)["requestData"])
    return json.loads(AESGCM(AES_KEY).decrypt(raw[:12], raw[12:], None))


@pytest.mark.parametrize(("reason", "mode"), sorted(v4.REVOKE_MODE_BY_REASON.items()))
def test_revoke_reason_to_revoke_mode(reason: str, mode: int) -> None:
    inner = inner_of(requests().revoke("a1b", reason))
    assert (inner["revokeMode"], inner["remarks"]) == (mode, reason)
    assert v4.REASON_BY_REVOKE_MODE[mode] == reason


def test_revoke_accepts_reason_flags_and_refuses_reasons_emca_lacks() -> None:
    assert inner_of(requests().revoke(1, x509.ReasonFlags.key_compromise, "leaked"))["revokeMode"] == 1
    for reason in ("removeFromCRL", "compromised"):
        with pytest.raises(ValueError):
            requests().revoke(1, reason)


def test_create_certificate_refuses_what_is_not_a_csr() -> None:
    with pytest.raises(ValueError):
        requests().create_certificate(
            profile_name="A", subscriber_id="S", application_id="I", csr_pem=KEYS["leaf_certificate_pem"]
        )


def test_requests_differ_only_by_nonce_and_signing_time() -> None:
    a = requests().get_certificate("a1b")
    b = requests().get_certificate("a1b")
    assert a == b
    assert a.url("https://emca.example/") == "https://emca.example/emCAServices/rest/getCertificate"
    assert a.headers_dict()["emKey"] == v4.em_key(KEYS["username"], KEYS["password"])


def test_secrets_stay_out_of_reprs() -> None:
    creds = v4.Credentials(
        username="app",
        password="hunter2",
        aes_key=AES_KEY,
        signer=v4.load_pfx(base64.b64decode(KEYS["pfx_b64"]), KEYS["pfx_password"]),
    )
    text = repr(creds) + repr(requests().get_certificate("a1b"))
    assert "hunter2" not in text and AES_KEY.hex() not in text and "requestData" not in text


def test_the_builder_refuses_a_wrong_size_aes_key() -> None:
    creds = v4.Credentials(
        username="app",
        password="p",
        aes_key=bytes(16),
        signer=v4.load_pfx(base64.b64decode(KEYS["pfx_b64"]), KEYS["pfx_password"]),
    )
    with pytest.raises(ValueError):
        v4.V4017Requests(creds)


def test_the_connector_side_does_not_import_the_simulator_or_do_io() -> None:
    """The two sides are independent implementations held together by the vectors only."""
    tree = ast.parse(Path(v4.__file__).read_text(encoding="utf-8"))
    imported = {n.name for node in ast.walk(tree) if isinstance(node, ast.Import) for n in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in {"emca_sim", "httpx", "aiohttp", "requests", "socket"}}
