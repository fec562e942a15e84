"""The httpx emCA client without a server (httpx.MockTransport): transport failures classified at
the boundary, the V4.2.4+ token cache, one-shot retries, and refusals of unusable secrets."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12

from services.common.contracts.errors import ErrorCode
from services.common.emca.client import connect
from services.common.emca.fake import FakeEmca
from services.common.emca.transport import classify_transport_error
from services.common.emca.types import (
    POOL_CAP,
    ConnectorFaultError,
    EmcaEndpoint,
    EmcaVersion,
    FailureKind,
    HttpOptions,
    IssuedCertificate,
    RequestPermanentError,
    TransientError,
)

URL = "https://emca.example.test"


def connect_error(cause: BaseException | None, message: str = "connect failed") -> httpx.ConnectError:
    error = httpx.ConnectError(message)
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "kind", "code", "detail"),
    [
        (connect_error(ssl.SSLCertVerificationError(1, "certificate verify failed")), FailureKind.CONNECTOR_FAULT,
         ErrorCode.CA_TLS_UNTRUSTED, "tls_untrusted"),
        (connect_error(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")), FailureKind.CONNECTOR_FAULT,
         ErrorCode.CA_PROTOCOL_ERROR, "tls_error"),
        (connect_error(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")), FailureKind.TRANSIENT,
         ErrorCode.CA_UNREACHABLE, "unreachable"),
        (connect_error(ConnectionRefusedError(111, "Connection refused")), FailureKind.TRANSIENT, ErrorCode.CA_UNREACHABLE,
         "unreachable"),
        (httpx.ConnectTimeout("timed out"), FailureKind.TRANSIENT, ErrorCode.CA_UNREACHABLE, "timeout"),
        (httpx.ReadTimeout("timed out"), FailureKind.TRANSIENT, ErrorCode.CA_UNREACHABLE, "timeout"),
        (httpx.PoolTimeout("no connection free"), FailureKind.TRANSIENT, ErrorCode.CA_UNREACHABLE, "timeout"),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), FailureKind.TRANSIENT,
         ErrorCode.CA_UNREACHABLE, "unreachable"),
        (httpx.ReadError("connection reset"), FailureKind.TRANSIENT, ErrorCode.CA_UNREACHABLE, "unreachable"),
        (httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'"), FailureKind.CONNECTOR_FAULT,
         ErrorCode.CA_PROTOCOL_ERROR, "http_error"),
    ],
    ids=["cert-untrusted", "tls-other", "tls-eof", "refused", "connect-timeout", "read-timeout", "pool-timeout",
         "disconnected", "reset", "unsupported"],
)
def test_transport_failures_are_classified(error: httpx.HTTPError, kind: FailureKind, code: ErrorCode, detail: str) -> None:
    classified = classify_transport_error(error, URL)
    assert (classified.kind, classified.code, classified.detail) == (kind, code, detail)
    assert URL in classified.message


def v42_endpoint(version: EmcaVersion = EmcaVersion.V4_2_4) -> EmcaEndpoint:
    return EmcaEndpoint(version=version, base_url=URL, username="app", password="pw", client_id="cid")


class Fake42:
    """Answers 4.2.x calls; ``script`` gives per-call overrides of the next getCAs answers."""

    def __init__(self) -> None:
        ca = FakeEmca().issuing_ca("Fake Issuing CA P-256")
        self.cas = {"cas": [{"name": ca.name, "keyType": "EC-P256", "certificate": ca.certificate_pem, "sha256": ca.sha256}]}
        self.tokens_issued = 0
        self.seen: list[httpx.Request] = []
        self.script: list[tuple[int, dict[str, Any], dict[str, str]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if request.url.path.endswith("/auth/token"):
            self.tokens_issued += 1
            result = {"accessToken": f"tok{self.tokens_issued}", "tokenType": "Bearer", "expiresIn": 900}
            return httpx.Response(200, json={"status": "success", "result": result})
        if self.script:
            status, body, headers = self.script.pop(0)
            return httpx.Response(status, json=body, headers=headers)
        return httpx.Response(200, json={"status": "success", "result": self.cas})


def failure(code: str) -> dict[str, str]:
    return {"status": "failure", "errorCode": code, "errorMessage": code.lower()}


def client(server: Callable[[httpx.Request], httpx.Response], endpoint: EmcaEndpoint | None = None) -> Any:
    return connect(endpoint or v42_endpoint(), HttpOptions(), transport=httpx.MockTransport(server))


async def test_v4_2_4_fetches_one_token_for_concurrent_calls_and_reuses_it() -> None:
    server = Fake42()
    connection = client(server)
    await asyncio.gather(*(connection.check_connection() for _ in range(8)))
    await connection.check_connection()
    assert server.tokens_issued == 1
    calls = [r for r in server.seen if not r.url.path.endswith("/auth/token")]
    assert {r.headers["Authorization"] for r in calls} == {"Bearer tok1"}
    assert len({r.headers["X-Nonce"] for r in calls}) == len(calls)  # a fresh nonce per call
    await connection.aclose()


async def test_a_refused_token_is_replaced_once() -> None:
    server = Fake42()
    connection = client(server)
    await connection.check_connection()
    server.script = [(401, failure("TOKEN_EXPIRED"), {})]
    await connection.check_connection()
    assert server.tokens_issued == 2 and server.seen[-1].headers["Authorization"] == "Bearer tok2"
    server.script = [(401, failure("TOKEN_INVALID"), {}), (401, failure("TOKEN_INVALID"), {})]
    with pytest.raises(ConnectorFaultError) as info:  # a fresh token refused too: the credentials are wrong
        await connection.check_connection()
    assert info.value.code is ErrorCode.CA_AUTH_FAILED


async def test_a_replayed_id_is_retried_once_with_a_new_one() -> None:
    server = Fake42()
    connection = client(server, v42_endpoint(EmcaVersion.V4_2_3))
    server.script = [(401, failure("REPLAYED_TXN"), {})]
    await connection.check_connection()
    txns = [r.headers["txn"] for r in server.seen]
    assert len(txns) == 2 and txns[0] != txns[1] and server.tokens_issued == 0  # V4.2.3: no token endpoint
    server.script = [(401, failure("REPLAYED_TXN"), {}), (401, failure("REPLAYED_TXN"), {})]
    with pytest.raises(TransientError):
        await connection.check_connection()


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "code", "retry_after"),
    [
        (429, {"status": "failure", "result": "Too many requests"}, {"Retry-After": "12"}, FailureKind.TRANSIENT,
         ErrorCode.CA_UNREACHABLE, 12.0),
        (503, failure("INTERNAL_ERROR"), {}, FailureKind.TRANSIENT, ErrorCode.CA_UNREACHABLE, None),
        (401, failure("INVALID_CREDENTIALS"), {}, FailureKind.CONNECTOR_FAULT, ErrorCode.CA_AUTH_FAILED, None),
        (403, failure("SOURCE_NOT_ALLOWED"), {}, FailureKind.CONNECTOR_FAULT, ErrorCode.CA_AUTH_FAILED, None),
        (404, {"detail": "Not Found"}, {}, FailureKind.CONNECTOR_FAULT, ErrorCode.CA_PROTOCOL_ERROR, None),
        (400, failure("SOMETHING_NEW"), {}, FailureKind.CONNECTOR_FAULT, ErrorCode.CA_PROTOCOL_ERROR, None),
    ],
    ids=["429", "503", "credentials", "source", "wrong-url", "unknown-code"],
)
async def test_4_2_answers_are_classified(
    status: int, body: dict[str, Any], headers: dict[str, str], kind: FailureKind, code: ErrorCode, retry_after: float | None
) -> None:
    server = Fake42()
    server.script = [(status, body, headers)]
    with pytest.raises(Exception) as info:
        await client(server, v42_endpoint(EmcaVersion.V4_2_3)).check_connection()
    assert (info.value.kind, info.value.code, info.value.retry_after) == (kind, code, retry_after)  # type: ignore[attr-defined]


async def test_an_oversized_answer_is_refused() -> None:
    big = httpx.Response(200, content=b"x" * 2048)
    connection = connect(v42_endpoint(EmcaVersion.V4_2_3), HttpOptions(max_response_bytes=1024),
                         transport=httpx.MockTransport(lambda request: big))
    with pytest.raises(ConnectorFaultError) as info:
        await connection.check_connection()
    assert info.value.code is ErrorCode.CA_PROTOCOL_ERROR and "more than 1024 bytes" in info.value.message


def self_signed_pfx(password: bytes) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "app")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    return pkcs12.serialize_key_and_certificates(b"app", key, cert, None, serialization.BestAvailableEncryption(password))


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"pfx": b"not a pfx"}, ErrorCode.CA_SIGNATURE_FAILED),
        ({"pfx_password": "wrong"}, ErrorCode.CA_SIGNATURE_FAILED),
        ({"aes_key": "too short"}, ErrorCode.CA_DECRYPTION_FAILED),
    ],
    ids=["not-a-pfx", "pfx-password", "aes-key"],
)
def test_unusable_v4_0_17_secrets_are_connector_faults(changes: dict[str, Any], code: ErrorCode) -> None:
    legacy = EmcaEndpoint(version=EmcaVersion.V4_0_17, base_url=URL, username="u", password="p", aes_key="0" * 64,
                          pfx=self_signed_pfx(b"right"), pfx_password="right")
    connect(legacy)  # usable as given
    with pytest.raises(ConnectorFaultError) as info:
        connect(replace(legacy, **changes))
    assert info.value.code is code


def test_http_base_urls_are_refused_and_pools_follow_the_concurrency() -> None:
    with pytest.raises(ValueError, match="https"):
        connect(replace(v42_endpoint(), base_url="http://emca.example.test"))
    options = HttpOptions.for_concurrency(4, read_timeout=5.0)
    assert (options.max_connections, options.max_keepalive_connections, options.read_timeout) == (4, 4, 5.0)
    assert HttpOptions.for_concurrency(64).max_connections == POOL_CAP == 8  # measured: more connections cost more CPU


VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "emca" / "v4_2"


def _answering(vector: dict[str, Any], seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    """A server that records each request and answers the vector's response."""

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = vector["response"]
        return httpx.Response(answer["status"], content=answer["body"].encode(), headers={"Content-Type": answer["content_type"]})

    return server


async def test_submit_csrs_sends_one_call_and_maps_each_record_to_its_csr() -> None:
    """The mixed-batch golden vector (two CSRs, the second refused) through the client's batch operation."""
    vector = json.loads((VECTORS / "v4_2_3-05-createCertificates-batch.json").read_text())
    seen: list[httpx.Request] = []
    connection = client(_answering(vector, seen), v42_endpoint(EmcaVersion.V4_2_3))
    csrs = vector["call"]["kwargs"]["csrs"]
    assert connection.max_csrs_per_call == 50
    issued, refused = await connection.submit_csrs(csr_pems=csrs, profile_name="TLS Server", subscriber_id="SUB-0001",
                                                   application_ids=["iss-a", "iss-b"])
    (expected_issued, expected_refused) = vector["expected"]["result"]
    assert isinstance(issued, IssuedCertificate) and issued.serial == format(int(expected_issued["serial"], 16), "x")
    assert issued.certificate_pem == expected_issued["certificate_pem"]
    assert isinstance(refused, RequestPermanentError) and refused.code is ErrorCode.CA_REJECTED
    assert refused.message == f"emCA: {expected_refused['code']}: {expected_refused['message']}"
    (request,) = seen
    body = json.loads(request.content)
    assert (body["csrs"], body["applicationId"], body["applicationIds"]) == (csrs, None, ["iss-a", "iss-b"])  # one call
    with pytest.raises(ConnectorFaultError):  # an answer that does not have one record per CSR
        await connection.submit_csrs(csr_pems=[*csrs, csrs[0]], profile_name="TLS Server", subscriber_id="SUB-0001",
                                     application_ids=["iss-a", "iss-b", "iss-c"])
    await connection.aclose()


async def test_submit_csrs_sends_each_csrs_application_id_as_the_golden_vector() -> None:
    """Vector 19: a shared call carries one applicationId per CSR; the request body is the vector's, byte for byte."""
    vector = json.loads((VECTORS / "v4_2_3-19-createCertificates-applicationIds.json").read_text())
    seen: list[httpx.Request] = []
    connection = client(_answering(vector, seen), v42_endpoint(EmcaVersion.V4_2_3))
    kwargs = vector["call"]["kwargs"]
    outcomes = await connection.submit_csrs(csr_pems=kwargs["csrs"], profile_name=kwargs["profile_name"],
                                            subscriber_id=kwargs["subscriber_id"], application_ids=kwargs["application_ids"])
    (request,) = seen
    assert request.content.decode() == vector["request"]["body"]
    expected = vector["expected"]["result"]
    assert [o.serial for o in outcomes if isinstance(o, IssuedCertificate)] == [
        format(int(e["serial"], 16), "x") for e in expected
    ]
    await connection.aclose()
