"""The simulator's V4.0.17 dialect: refusals, the documented order of checks, source
addresses, applicationId dedupe, manual approval, revokeMode, and the routes.

Requests here are built independently of the connector's module: signatures by
cryptography's PKCS7SignatureBuilder (with its own signed attributes), so the
simulator is also held to a second CMS implementation.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette

from emca_sim.backend import Dialect, Pending, ProfileInfo, SimError, SimErrorKind
from emca_sim.dialects import v4_0_17 as server
from tests.unit.test_emca_v4_0_17_vectors import AES_KEY, KEYS, FakeBackend, cert_pem, issued_from, load_vector, vector_app

USER = KEYS["username"]
PASSWORD = KEYS["password"]
SIGNER_KEY = serialization.load_pem_private_key(KEYS["signer_key_pem"].encode(), None)
SIGNER_CERT = x509.load_pem_x509_certificate(KEYS["signer_certificate_pem"].encode())
CSR_PEM = KEYS["csr_pem"]
HOST = "127.0.0.1"
ISSUED_SPEC = load_vector("create_certificate")["responses"][0]["backend"]["issue"]["issued"]
ISSUED = issued_from(ISSUED_SPEC)
SERIAL = ISSUED.serial
CREATE_FIELDS = {"profileName": "TLS Server 1y", "subscriberId": "SUB-0001", "applicationId": "issuance-1"}

INVALID_PARAMETER = "Invalid parameter"
INVALID_INPUT = "Invalid input data"
INVALID_REQUEST = "Invalid request details found"
SIGNATURE_FAILED = "Signature verification failed"
INTERNAL = "Internal server error"
INVALID_PROFILE = "Invalid Certificate Profile name"


def _self_signed(key: ec.EllipticCurvePrivateKey, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(77)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )


OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_CERT = _self_signed(OTHER_KEY, USER)  # same subject, another key: an impostor's PFX


def sign(
    payload: bytes, cert: x509.Certificate = SIGNER_CERT, key: object = SIGNER_KEY, options: Sequence[pkcs7.PKCS7Options] = ()
) -> str:
    builder = pkcs7.PKCS7SignatureBuilder().set_data(payload).add_signer(cert, key, hashes.SHA256())  # type: ignore[arg-type]
    return base64.b64encode(builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary, *options])).decode()


def em_key(username: str, password: str) -> str:
    return hashlib.sha1((username + password).encode("utf-8")).hexdigest()


def encrypt(inner: dict | bytes, key: bytes = AES_KEY) -> str:
    plaintext = inner if isinstance(inner, bytes) else json.dumps(inner).encode("utf-8")
    nonce = b"\x07" * 12
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plaintext, None)).decode()


def request(
    payload: str = CSR_PEM,
    fields: dict | None = None,
    *,
    password: str = PASSWORD,
    inner_user: str = USER,
    outer_user: str = USER,
    header_key: str | None = None,
    aes_key: bytes = AES_KEY,
    signature: str | None = None,
    drop: Sequence[str] = (),
    inner_bytes: bytes | None = None,
) -> tuple[dict[str, str], bytes]:
    inner = {
        "userName": inner_user,
        "password": password,
        "signature": signature or sign(payload.encode()),
        **(CREATE_FIELDS if fields is None else fields),
    }
    for name in drop:
        inner.pop(name, None)
    outer = {"requestData": encrypt(inner_bytes if inner_bytes is not None else inner, aes_key), "userName": outer_user}
    headers = {"Content-Type": "application/json", "emKey": header_key if header_key is not None else em_key(USER, password)}
    return headers, json.dumps(outer).encode()


def issuing_backend(**app_changes: object) -> FakeBackend:
    backend = FakeBackend(apps={USER: vector_app(**app_changes)})
    backend.issue_result = ISSUED
    return backend


def call(
    backend: FakeBackend,
    method: str = "createCertificate",
    built: tuple[dict, bytes] | None = None,
    client_host: str | None = HOST,
) -> dict:
    headers, body = built or request()
    status, content = server.handle(backend, method, headers, body, client_host)
    assert status == 200
    return json.loads(content)


def failure(result: str) -> dict:
    return {"status": "failure", "result": result, "subscriberId": None, "requestId": None}


# ---------------------------------------------------------------- every documented error for its cause

Case = tuple[str, Callable[[], tuple[dict, bytes]], str]

REFUSALS: list[Case] = [
    ("inner JSON lacks applicationId", lambda: request(drop=["applicationId"]), INVALID_PARAMETER),
    ("inner JSON lacks the signature", lambda: request(drop=["signature"]), INVALID_PARAMETER),
    ("inner JSON lacks the password", lambda: request(drop=["password"]), INVALID_PARAMETER),
    ("a field is not a string", lambda: request(fields={**CREATE_FIELDS, "subscriberId": 5}), INVALID_PARAMETER),
    ("no emKey header", lambda: ({"Content-Type": "application/json"}, request()[1]), INVALID_PARAMETER),
    ("body lacks requestData", lambda: (request()[0], json.dumps({"userName": USER}).encode()), INVALID_PARAMETER),
    ("body lacks userName", lambda: (request()[0], json.dumps({"requestData": "AAAA"}).encode()), INVALID_PARAMETER),
    ("body is not JSON", lambda: (request()[0], b"<xml/>"), INVALID_PARAMETER),
    ("payload is empty", lambda: request(payload=""), INVALID_PARAMETER),
    ("encrypted with another AES key", lambda: request(aes_key=bytes(32)), INVALID_INPUT),
    (
        "requestData is not base64",
        lambda: (request()[0], json.dumps({"requestData": "%%%", "userName": USER}).encode()),
        INVALID_INPUT,
    ),
    (
        "requestData too short",
        lambda: (request()[0], json.dumps({"requestData": "AAAA", "userName": USER}).encode()),
        INVALID_INPUT,
    ),
    ("decrypted data is not JSON", lambda: request(inner_bytes=b"userName=x"), INVALID_INPUT),
    ("wrong password", lambda: request(password="wrong"), INVALID_REQUEST),
    ("emKey of another password", lambda: request(header_key=em_key(USER, "other")), INVALID_REQUEST),
    ("emKey in upper case", lambda: request(header_key=em_key(USER, PASSWORD).upper()), INVALID_REQUEST),
    ("unknown userName", lambda: request(outer_user="nobody"), INVALID_REQUEST),
    ("inner userName differs from the outer one", lambda: request(inner_user="someone-else"), INVALID_REQUEST),
    ("signed with another key", lambda: request(signature=sign(CSR_PEM.encode(), OTHER_CERT, OTHER_KEY)), SIGNATURE_FAILED),
    (
        "detached signature",
        lambda: request(signature=sign(CSR_PEM.encode(), options=[pkcs7.PKCS7Options.DetachedSignature])),
        SIGNATURE_FAILED,
    ),
    (
        "signer certificate not embedded",
        lambda: request(signature=sign(CSR_PEM.encode(), options=[pkcs7.PKCS7Options.NoCerts])),
        SIGNATURE_FAILED,
    ),
    ("signature is not CMS", lambda: request(signature=base64.b64encode(b"not cms").decode()), SIGNATURE_FAILED),
    ("signature is not base64", lambda: request(signature="***"), SIGNATURE_FAILED),
]


@pytest.mark.parametrize(("name", "build", "expected"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_each_documented_refusal_for_its_cause(name: str, build: Callable[[], tuple[dict, bytes]], expected: str) -> None:
    backend = issuing_backend()
    assert call(backend, built=build()) == failure(expected)
    assert not [c for c in backend.calls if c[0] == "issue"], "a refused request reached the CA core"


def test_a_valid_request_is_accepted_with_or_without_signed_attributes() -> None:
    for options in ([], [pkcs7.PKCS7Options.NoAttributes], [pkcs7.PKCS7Options.NoCapabilities]):
        answer = call(issuing_backend(), built=request(signature=sign(CSR_PEM.encode(), options=options)))
        assert answer["status"] == "success", options


def test_an_ecdsa_signer_is_accepted() -> None:
    backend = issuing_backend(signer_certificate_pem=OTHER_CERT.public_bytes(serialization.Encoding.PEM).decode())
    assert call(backend, built=request(signature=sign(CSR_PEM.encode(), OTHER_CERT, OTHER_KEY)))["status"] == "success"


def test_an_application_registered_for_another_dialect_is_refused_like_bad_credentials() -> None:
    for dialect in (Dialect.V4_2_3, Dialect.V4_2_4):
        assert call(issuing_backend(dialect=dialect)) == failure(INVALID_REQUEST)


def test_an_application_without_aes_key_or_signer_is_refused_like_bad_credentials() -> None:
    assert call(issuing_backend(aes_key=None)) == failure(INVALID_REQUEST)
    assert call(issuing_backend(signer_certificate_pem=None)) == failure(INVALID_REQUEST)


SIM_ERRORS = [
    (SimErrorKind.UNKNOWN_PROFILE, INVALID_PROFILE),
    (SimErrorKind.INTERNAL, INTERNAL),
    (SimErrorKind.UNKNOWN_SUBSCRIBER, "Invalid Subscriber ID"),
    (SimErrorKind.CSR_REJECTED, "Invalid CSR: RSA-1024 not allowed"),
    (SimErrorKind.MISSING_PARAMETER, INVALID_PARAMETER),
    (SimErrorKind.BAD_CREDENTIALS, INVALID_REQUEST),
]


@pytest.mark.parametrize(("kind", "message"), SIM_ERRORS, ids=[k for k, _ in SIM_ERRORS])
def test_ca_core_errors_become_their_error_strings(kind: SimErrorKind, message: str) -> None:
    backend = issuing_backend()
    backend.issue_result = SimError(kind, "RSA-1024 not allowed")
    assert call(backend) == failure(message)


def test_an_unexpected_exception_in_the_ca_core_is_an_internal_server_error() -> None:
    backend = issuing_backend()
    backend.issue_result = RuntimeError("disk full")
    assert call(backend) == failure(INTERNAL)


# ---------------------------------------------------------------- the documented order of checks

ORDER: list[tuple[str, Callable[[], tuple[dict, bytes]], dict, str]] = [
    (
        "undecryptable and a wrong emKey: decryption first",
        lambda: request(aes_key=bytes(32), header_key="0" * 40),
        {},
        INVALID_INPUT,
    ),
    (
        "wrong password and a bad signature: credentials before signature",
        lambda: request(password="wrong", signature=sign(CSR_PEM.encode(), OTHER_CERT, OTHER_KEY)),
        {},
        INVALID_REQUEST,
    ),
    (
        "unregistered source and a bad signature: source before signature",
        lambda: request(signature=sign(CSR_PEM.encode(), OTHER_CERT, OTHER_KEY)),
        {"source_addresses": ("10.9.9.9",)},
        INVALID_REQUEST,
    ),
    (
        "missing field and a wrong password: the parameters first",
        lambda: request(password="wrong", drop=["profileName"]),
        {},
        INVALID_PARAMETER,
    ),
    (
        "bad signature and an unknown profile: signature before the method",
        lambda: request(fields={**CREATE_FIELDS, "profileName": "nope"}, signature=sign(CSR_PEM.encode(), OTHER_CERT, OTHER_KEY)),
        {},
        SIGNATURE_FAILED,
    ),
]


@pytest.mark.parametrize(("name", "build", "app_changes", "expected"), ORDER, ids=[o[0] for o in ORDER])
def test_checks_run_in_the_documented_order(name: str, build: Callable, app_changes: dict, expected: str) -> None:
    backend = issuing_backend(**app_changes)
    backend.issue_result = SimError(SimErrorKind.UNKNOWN_PROFILE, "nope")
    assert call(backend, built=build()) == failure(expected)


# ---------------------------------------------------------------- source addresses

SOURCES = [
    ("listed IPv4", ("127.0.0.1",), "127.0.0.1", True),
    ("listed IPv6", ("::1",), "::1", True),
    ("inside a listed network", ("10.20.0.0/16",), "10.20.3.4", True),
    ("IPv4-mapped IPv6 of a listed address", ("192.0.2.10",), "::ffff:192.0.2.10", True),
    ("unlisted", ("127.0.0.1",), "192.0.2.99", False),
    ("outside the listed network", ("10.20.0.0/16",), "10.21.0.1", False),
    ("no address known", ("127.0.0.1",), None, False),
    ("nothing registered", (), "127.0.0.1", False),
]


@pytest.mark.parametrize(("name", "allowed", "host", "accepted"), SOURCES, ids=[s[0] for s in SOURCES])
def test_source_address(name: str, allowed: tuple[str, ...], host: str | None, accepted: bool) -> None:
    answer = call(issuing_backend(source_addresses=allowed), client_host=host)
    assert (answer["status"] == "success") is accepted
    if not accepted:
        assert answer == failure(INVALID_REQUEST)


async def http_post(backend: FakeBackend, path: str, built: tuple[dict, bytes], client_host: str = HOST) -> httpx.Response:
    transport = httpx.ASGITransport(app=Starlette(routes=server.routes(backend)), client=(client_host, 40_000))
    async with httpx.AsyncClient(transport=transport, base_url="https://emca.test") as http:
        return await http.post(path, content=built[1], headers=built[0])


async def test_the_source_address_is_the_http_clients() -> None:
    accepted = await http_post(
        issuing_backend(source_addresses=("198.51.100.7",)),
        "/emCAServices/rest/createCertificate",
        request(),
        client_host="198.51.100.7",
    )
    refused = await http_post(
        issuing_backend(source_addresses=("198.51.100.7",)),
        "/emCAServices/rest/createCertificate",
        request(),
        client_host="198.51.100.8",
    )
    assert accepted.json()["status"] == "success"
    assert refused.json() == failure(INVALID_REQUEST)


# ---------------------------------------------------------------- methods


def test_create_certificate_asks_the_ca_core_with_application_id_dedupe_on() -> None:
    backend = issuing_backend()
    answer = call(backend)
    assert backend.calls == [
        (
            "issue",
            {
                "profile": "TLS Server 1y",
                "subscriber_id": "SUB-0001",
                "csr_pem": CSR_PEM,
                "application_id": "issuance-1",
                "dedupe_by_application_id": True,
            },
        )
    ]
    assert answer["status"] == "success"
    assert base64.b64decode(answer["result"]) == x509.load_pem_x509_certificate(ISSUED.certificate_pem.encode()).public_bytes(
        serialization.Encoding.DER
    )


def test_a_repeated_application_id_returns_the_existing_certificate() -> None:
    """The dedupe itself is the CA core's; the dialect passes the flag and answers what it returns, the same both times."""
    backend = issuing_backend()
    first, second = call(backend), call(backend)
    assert first == second
    assert [c[1]["application_id"] for c in backend.calls] == ["issuance-1", "issuance-1"]


def test_create_certificate_p7b_carries_the_chain() -> None:
    answer = call(issuing_backend(), "createCertificateP7B")
    certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(answer["result"]))
    assert {c.subject.rfc4514_string() for c in certs} == {
        x509.load_pem_x509_certificate(p.encode()).subject.rfc4514_string() for p in (ISSUED.certificate_pem, *ISSUED.chain_pem)
    }


def test_manual_approval_flow_pending_then_issued() -> None:
    backend = issuing_backend()
    held = Pending(
        request_id="REQ-9", profile="TLS Server Manual", subscriber_id="SUB-0001", application_id="issuance-1", state="pending"
    )
    backend.issue_result = held
    submitted = call(backend)
    assert submitted == {
        "status": "success",
        "result": "Request processed successfully",
        "subscriberId": "SUB-0001",
        "requestId": "REQ-9",
    }

    backend.pending_result = held
    poll = request("REQ-9", {})
    assert call(backend, "getCertificateByRequestID", poll) == {
        "status": "pending",
        "result": "Request is pending for approval",
        "subscriberId": "SUB-0001",
        "requestId": "REQ-9",
    }

    backend.pending_result = replace(held, state="approved", issued=ISSUED)
    approved = call(backend, "getCertificateByRequestID", request("REQ-9", {}))
    assert approved["status"] == "success" and approved["requestId"] == "REQ-9"
    assert base64.b64decode(approved["result"])[:1] == b"\x30"
    assert ("pending", {"request_id": "REQ-9"}) in backend.calls

    backend.pending_result = replace(held, state="rejected", rejection="not today")
    assert call(backend, "getCertificateByRequestID", request("REQ-9", {}))["result"] == "Request rejected: not today"


def test_get_certificate_looks_up_the_canonical_serial() -> None:
    backend = issuing_backend()
    backend.certificate_result = ISSUED
    padded = "00" + SERIAL.upper()
    assert call(backend, "getCertificate", request(padded, {}))["status"] == "success"
    assert backend.calls == [("certificate", {"serial": SERIAL})]


REVOKE_MODES = [
    (0, "unspecified"),
    (1, "keyCompromise"),
    (2, "cACompromise"),
    (3, "affiliationChanged"),
    (4, "superseded"),
    (5, "cessationOfOperation"),
    (6, "certificateHold"),
    (9, "privilegeWithdrawn"),
    (10, "aACompromise"),
    ("4", "superseded"),
]


@pytest.mark.parametrize(("mode", "reason"), REVOKE_MODES, ids=[f"{m!r}-{r}" for m, r in REVOKE_MODES])
def test_revoke_mode_maps_to_the_rfc5280_reason(mode: object, reason: str) -> None:
    backend = issuing_backend()
    backend.revoke_result = ISSUED
    answer = call(backend, "revoke", request(SERIAL, {"remarks": "test", "revokeMode": mode}))
    assert answer == {
        "status": "success",
        "result": "Certificate revoked successfully",
        "subscriberId": "SUB-0001",
        "requestId": None,
    }
    assert backend.calls == [("revoke", {"serial": SERIAL, "reason": reason})]


@pytest.mark.parametrize("mode", [7, 8, 11, -1, "x", "", True, 1.5, None])
def test_an_invalid_or_missing_revoke_mode_is_an_invalid_parameter(mode: object) -> None:
    backend = issuing_backend()
    backend.revoke_result = ISSUED
    assert call(backend, "revoke", request(SERIAL, {"remarks": "test", "revokeMode": mode})) == failure(INVALID_PARAMETER)
    assert not backend.calls


def test_revoke_without_remarks_is_an_invalid_parameter() -> None:
    assert call(issuing_backend(), "revoke", request(SERIAL, {"revokeMode": 1})) == failure(INVALID_PARAMETER)


def test_revoking_twice_and_unknown_serials() -> None:
    backend = issuing_backend()
    backend.revoke_result = SimError(SimErrorKind.ALREADY_REVOKED, SERIAL)
    assert call(backend, "revoke", request(SERIAL, {"remarks": "x", "revokeMode": 1})) == failure("Certificate already revoked")
    backend.certificate_result = SimError(SimErrorKind.NOT_FOUND, "abc")
    assert call(backend, "getCertificate", request("abc", {})) == failure("No record found")
    assert call(backend, "getCertificate", request("not-hex", {})) == failure("No record found")


PROFILES = [
    ProfileInfo(name="A", profile_id="1", issuing_ca="CA One", validity_days=30, key_types=("EC-P256",)),
    ProfileInfo(name="B", profile_id="2", issuing_ca="CA Two", validity_days=30, key_types=("EC-P256",), manual_approval=True),
    ProfileInfo(name="C", profile_id="3", issuing_ca="CA One", validity_days=90, key_types=("RSA-2048",)),
]


def test_profile_list_is_per_issuing_ca_name_exactly() -> None:
    backend = issuing_backend()
    backend.profile_infos = PROFILES
    answer = call(backend, "getCertificateProfileList", request("CA One", {}))
    assert answer["result"] == [{"profileName": "A", "profileId": "1"}, {"profileName": "C", "profileId": "3"}]
    assert call(backend, "getCertificateProfileList", request("ca one", {}))["result"] == []


def test_profile_info_names_the_issuing_ca_and_its_chain() -> None:
    backend = issuing_backend()
    backend.profile_infos = PROFILES
    backend.chains = {"CA Two": (cert_pem("issuing_ca"), cert_pem("root_ca"))}
    answer = call(backend, "getProfileInfoByProfileName", request("B", {}))
    assert answer["result"]["issuingCA"] == "CA Two"
    assert answer["result"]["manualAuthorization"] is True
    assert len(answer["result"]["issuingCAChain"]) == 2
    assert call(backend, "getProfileInfoByProfileName", request("Z", {})) == failure(INVALID_PROFILE)


@pytest.mark.parametrize("path", ["getProfileinfoByProfilename", "getProfileInfoByProfileName"])
async def test_profile_info_is_served_under_both_spellings(path: str) -> None:
    backend = issuing_backend()
    backend.profile_infos = PROFILES
    backend.chains = {"CA One": (cert_pem("issuing_ca"),)}
    response = await http_post(backend, f"/emCAServices/rest/{path}", request("A", {}))
    assert response.status_code == 200 and response.json()["result"]["profileName"] == "A"
    assert backend.requests == {"getProfileInfoByProfileName": 1}


async def test_every_call_is_counted_per_method_even_refused_ones() -> None:
    backend = issuing_backend()
    await http_post(backend, "/emCAServices/rest/createCertificate", request())
    await http_post(backend, "/emCAServices/rest/createCertificate", request(password="wrong"))
    await http_post(backend, "/emCAServices/rest/getCertificateProfileList", request("CA One", {}))
    assert backend.requests == {"createCertificate": 2, "getCertificateProfileList": 1}


async def test_only_post_and_only_known_methods() -> None:
    app = Starlette(routes=server.routes(issuing_backend()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(HOST, 1)), base_url="https://emca.test") as http:
        assert (await http.get("/emCAServices/rest/createCertificate")).status_code == 405
        assert (await http.post("/emCAServices/rest/createPKCS12", content=b"{}")).status_code == 404
