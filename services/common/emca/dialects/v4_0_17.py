"""emCA V4.0.17 "Open API": the connector side of the wire format (sans-IO).

This module builds each request (path, headers, body bytes) and parses each
response; it does no I/O (the httpx client around it sends the bytes). It is
held to the golden vectors in ``tests/vectors/emca/v4_0_17/`` and shares no
code with the simulator's side (``emca_sim/dialects/v4_0_17.py``): the vectors
are what holds the two together.

WIRE-FORMAT CHOICES
===================
Public documentation (release v4.0.17, "Open API Specifications") fixes the
transport, the method names, the field names, the order of the server's checks
and the error strings. Everything below the line "chosen" is NOT published and
is our choice; correcting it against a real emCA means editing this block (and
the matching block in ``emca_sim/dialects/v4_0_17.py``), then regenerating the
vectors with ``tests/vectors/emca/make_v4_0_17.py``. Rationale: docs/emca-api.md.

Documented:
  - ``POST {base}/emCAServices/rest/<method>``, ``Content-Type: application/json``,
    header ``emKey`` (40 hex characters in the samples).
  - Body ``{"requestData": <encrypted inner JSON>, "userName": ...}``; the inner
    JSON holds ``userName``, ``password``, ``signature`` and the method's fields.
  - ``signature`` is PKCS#7 SignedData made with the registered PFX over the
    payload. The documented samples are *attached* (the payload is the
    encapsulated content: "eMudhra demo", "CN=...") with SHA-256, BER
    indefinite-length, signer certificate included; the payload travels only
    inside the signature (there is no separate CSR / serial / profile field).
  - Responses ``{"status","result","subscriberId","requestId"}``; manual
    authorisation answers success with a message and a ``requestId``.
  - getCertificateProfileList signs the issuing CA *name* ("Signed Data will be
    CAName"); getProfileInfoByProfileName signs the profile name and its URL is
    spelt ``getProfileinfoByProfilename``.
Chosen:
  - EMKEY: lower-case hex SHA-1 of the UTF-8 bytes of ``userName + password``
    (plain concatenation, as eMudhra's one published derivation,
    ``AuthKey = SHA256(ClientID + ts + txn)``, does).
  - AES: AES-256-GCM, a random 12-byte nonce, no associated data;
    ``requestData`` = standard base64 (with padding) of nonce || ciphertext || tag
    (16 bytes), i.e. Java's ``AES/GCM/NoPadding`` output behind its nonce. GCM
    rather than CBC: the server reports decryption failures with their own
    error string *before* it checks credentials or source address, which with
    CBC/PKCS#7 padding would be a padding oracle open to anyone; GCM rejects
    every altered byte as "Invalid input data". The AES key is handed over as
    base64 (44 characters; hex and raw 32 bytes are accepted too).
  - INNER JSON: compact (``,`` and ``:`` separators), UTF-8, non-ASCII not
    escaped; keys userName, password, signature, then the method's fields.
  - SIGNATURE: base64 of DER CMS SignedData, attached, SHA-256; one SignerInfo
    (v1, issuerAndSerialNumber) with signed attributes contentType,
    signingTime (UTCTime from the injected clock) and messageDigest; RSA keys
    sign with PKCS#1 v1.5 (``rsaEncryption``), EC keys with ECDSA-SHA256; the
    signer certificate is embedded (no chain).
  - PAYLOADS: createCertificate(P7B) the CSR as PEM (re-encoded canonically);
    getCertificate / revoke the serial as lower-case hex without separators or
    leading zeros; getCertificateByRequestID the request id; the list and info
    methods the CA / profile name; all UTF-8.
  - revokeMode: an integer; RFC 5280 reasons map as documented, 6 = certificateHold.
  - RESULTS: certificate = base64 DER (PEM tolerated); createCertificateP7B =
    base64 DER PKCS#7 certs-only with the leaf and its chain; profile list = a
    JSON array of ``{"profileName","profileId"}``; profile info = a JSON object
    ``{"profileName","profileId","issuingCA","validityDays","keyTypes",
    "manualAuthorization","issuingCAChain": [base64 DER, issuing CA first]}``
    (a JSON string holding the same is accepted); getCertificateByRequestID
    while waiting: ``status`` "pending".
  - Undocumented error strings (simulator wording): "Invalid Subscriber ID",
    "Invalid CA name", "Invalid CSR: <why>", "No record found",
    "Certificate already revoked", "Request rejected: <why>". An unknown failure
    message is request-permanent (CA_REJECTED).
  - HTTP: envelopes come with 200; 429 and 5xx are transient (Retry-After
    honoured), other statuses without an envelope are connector faults.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from services.common.contracts.errors import ErrorCode

# ---------------------------------------------------------------- the choices, in one place
DIALECT = "V4.0.17"
REST_PREFIX = "/emCAServices/rest/"
EMKEY_HEADER = "emKey"
NONCE_BYTES = 12  # AES-256-GCM nonce, prepended to ciphertext || tag
AES_KEY_BYTES = 32
JSON_SEPARATORS = (",", ":")

METHOD_CREATE_CERTIFICATE = "createCertificate"
METHOD_CREATE_CERTIFICATE_P7B = "createCertificateP7B"
METHOD_GET_CERTIFICATE_BY_REQUEST_ID = "getCertificateByRequestID"
METHOD_GET_CERTIFICATE = "getCertificate"
METHOD_REVOKE = "revoke"
METHOD_GET_CERTIFICATE_PROFILE_LIST = "getCertificateProfileList"
METHOD_GET_PROFILE_INFO = "getProfileinfoByProfilename"  # the documented URL's spelling

#: revokeMode per RFC 5280 reason name (cryptography's ReasonFlags values).
REVOKE_MODE_BY_REASON: Mapping[str, int] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,  # emCA: suspend
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}
REASON_BY_REVOKE_MODE: Mapping[int, str] = {mode: reason for reason, mode in REVOKE_MODE_BY_REASON.items()}


def em_key(username: str, password: str) -> str:
    """The ``emKey`` header (chosen derivation, see the module docstring)."""
    return hashlib.sha1((username + password).encode("utf-8")).hexdigest()


def encrypt_request_data(aes_key: bytes, plaintext: bytes, nonce: bytes) -> str:
    if len(aes_key) != AES_KEY_BYTES:
        raise ValueError("the V4.0.17 AES key must be 32 bytes (AES-256)")
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"the AES-GCM nonce must be {NONCE_BYTES} bytes")
    return base64.b64encode(nonce + AESGCM(aes_key).encrypt(nonce, plaintext, None)).decode("ascii")


# ---------------------------------------------------------------- secrets


class PfxError(ValueError):
    """The uploaded PFX cannot be opened (wrong password, not PKCS#12, no key or certificate)."""


@dataclass(frozen=True)
class Signer:
    """The key and certificate of the PFX emCA issued to the registered application."""

    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(repr=False)
    certificate: x509.Certificate
    additional_certificates: tuple[x509.Certificate, ...] = ()


def load_pfx(data: bytes, password: str | bytes | None) -> Signer:
    """Open the PFX (PKCS#12) emCA handed over at registration."""
    pw = password.encode("utf-8") if isinstance(password, str) else password
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, pw or None)
    except (ValueError, TypeError) as exc:
        raise PfxError(f"cannot open the PFX: {exc}") from None
    if key is None or cert is None:
        raise PfxError("the PFX holds no private key and certificate")
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise PfxError("the PFX key must be RSA or EC")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise PfxError("the PFX key does not match its certificate")
    return Signer(private_key=key, certificate=cert, additional_certificates=tuple(extra))


def parse_aes_key(value: str | bytes) -> bytes:
    """The AES-256 key as handed over: base64 text (44 characters), hex text (64) or 32 raw bytes."""
    if isinstance(value, bytes) and len(value) == AES_KEY_BYTES:
        return value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    text = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        key = b""
    if len(key) != AES_KEY_BYTES:
        raise ValueError("the V4.0.17 AES key must be 32 bytes, given as base64 or hex")
    return key


@dataclass(frozen=True)
class Credentials:
    """What the connector holds for one registered application (secrets never repr'd)."""

    username: str
    password: str = field(repr=False)
    aes_key: bytes = field(repr=False)
    signer: Signer = field(repr=False)


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class EmcaRequest:
    """One HTTP request, ready to send: ``POST base_url + path`` with these headers and body."""

    method: str  # the emCA method, e.g. "createCertificate"
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)

    def url(self, base_url: str) -> str:
        return base_url.rstrip("/") + self.path

    def headers_dict(self) -> dict[str, str]:
        return dict(self.headers)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def canonical_serial(serial: int | str) -> str:
    """Lower-case hex without separators or leading zeros ("0A:1B" -> "a1b")."""
    if isinstance(serial, int):
        value = serial
    else:
        text = re.sub(r"[\s:]", "", serial).lower().removeprefix("0x")
        if not text or not re.fullmatch(r"[0-9a-f]+", text):
            raise ValueError(f"not a hexadecimal serial number: {serial!r}")
        value = int(text, 16)
    if value < 0:
        raise ValueError("a serial number is not negative")
    return format(value, "x")


class V4017Requests:
    """Builds V4.0.17 requests from inputs and the connector's secrets.

    ``random_bytes`` (AES-GCM nonces) and ``clock`` (the signingTime attribute)
    are injectable so that outputs are deterministic under test.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if len(credentials.aes_key) != AES_KEY_BYTES:
            raise ValueError("the V4.0.17 AES key must be 32 bytes (AES-256)")
        self._credentials = credentials
        self._random_bytes = random_bytes
        self._clock = clock

    def create_certificate(
        self, *, profile_name: str, subscriber_id: str, application_id: str, csr_pem: str | bytes, p7b: bool = False
    ) -> EmcaRequest:
        """createCertificate (or createCertificateP7B: the answer carries the chain)."""
        raw = csr_pem.encode("ascii") if isinstance(csr_pem, str) else csr_pem
        try:
            csr = x509.load_pem_x509_csr(raw)
        except ValueError as exc:
            raise ValueError(f"not a PEM certificate signing request: {exc}") from None
        payload = csr.public_bytes(serialization.Encoding.PEM)
        method = METHOD_CREATE_CERTIFICATE_P7B if p7b else METHOD_CREATE_CERTIFICATE
        fields = {"profileName": profile_name, "subscriberId": subscriber_id, "applicationId": application_id}
        return self._build(method, payload, fields)

    def get_certificate_by_request_id(self, request_id: str) -> EmcaRequest:
        return self._build(METHOD_GET_CERTIFICATE_BY_REQUEST_ID, request_id.encode("utf-8"), {})

    def get_certificate(self, serial: int | str) -> EmcaRequest:
        return self._build(METHOD_GET_CERTIFICATE, canonical_serial(serial).encode("ascii"), {})

    def revoke(self, serial: int | str, reason: str | x509.ReasonFlags, remarks: str | None = None) -> EmcaRequest:
        """revoke with an RFC 5280 reason (``certificateHold`` suspends: revokeMode 6)."""
        name = reason.value if isinstance(reason, x509.ReasonFlags) else reason
        if name not in REVOKE_MODE_BY_REASON:
            raise ValueError(f"emCA V4.0.17 has no revokeMode for the reason {name!r}")
        fields = {"remarks": remarks if remarks else name, "revokeMode": REVOKE_MODE_BY_REASON[name]}
        return self._build(METHOD_REVOKE, canonical_serial(serial).encode("ascii"), fields)

    def get_certificate_profile_list(self, ca_name: str) -> EmcaRequest:
        """The profiles of one issuing CA (the documented signed data is the CA name)."""
        return self._build(METHOD_GET_CERTIFICATE_PROFILE_LIST, ca_name.encode("utf-8"), {})

    def get_profile_info(self, profile_name: str) -> EmcaRequest:
        """getProfileInfoByProfileName: the profile's issuing CA (and its chain)."""
        return self._build(METHOD_GET_PROFILE_INFO, profile_name.encode("utf-8"), {})

    def _build(self, method: str, payload: bytes, fields: Mapping[str, str | int]) -> EmcaRequest:
        creds = self._credentials
        signing_time = self._clock().astimezone(UTC).replace(microsecond=0)
        inner = {
            "userName": creds.username,
            "password": creds.password,
            "signature": sign_payload(payload, creds.signer, signing_time),
            **fields,
        }
        plaintext = json.dumps(inner, separators=JSON_SEPARATORS, ensure_ascii=False).encode("utf-8")
        outer = {
            "requestData": encrypt_request_data(creds.aes_key, plaintext, self._random_bytes(NONCE_BYTES)),
            "userName": creds.username,
        }
        body = json.dumps(outer, separators=JSON_SEPARATORS, ensure_ascii=False).encode("utf-8")
        headers = (("Content-Type", "application/json"), (EMKEY_HEADER, em_key(creds.username, creds.password)))
        return EmcaRequest(method=method, path=REST_PREFIX + method, headers=headers, body=body)


def sign_payload(payload: bytes, signer: Signer, signing_time: datetime) -> str:
    """Base64 DER CMS SignedData (attached, SHA-256, signed attributes) over ``payload``."""
    cert = asn1_x509.Certificate.load(signer.certificate.public_bytes(serialization.Encoding.DER))
    time_choice = "utc_time" if signing_time.year < 2050 else "general_time"
    # DER order of the SET OF (by encoding): contentType, signingTime, messageDigest
    attrs = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
            cms.CMSAttribute({"type": "signing_time", "values": [cms.Time({time_choice: signing_time})]}),
            cms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha256(payload).digest()]}),
        ]
    )
    key = signer.private_key
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(attrs.dump(), padding.PKCS1v15(), hashes.SHA256())
        signature_algorithm = algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15", "parameters": core.Null()})
    else:
        signature = key.sign(attrs.dump(), ec.ECDSA(hashes.SHA256()))
        signature_algorithm = algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"})
    digest_algorithm = algos.DigestAlgorithm({"algorithm": "sha256", "parameters": core.Null()})
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {"issuer_and_serial_number": {"issuer": cert.issuer, "serial_number": cert.serial_number}}
            ),
            "digest_algorithm": digest_algorithm,
            "signed_attrs": attrs,
            "signature_algorithm": signature_algorithm,
            "signature": signature,
        }
    )
    signed_data = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [digest_algorithm],
            "encap_content_info": {"content_type": "data", "content": payload},
            "certificates": [cert],
            "signer_infos": [signer_info],
        }
    )
    der = cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()
    return base64.b64encode(der).decode("ascii")


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class IssuedCertificate:
    certificate_pem: str
    chain_pem: tuple[str, ...]  # issuing CA first; empty when the response carries no chain
    serial: str  # canonical_serial() of the certificate
    subscriber_id: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class PendingApproval:
    request_id: str
    message: str
    subscriber_id: str | None = None


@dataclass(frozen=True)
class ProfileSummary:
    name: str
    profile_id: str | None


@dataclass(frozen=True)
class ProfileDetails:
    name: str
    profile_id: str | None
    issuing_ca: str
    validity_days: int | None
    key_types: tuple[str, ...]
    manual_approval: bool
    issuing_ca_chain_pem: tuple[str, ...]  # issuing CA first; empty when not given


@dataclass(frozen=True)
class Revocation:
    serial: str
    reason: str
    already_revoked: bool = False
    message: str = ""


# ---------------------------------------------------------------- failures


class FailureCategory(StrEnum):
    """The three kinds of failure of DESIGN.md."""

    REQUEST_PERMANENT = "request_permanent"  # this request is refused: fail it, never retry
    CONNECTOR_FAULT = "connector_fault"  # the connector is misconfigured: keep requests queued, alert
    TRANSIENT = "transient"  # back off and retry


class FailureReason(StrEnum):
    INVALID_PARAMETER = "invalid_parameter"
    DECRYPTION_FAILED = "decryption_failed"
    AUTHENTICATION_FAILED = "authentication_failed"
    SIGNATURE_FAILED = "signature_failed"
    UNKNOWN_SUBSCRIBER = "unknown_subscriber"
    UNKNOWN_CA = "unknown_ca"
    UNKNOWN_PROFILE = "unknown_profile"
    CSR_REJECTED = "csr_rejected"
    NOT_FOUND = "not_found"
    ALREADY_REVOKED = "already_revoked"
    APPROVAL_REJECTED = "approval_rejected"
    CA_REJECTED = "ca_rejected"  # any other failure message
    INTERNAL_ERROR = "internal_error"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    HTTP_ERROR = "http_error"
    MALFORMED_RESPONSE = "malformed_response"


_CATEGORY_AND_CODE: Mapping[FailureReason, tuple[FailureCategory, ErrorCode | None]] = {
    # None: no stable certrail code fits yet (a wire-protocol disagreement with emCA)
    FailureReason.INVALID_PARAMETER: (FailureCategory.CONNECTOR_FAULT, None),
    FailureReason.DECRYPTION_FAILED: (FailureCategory.CONNECTOR_FAULT, ErrorCode.CA_DECRYPTION_FAILED),
    FailureReason.AUTHENTICATION_FAILED: (FailureCategory.CONNECTOR_FAULT, ErrorCode.CA_AUTH_FAILED),
    FailureReason.SIGNATURE_FAILED: (FailureCategory.CONNECTOR_FAULT, ErrorCode.CA_SIGNATURE_FAILED),
    FailureReason.UNKNOWN_SUBSCRIBER: (FailureCategory.CONNECTOR_FAULT, ErrorCode.SUBSCRIBER_INVALID),
    FailureReason.UNKNOWN_CA: (FailureCategory.CONNECTOR_FAULT, ErrorCode.ISSUING_CA_NOT_FOUND),
    FailureReason.UNKNOWN_PROFILE: (FailureCategory.REQUEST_PERMANENT, ErrorCode.CA_PROFILE_NOT_FOUND),
    FailureReason.CSR_REJECTED: (FailureCategory.REQUEST_PERMANENT, ErrorCode.CA_REJECTED),
    FailureReason.NOT_FOUND: (FailureCategory.REQUEST_PERMANENT, ErrorCode.CERTIFICATE_NOT_FOUND),
    FailureReason.ALREADY_REVOKED: (FailureCategory.REQUEST_PERMANENT, ErrorCode.REVOCATION_REJECTED),
    FailureReason.APPROVAL_REJECTED: (FailureCategory.REQUEST_PERMANENT, ErrorCode.APPROVAL_REJECTED),
    FailureReason.CA_REJECTED: (FailureCategory.REQUEST_PERMANENT, ErrorCode.CA_REJECTED),
    FailureReason.INTERNAL_ERROR: (FailureCategory.TRANSIENT, ErrorCode.CA_UNREACHABLE),
    FailureReason.RATE_LIMITED: (FailureCategory.TRANSIENT, ErrorCode.CA_UNREACHABLE),
    FailureReason.SERVER_ERROR: (FailureCategory.TRANSIENT, ErrorCode.CA_UNREACHABLE),
    FailureReason.HTTP_ERROR: (FailureCategory.CONNECTOR_FAULT, None),
    FailureReason.MALFORMED_RESPONSE: (FailureCategory.CONNECTOR_FAULT, None),
}

#: failure messages, matched case-insensitively after collapsing whitespace: (exact, prefix) -> reason
_EXACT_MESSAGES: Mapping[str, FailureReason] = {
    "invalid parameter": FailureReason.INVALID_PARAMETER,
    "invalid input data": FailureReason.DECRYPTION_FAILED,
    "invalid request details found": FailureReason.AUTHENTICATION_FAILED,
    "signature verification failed": FailureReason.SIGNATURE_FAILED,
    "internal server error": FailureReason.INTERNAL_ERROR,
    "invalid certificate profile name": FailureReason.UNKNOWN_PROFILE,
    "no record found": FailureReason.NOT_FOUND,
    "certificate already revoked": FailureReason.ALREADY_REVOKED,
}
_PREFIX_MESSAGES: tuple[tuple[str, FailureReason], ...] = (
    ("invalid subscriber id", FailureReason.UNKNOWN_SUBSCRIBER),
    ("invalid ca name", FailureReason.UNKNOWN_CA),
    ("invalid csr", FailureReason.CSR_REJECTED),
    ("request rejected", FailureReason.APPROVAL_REJECTED),
)


class EmcaFailure(Exception):
    """emCA (or the way to it) answered with a failure, classified."""

    def __init__(
        self, reason: FailureReason, message: str, *, http_status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.category, self.error_code = _CATEGORY_AND_CODE[reason]
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after


def classify_message(message: str) -> FailureReason:
    """The reason for an emCA failure message (unknown messages: CA_REJECTED)."""
    text = " ".join(message.split()).lower()
    if text in _EXACT_MESSAGES:
        return _EXACT_MESSAGES[text]
    for prefix, reason in _PREFIX_MESSAGES:
        if text.startswith(prefix):
            return reason
    return FailureReason.CA_REJECTED


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A Retry-After header (delta-seconds or HTTP-date) as seconds from ``now``."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class Envelope:
    """A successful (or pending) V4.0.17 response envelope."""

    status: str  # "success" or "pending"
    result: object
    subscriber_id: str | None
    request_id: str | None


def parse_envelope(status_code: int, headers: Mapping[str, str], body: bytes, *, now: datetime | None = None) -> Envelope:
    """Check the HTTP status and the envelope; raise EmcaFailure for every failure."""
    lowered = {k.lower(): v for k, v in headers.items()}
    ok = 200 <= status_code < 300
    if status_code == 429 or status_code >= 500:
        reason = FailureReason.RATE_LIMITED if status_code == 429 else FailureReason.SERVER_ERROR
        envelope = _json_object(body) if status_code >= 500 else None
        if envelope is not None and classify_message(str(envelope.get("result", ""))) is FailureReason.INTERNAL_ERROR:
            reason = FailureReason.INTERNAL_ERROR
        retry = retry_after_seconds(lowered.get("retry-after"), now or _utc_now())
        raise EmcaFailure(reason, f"HTTP {status_code}", http_status=status_code, retry_after=retry)
    envelope = _json_object(body)
    if envelope is None or not isinstance(envelope.get("status"), str):
        reason = FailureReason.MALFORMED_RESPONSE if ok else FailureReason.HTTP_ERROR
        raise EmcaFailure(reason, f"HTTP {status_code} without a V4.0.17 response envelope", http_status=status_code)
    status = envelope["status"].strip().lower()
    result = envelope.get("result")
    if status == "failure":
        message = result if isinstance(result, str) else json.dumps(result)
        raise EmcaFailure(classify_message(message), message, http_status=status_code)
    if status not in ("success", "pending") or not ok:
        raise EmcaFailure(FailureReason.MALFORMED_RESPONSE, f"status {status!r}, HTTP {status_code}", http_status=status_code)
    return Envelope(
        status=status,
        result=result,
        subscriber_id=_optional_str(envelope.get("subscriberId")),
        request_id=_optional_str(envelope.get("requestId")),
    )


def parse_issue_response(
    status_code: int, headers: Mapping[str, str], body: bytes, *, now: datetime | None = None
) -> IssuedCertificate | PendingApproval:
    """createCertificate(P7B), getCertificateByRequestID and getCertificate answers."""
    envelope = parse_envelope(status_code, headers, body, now=now)
    issued = _certificates(envelope.result)
    if issued is not None:
        leaf, chain = issued
        return IssuedCertificate(
            certificate_pem=_pem(leaf),
            chain_pem=tuple(_pem(c) for c in chain),
            serial=canonical_serial(leaf.serial_number),
            subscriber_id=envelope.subscriber_id,
            request_id=envelope.request_id,
        )
    if envelope.request_id is not None:
        message = envelope.result if isinstance(envelope.result, str) else ""
        return PendingApproval(request_id=envelope.request_id, message=message, subscriber_id=envelope.subscriber_id)
    raise EmcaFailure(FailureReason.MALFORMED_RESPONSE, "success without a certificate or a request id", http_status=status_code)


parse_certificate_response = parse_issue_response


def parse_revoke_response(
    status_code: int, headers: Mapping[str, str], body: bytes, *, serial: int | str, reason: str, now: datetime | None = None
) -> Revocation:
    """revoke: "Certificate already revoked" counts as done (revocation is idempotent)."""
    try:
        envelope = parse_envelope(status_code, headers, body, now=now)
    except EmcaFailure as failure:
        if failure.reason is FailureReason.ALREADY_REVOKED:
            return Revocation(serial=canonical_serial(serial), reason=reason, already_revoked=True, message=failure.message)
        raise
    message = envelope.result if isinstance(envelope.result, str) else ""
    return Revocation(serial=canonical_serial(serial), reason=reason, message=message)


def parse_profile_list_response(
    status_code: int, headers: Mapping[str, str], body: bytes, *, now: datetime | None = None
) -> tuple[ProfileSummary, ...]:
    result = _structured(parse_envelope(status_code, headers, body, now=now).result)
    if not isinstance(result, list):
        raise EmcaFailure(FailureReason.MALFORMED_RESPONSE, "profile list is not a list", http_status=status_code)
    profiles = []
    for item in result:
        if isinstance(item, str):
            profiles.append(ProfileSummary(name=item, profile_id=None))
        elif isinstance(item, dict) and isinstance(item.get("profileName"), str):
            profiles.append(ProfileSummary(name=item["profileName"], profile_id=_optional_str(item.get("profileId"))))
        else:
            raise EmcaFailure(FailureReason.MALFORMED_RESPONSE, "unreadable profile list entry", http_status=status_code)
    return tuple(profiles)


def parse_profile_info_response(
    status_code: int, headers: Mapping[str, str], body: bytes, *, now: datetime | None = None
) -> ProfileDetails:
    result = _structured(parse_envelope(status_code, headers, body, now=now).result)
    if (
        not isinstance(result, dict)
        or not isinstance(result.get("profileName"), str)
        or not isinstance(result.get("issuingCA"), str)
    ):
        raise EmcaFailure(FailureReason.MALFORMED_RESPONSE, "profile info without profileName/issuingCA", http_status=status_code)
    try:
        chain = tuple(_pem(_load_certificate(item)) for item in result.get("issuingCAChain") or ())
        validity = result.get("validityDays")
        return ProfileDetails(
            name=result["profileName"],
            profile_id=_optional_str(result.get("profileId")),
            issuing_ca=result["issuingCA"],
            validity_days=int(validity) if validity is not None else None,
            key_types=tuple(str(k) for k in result.get("keyTypes") or ()),
            manual_approval=bool(result.get("manualAuthorization", False)),
            issuing_ca_chain_pem=chain,
        )
    except (TypeError, ValueError) as exc:
        raise EmcaFailure(FailureReason.MALFORMED_RESPONSE, f"unreadable profile info: {exc}", http_status=status_code) from None


# ---------------------------------------------------------------- helpers


def _json_object(body: bytes) -> dict | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _optional_str(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _structured(result: object) -> object:
    if isinstance(result, str):
        try:
            return json.loads(result)
        except ValueError:
            return result
    return result


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _load_certificate(value: object) -> x509.Certificate:
    if not isinstance(value, str):
        raise ValueError("a certificate must be a string")
    if "-----BEGIN" in value:
        return x509.load_pem_x509_certificate(value.encode("ascii"))
    return x509.load_der_x509_certificate(base64.b64decode("".join(value.split()), validate=True))


def _certificates(result: object) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]] | None:
    """(leaf, chain issuing-CA-first) from a certificate or a certs-only PKCS#7, else None."""
    if not isinstance(result, str) or not result.strip():
        return None
    try:
        return _load_certificate(result), ()
    except (ValueError, binascii.Error):
        pass
    try:
        certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode("".join(result.split()), validate=True))
    except (ValueError, binascii.Error):
        try:
            certs = pkcs7.load_pem_pkcs7_certificates(result.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return None
    if not certs:
        return None
    issuers = {c.issuer for c in certs if c.issuer != c.subject}
    leaves = [c for c in certs if c.subject not in issuers]
    leaf = leaves[0] if leaves else certs[0]
    by_subject = {c.subject: c for c in certs if c is not leaf}
    chain: list[x509.Certificate] = []
    current = leaf
    while current.issuer != current.subject and current.issuer in by_subject and len(chain) < len(certs):
        current = by_subject.pop(current.issuer)
        chain.append(current)
    return leaf, tuple(chain)
