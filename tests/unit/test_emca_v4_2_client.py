"""The connector's emCA 4.2.x dialect (sans-IO): request building, parsing,
failure classification and the token cache, as tables of named cases.

The exact request and response bytes are pinned by the golden vectors
(test_emca_v4_2_vectors.py); this file covers the decisions around them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.common.contracts.fields import RevocationReason
from services.common.emca.dialects.v4_2 import (
    CATEGORIES,
    AccessToken,
    Credentials,
    EmcaFailure,
    FailureCategory,
    HttpResponse,
    IssuedCertificate,
    PendingRequest,
    RejectedRequest,
    RequestBuilder,
    TokenCache,
    Version,
    auth_key,
    classify_failure,
    normalise_serial,
    parse_cas,
    parse_certificate,
    parse_chain,
    parse_create_certificates,
    parse_crl,
    parse_profiles,
    parse_revoke,
    parse_token,
    retry_after_seconds,
    timestamp_ms,
)

NOW = datetime(2026, 5, 4, 12, 0, 0, 123456, tzinfo=UTC)
CREDS = Credentials("app-1", "s3cret-pw", "client-id-1")
# PEM framing around arbitrary DER bytes: the client only hashes the DER to check the fingerprint
CERT_PEM = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBfjCCASSgAwIBAgIUYzVhN2JkNTQ0ZDk3YjU1MTJiMjAKBggqhkjOPQQDAjAP\n"
    "MQ0wCwYDVQQDDARUZXN0MB4XDTI2MDEwMTAwMDAwMFoXDTM2MDEwMTAwMDAwMFow\n"
    "DzENMAsGA1UEAwwEVGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABHQ6h8vN\n"
    "-----END CERTIFICATE-----\n"
)


def builder(version: Version = Version.V4_2_3, **kwargs: Any) -> RequestBuilder:
    ids = iter(f"id-{n:06d}" for n in range(1, 1000))
    return RequestBuilder(version, CREDS, clock=lambda: NOW, new_id=lambda: next(ids), **kwargs)


def ok(result: object, status: int = 200) -> HttpResponse:
    return HttpResponse(status, json.dumps({"status": "success", "result": result}).encode())


def fail(status: int, code: str, message: str = "m", headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    return HttpResponse(status, json.dumps({"status": "failure", "errorCode": code, "errorMessage": message}).encode(), headers)


def issued_record(**changes: Any) -> dict[str, Any]:
    record = {
        "status": "issued",
        "requestId": None,
        "serialNumber": "0ABC",
        "certificate": CERT_PEM,
        "chain": [CERT_PEM],
        "profileName": "TLS Server",
        "subscriberId": "SUB-1",
        "applicationId": "iss-1",
        "issuedAt": "2026-05-04T12:00:00Z",
        "revokedAt": None,
        "revocationReason": None,
    }
    record.update(changes)
    return record


# -- building -----------------------------------------------------------------------------------------


def test_v423_headers_carry_basic_credentials_and_the_authkey() -> None:
    request = builder().get_cas()
    assert (request.method, request.path, request.body) == ("GET", "/emCAServices42/rest/getCAs/app-1", b"")
    ts = "1777896000123"
    assert request.headers == (
        ("Authorization", "Basic " + base64.b64encode(b"app-1:s3cret-pw").decode()),
        ("AuthKey", hashlib.sha256(f"client-id-1{ts}id-000001".encode()).hexdigest()),
        ("ts", ts),
        ("txn", "id-000001"),
    )


def test_v424_headers_carry_the_token_and_a_fresh_nonce_each_call() -> None:
    b = builder(Version.V4_2_4)
    first, second = b.get_crl(ca_name="CA", token="t0k"), b.get_crl(ca_name="CA", token="t0k")
    assert first.headers == (("Authorization", "Bearer t0k"), ("X-Nonce", "id-000001"), ("Content-Type", "application/json"))
    assert dict(second.headers)["X-Nonce"] == "id-000002"
    assert first.body == b'{"caName":"CA"}'


def test_token_request() -> None:
    request = builder(Version.V4_2_4).token(validity_mins=30)
    assert (request.method, request.path) == ("POST", "/emCAServices42/auth/token")
    assert request.headers == (("X-Nonce", "id-000001"), ("Content-Type", "application/json"))
    assert json.loads(request.body) == {
        "username": "app-1",
        "password": "s3cret-pw",
        "clientId": "client-id-1",
        "validityInMins": 30,
    }


def test_default_ids_are_fresh_uuid_hex() -> None:
    b = RequestBuilder(Version.V4_2_3, CREDS)
    txns = {dict(b.get_cas().headers)["txn"] for _ in range(50)}
    assert len(txns) == 50
    assert all(len(t) == 32 and int(t, 16) >= 0 for t in txns)


def test_app_code_is_quoted_in_the_path() -> None:
    b = RequestBuilder(Version.V4_2_3, Credentials("odd app/1", "p", "c"), clock=lambda: NOW, new_id=lambda: "id-000001")
    assert b.get_profiles().path == "/emCAServices42/rest/getProfiles/odd%20app%2F1"


@pytest.mark.parametrize(
    ("call", "body"),
    [
        (
            lambda b: b.create_certificates(profile_name="P", subscriber_id="S", csrs=("c1", "c2")),
            {"profileName": "P", "subscriberId": "S", "applicationId": None, "csrs": ["c1", "c2"]},
        ),
        (lambda b: b.get_certificate(serial="0A:BC"), {"serialNumber": "0abc"}),
        (lambda b: b.get_certificate(request_id="REQ-1"), {"requestId": "REQ-1"}),
        (lambda b: b.get_certificate_chain(serial="FF"), {"serialNumber": "ff"}),
        (
            lambda b: b.revoke(serial="ab", reason=RevocationReason.KEY_COMPROMISE),
            {"serialNumber": "ab", "reason": "keyCompromise", "remarks": ""},
        ),
        (
            lambda b: b.revoke(serial="ab", reason="aACompromise", remarks="x"),
            {"serialNumber": "ab", "reason": "aACompromise", "remarks": "x"},
        ),
    ],
    ids=["create-without-application-id", "serial-normalised", "by-request-id", "chain-by-serial", "reason-enum", "reason-name"],
)
def test_bodies(call: Any, body: dict[str, Any]) -> None:
    request = call(builder())
    assert request.method == "POST"
    assert json.loads(request.body) == body
    assert list(json.loads(request.body)) == list(body), "key order is part of the wire format"


@pytest.mark.parametrize(
    ("version", "call"),
    [
        (Version.V4_2_3, lambda b: b.token()),
        (Version.V4_2_4, lambda b: b.token(validity_mins=0)),
        (Version.V4_2_4, lambda b: b.token(validity_mins=61)),
        (Version.V4_2_4, lambda b: b.get_cas()),
        (Version.V4_2_3, lambda b: b.get_cas(token="t")),
        (Version.V4_2_3, lambda b: b.get_certificate()),
        (Version.V4_2_3, lambda b: b.get_certificate(serial="ab", request_id="r")),
        (Version.V4_2_3, lambda b: b.get_certificate(serial="xyz")),
        (Version.V4_2_3, lambda b: b.get_certificate_chain()),
        (Version.V4_2_3, lambda b: b.get_certificate_chain(ca_name="CA", serial="ab")),
        (Version.V4_2_3, lambda b: b.revoke(serial="ab", reason="certificateHold")),
        (Version.V4_2_3, lambda b: b.revoke(serial="ab", reason="removeFromCRL")),
        (Version.V4_2_3, lambda b: b.create_certificates(profile_name="P", subscriber_id="S", csrs=[])),
        (Version.V4_2_3, lambda b: b.create_certificates(profile_name="P", subscriber_id="S", csrs="one-csr-string")),
        (Version.V4_2_3, lambda b: b.create_certificates(profile_name="P", subscriber_id="S", csrs=["c"] * 51)),
    ],
    ids=[
        "token-on-v423",
        "validity-0",
        "validity-61",
        "v424-without-token",
        "v423-with-token",
        "certificate-neither",
        "certificate-both",
        "bad-serial",
        "chain-neither",
        "chain-both",
        "hold-is-suspend",
        "remove-from-crl",
        "no-csrs",
        "csrs-as-string",
        "too-many-csrs",
    ],
)
def test_builder_refuses_what_the_server_would(version: Version, call: Any) -> None:
    with pytest.raises(ValueError):
        call(builder(version))


@pytest.mark.parametrize("bad_id", ["short", "x" * 65, "has space", "ünïcode-id"], ids=["short", "long", "space", "non-ascii"])
def test_builder_refuses_ids_the_server_would_not_accept(bad_id: str) -> None:
    b = RequestBuilder(Version.V4_2_3, CREDS, clock=lambda: NOW, new_id=lambda: bad_id)
    with pytest.raises(ValueError):
        b.get_cas()


def test_helpers() -> None:
    assert timestamp_ms(datetime(1970, 1, 1, 0, 0, 1, 999999, tzinfo=UTC)) == "1999"
    assert auth_key("C", "1", "t") == hashlib.sha256(b"C1t").hexdigest()
    assert normalise_serial("0A:bc:FF") == "0abcff"
    assert "s3cret" not in repr(CREDS) and "client-id" not in repr(CREDS)
    assert "secret-token" not in repr(AccessToken("secret-token", NOW, NOW))


# -- classification -----------------------------------------------------------------------------------

P, C, T, K = (
    FailureCategory.REQUEST_PERMANENT,
    FailureCategory.CONNECTOR_FAULT,
    FailureCategory.TRANSIENT,
    FailureCategory.TOKEN_REJECTED,
)


@pytest.mark.parametrize(
    ("response", "category", "code", "retry_after"),
    [
        (fail(422, "CSR_REJECTED"), P, "CSR_REJECTED", None),
        (fail(422, "UNKNOWN_PROFILE"), P, "UNKNOWN_PROFILE", None),
        (fail(404, "NOT_FOUND"), P, "NOT_FOUND", None),
        (fail(409, "ALREADY_REVOKED"), P, "ALREADY_REVOKED", None),
        (fail(422, "UNKNOWN_SUBSCRIBER"), C, "UNKNOWN_SUBSCRIBER", None),
        (fail(404, "UNKNOWN_CA"), C, "UNKNOWN_CA", None),
        (fail(401, "INVALID_CREDENTIALS"), C, "INVALID_CREDENTIALS", None),
        (fail(401, "INVALID_AUTH_KEY"), C, "INVALID_AUTH_KEY", None),
        (fail(401, "AUTH_REQUIRED"), C, "AUTH_REQUIRED", None),
        (fail(401, "STALE_TIMESTAMP"), C, "STALE_TIMESTAMP", None),
        (fail(403, "SOURCE_NOT_ALLOWED"), C, "SOURCE_NOT_ALLOWED", None),
        (fail(400, "INVALID_PARAMETER"), C, "INVALID_PARAMETER", None),
        (fail(401, "TOKEN_EXPIRED"), K, "TOKEN_EXPIRED", None),
        (fail(401, "TOKEN_INVALID"), K, "TOKEN_INVALID", None),
        (fail(401, "REPLAYED_TXN"), T, "REPLAYED_TXN", None),
        (fail(401, "REPLAYED_NONCE"), T, "REPLAYED_NONCE", None),
        (fail(500, "INTERNAL_ERROR"), T, "INTERNAL_ERROR", None),
        (fail(503, "CSR_REJECTED"), T, "CSR_REJECTED", None),
        (HttpResponse(503, b"<html>down</html>", (("Retry-After", "7"),)), T, "HTTP_503", 7.0),
        (HttpResponse(502, b""), T, "HTTP_502", None),
        (HttpResponse(429, b"slow down", (("retry-after", "2"),)), T, "HTTP_429", 2.0),
        (fail(429, "RATE_LIMITED", headers=(("Retry-After", "Mon, 04 May 2026 12:00:30 GMT"),)), T, "RATE_LIMITED", 29.876544),
        (HttpResponse(408, b""), T, "HTTP_408", None),
        (HttpResponse(404, b"Not Found"), C, "MALFORMED_RESPONSE", None),
        (HttpResponse(401, b""), C, "MALFORMED_RESPONSE", None),
        (HttpResponse(302, b""), C, "MALFORMED_RESPONSE", None),
        (HttpResponse(400, b'{"status":"failure"}'), C, "MALFORMED_RESPONSE", None),
        (fail(418, "SOMETHING_NEW"), C, "SOMETHING_NEW", None),
        (fail(200, "CSR_REJECTED"), P, "CSR_REJECTED", None),
    ],
    ids=[
        "csr-rejected",
        "unknown-profile",
        "not-found",
        "already-revoked",
        "unknown-subscriber",
        "unknown-ca",
        "bad-credentials",
        "bad-authkey",
        "auth-missing",
        "clock-skew",
        "source-address",
        "invalid-parameter",
        "token-expired",
        "token-invalid",
        "replayed-txn",
        "replayed-nonce",
        "internal-error",
        "5xx-wins-over-code",
        "503-retry-after",
        "502-empty",
        "429-seconds",
        "429-http-date",
        "408",
        "404-not-emca",
        "401-no-body",
        "redirect",
        "envelope-without-code",
        "unknown-code",
        "failure-envelope-on-200",
    ],
)
def test_classification(response: HttpResponse, category: FailureCategory, code: str, retry_after: float | None) -> None:
    failure = classify_failure(response, now=NOW)
    assert (failure.category, failure.code, failure.http_status) == (category, code, response.status)
    assert failure.retry_after == (pytest.approx(retry_after) if retry_after is not None else None)


def test_parsers_raise_the_classified_failure() -> None:
    with pytest.raises(EmcaFailure) as caught:
        parse_revoke(fail(409, "ALREADY_REVOKED", "Certificate already revoked"))
    assert caught.value.already_revoked
    assert caught.value.message == "Certificate already revoked"
    with pytest.raises(EmcaFailure) as caught:
        parse_create_certificates(fail(422, "CSR_REJECTED", "CSR rejected: bad key"))
    assert (caught.value.category, caught.value.already_revoked) == (P, False)


def test_every_code_is_classified_into_a_category() -> None:
    assert set(CATEGORIES.values()) == set(FailureCategory)


@pytest.mark.parametrize(
    ("value", "now", "expected"),
    [
        ("120", None, 120.0),
        (" 3 ", None, 3.0),
        ("", None, None),
        (None, None, None),
        ("soon", NOW, None),
        ("Mon, 04 May 2026 12:01:00 GMT", None, None),
        ("Mon, 04 May 2026 11:00:00 GMT", NOW, 0.0),
        ("-5", None, None),
    ],
    ids=["seconds", "padded", "empty", "absent", "garbage", "date-without-clock", "date-in-the-past", "negative"],
)
def test_retry_after(value: str | None, now: datetime | None, expected: float | None) -> None:
    assert retry_after_seconds(value, now=now) == expected


# -- parsing ------------------------------------------------------------------------------------------


def test_records_become_typed_outcomes() -> None:
    outcomes = parse_create_certificates(
        ok(
            {
                "certificates": [
                    issued_record(),
                    {
                        "status": "pending",
                        "requestId": "REQ-1",
                        "profileName": "M",
                        "subscriberId": "SUB-1",
                        "applicationId": None,
                    },
                    {"status": "rejected", "requestId": None, "errorCode": "CSR_REJECTED", "errorMessage": "CSR rejected: why"},
                ]
            }
        )
    )
    assert outcomes == (
        IssuedCertificate(
            "0abc",
            CERT_PEM,
            (CERT_PEM,),
            "TLS Server",
            "SUB-1",
            "iss-1",
            None,
            datetime(2026, 5, 4, 12, 0, tzinfo=UTC),
            False,
            None,
            None,
        ),
        PendingRequest("REQ-1", "M", "SUB-1", None),
        RejectedRequest(None, "CSR_REJECTED", "CSR rejected: why"),
    )


def test_approval_outcomes_when_polling() -> None:
    approved = parse_certificate(ok(issued_record(requestId="REQ-1")))
    assert isinstance(approved, IssuedCertificate) and approved.request_id == "REQ-1"
    rejected = parse_certificate(
        ok({"status": "rejected", "requestId": "REQ-2", "errorCode": "REQUEST_REJECTED", "errorMessage": "no"})
    )
    assert rejected == RejectedRequest("REQ-2", "REQUEST_REJECTED", "no")


def test_revoked_record() -> None:
    revoked = parse_revoke(ok(issued_record(status="revoked", revokedAt="2026-05-04T13:00:00Z", revocationReason="superseded")))
    assert (revoked.revoked, revoked.revoked_at, revoked.revocation_reason) == (
        True,
        datetime(2026, 5, 4, 13, 0, tzinfo=UTC),
        "superseded",
    )


def test_lists_chain_and_crl() -> None:
    sha = hashlib.sha256(base64.b64decode("".join(CERT_PEM.splitlines()[1:-1]))).hexdigest()
    [ca] = parse_cas(ok({"cas": [{"name": "Exact CA Name", "keyType": "EC-P256", "certificate": CERT_PEM, "sha256": sha}]}))
    assert (ca.name, ca.key_type, ca.sha256) == ("Exact CA Name", "EC-P256", sha)
    [profile] = parse_profiles(
        ok(
            {
                "profiles": [
                    {
                        "name": "P",
                        "profileId": "1",
                        "issuingCa": "Exact CA Name",
                        "validityDays": 90,
                        "keyTypes": ["EC-P256"],
                        "manualApproval": True,
                    }
                ]
            }
        )
    )
    assert (profile.issuing_ca, profile.key_types, profile.manual_approval) == ("Exact CA Name", ("EC-P256",), True)
    assert parse_chain(ok({"chain": [CERT_PEM, CERT_PEM]})) == (CERT_PEM, CERT_PEM)
    assert parse_crl(ok({"caName": "X", "crl": base64.b64encode(b"\x30\x00").decode()})) == b"\x30\x00"


def test_token_lifetime_counts_from_the_request() -> None:
    token = parse_token(ok({"accessToken": "jwt", "tokenType": "Bearer", "expiresIn": 900}), requested_at=NOW)
    assert token == AccessToken("jwt", NOW, NOW + timedelta(minutes=15))


@pytest.mark.parametrize(
    ("parse", "response"),
    [
        (parse_cas, HttpResponse(200, b"<html>proxy</html>")),
        (parse_cas, HttpResponse(200, b'{"status":"success"}')),
        (parse_cas, HttpResponse(200, b'{"status":"maybe","result":{}}')),
        (parse_cas, ok({"cas": [{"name": "CA", "keyType": "EC-P256", "certificate": CERT_PEM, "sha256": "00" * 32}]})),
        (parse_cas, ok({"cas": [{"name": "CA", "keyType": "EC-P256", "certificate": "not pem", "sha256": "00"}]})),
        (parse_cas, ok({"cas": {"name": "CA"}})),
        (
            parse_profiles,
            ok(
                {
                    "profiles": [
                        {
                            "name": "P",
                            "profileId": "1",
                            "issuingCa": "CA",
                            "validityDays": "90",
                            "keyTypes": [],
                            "manualApproval": False,
                        }
                    ]
                }
            ),
        ),
        (
            parse_profiles,
            ok(
                {
                    "profiles": [
                        {
                            "name": "P",
                            "profileId": "1",
                            "issuingCa": "CA",
                            "validityDays": 90,
                            "keyTypes": [],
                            "manualApproval": "no",
                        }
                    ]
                }
            ),
        ),
        (parse_create_certificates, ok({"certificates": []})),
        (parse_create_certificates, ok({"certificates": [{"status": "queued"}]})),
        (parse_certificate, ok(issued_record(issuedAt="04/05/2026"))),
        (parse_certificate, ok(issued_record(chain="PEM"))),
        (parse_certificate, ok(issued_record(serialNumber=""))),
        (parse_certificate, ok(issued_record(applicationId=7))),
        (parse_certificate, ok(["not", "an", "object"])),
        (parse_revoke, ok(issued_record())),
        (parse_revoke, ok({"status": "pending", "requestId": "R", "profileName": "P", "subscriberId": "S"})),
        (parse_chain, ok({"chain": []})),
        (parse_crl, ok({"caName": "X", "crl": "***"})),
        (lambda r: parse_token(r, requested_at=NOW), ok({"accessToken": "j", "tokenType": "MAC", "expiresIn": 900})),
        (lambda r: parse_token(r, requested_at=NOW), ok({"accessToken": "j", "tokenType": "Bearer", "expiresIn": 0})),
        (lambda r: parse_token(r, requested_at=NOW), ok({"accessToken": "j", "tokenType": "Bearer", "expiresIn": True})),
    ],
    ids=[
        "html",
        "no-result",
        "unknown-status",
        "fingerprint-mismatch",
        "certificate-not-pem",
        "cas-not-a-list",
        "validity-as-string",
        "approval-flag-as-string",
        "no-records",
        "unknown-record-status",
        "time-format",
        "chain-as-string",
        "empty-serial",
        "application-id-number",
        "result-not-object",
        "revoke-not-revoked",
        "revoke-pending",
        "empty-chain",
        "crl-not-base64",
        "token-type",
        "token-lifetime-0",
        "token-lifetime-bool",
    ],
)
def test_malformed_success_responses_are_connector_faults(parse: Any, response: HttpResponse) -> None:
    with pytest.raises(EmcaFailure) as caught:
        parse(response)
    assert (caught.value.category, caught.value.code) == (C, "MALFORMED_RESPONSE")


# -- token cache --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "margin", "age", "reused"),
    [
        (timedelta(minutes=15), timedelta(seconds=60), timedelta(0), True),
        (timedelta(minutes=15), timedelta(seconds=60), timedelta(minutes=13, seconds=59), True),
        (timedelta(minutes=15), timedelta(seconds=60), timedelta(minutes=14), False),
        (timedelta(minutes=15), timedelta(seconds=60), timedelta(minutes=20), False),
        (timedelta(seconds=60), timedelta(seconds=60), timedelta(seconds=29), True),
        (timedelta(seconds=60), timedelta(seconds=60), timedelta(seconds=30), False),
        (timedelta(minutes=15), timedelta(0), timedelta(minutes=14, seconds=59), True),
    ],
    ids=["fresh", "just-before-margin", "at-margin", "expired", "short-token-half-life", "short-token-past-half", "no-margin"],
)
def test_token_cache_reuse(lifetime: timedelta, margin: timedelta, age: timedelta, reused: bool) -> None:
    cache = TokenCache(refresh_margin=margin)
    cache.store(AccessToken("jwt", NOW, NOW + lifetime))
    assert cache.current(NOW + age) == ("jwt" if reused else None)


def test_token_cache_invalidation() -> None:
    cache = TokenCache()
    assert cache.current(NOW) is None
    cache.store(AccessToken("old", NOW, NOW + timedelta(minutes=15)))
    cache.store(AccessToken("new", NOW, NOW + timedelta(minutes=15)))
    cache.invalidate("old")  # a call that failed with the old token must not drop the new one
    assert cache.current(NOW) == "new"
    cache.invalidate("new")
    assert cache.current(NOW) is None
    cache.store(AccessToken("another", NOW, NOW + timedelta(minutes=15)))
    cache.invalidate()
    assert cache.current(NOW) is None


def test_the_connector_dialect_is_independent_of_the_simulator_and_of_io() -> None:
    import ast
    from pathlib import Path

    import services.common.emca.dialects.v4_2 as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] in {"emca_sim", "httpx", "aiohttp", "requests", "socket"}}
