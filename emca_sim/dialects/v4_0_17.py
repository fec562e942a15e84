"""emCA V4.0.17 "Open API": the simulator's side of the wire format.

``routes(backend)`` serves ``POST /emCAServices/rest/<method>`` for
createCertificate, createCertificateP7B, getCertificateByRequestID,
getCertificate, revoke, getCertificateProfileList and
getProfileInfoByProfileName, turning requests into `SimBackend` calls and
results / `SimError`s into V4.0.17 envelopes. It shares no code with the
connector's side (``services/common/emca/dialects/v4_0_17.py``); the golden
vectors in ``tests/vectors/emca/v4_0_17/`` hold the two together.

WIRE-FORMAT CHOICES
===================
Where the public documentation is silent these are our choices, the same as
the connector's (its module docstring lists them with the documented facts;
rationale in docs/emca-api.md). Correcting one against a real emCA means
editing this block and the connector's, then regenerating the vectors.
  - EMKEY: lower-case hex SHA-1 of UTF-8 ``userName + password``; compared
    exactly.
  - AES: AES-256-GCM; ``requestData`` = canonical standard base64 of
    12-byte nonce || ciphertext || 16-byte tag, no associated data. Any
    failure (not canonical base64, too short, tag mismatch, not a UTF-8 JSON
    object) is "Invalid input data".
  - SIGNATURE: base64 CMS SignedData, DER or BER (the documented samples are
    BER indefinite-length), attached: the payload is the encapsulated content.
    Accepted: one SignerInfo identifying (issuerAndSerialNumber or
    subjectKeyIdentifier) the registered signer certificate, which must also
    be embedded byte for byte; digest SHA-256/384/512; RSA PKCS#1 v1.5 or
    ECDSA; signed attributes optional, and when present contentType = data and
    messageDigest = the payload's digest, the signature covering their DER SET.
  - PAYLOADS: CSR as PEM; serial as hex (case, colons and leading zeros
    ignored: looked up as lower-case hex without leading zeros); request id,
    CA name, profile name as UTF-8 text.
  - revokeMode: integer (or a string of digits); 6 = certificateHold.
  - RESULTS: certificate = base64 DER; createCertificateP7B = base64 DER
    PKCS#7 certs-only (leaf, then the chain); profile list = JSON array of
    ``{"profileName","profileId"}`` for the CA named (unknown CA: empty list);
    profile info = JSON object (see PROFILE_INFO_FIELDS); manual approval:
    success, PENDING_MESSAGE and the requestId; getCertificateByRequestID
    while waiting: status "pending".
  - Responses: compact JSON, always HTTP 200 (fault injection sits outside).
  - Undocumented error strings: see ERROR_MESSAGES.
Order of checks (documented): decrypt -> username/password (and emKey) ->
source address -> signature -> the method (applicationId dedupe in the
backend). Missing outer fields or header are "Invalid parameter" before
anything; the outer userName must name a V4.0.17 application (else "Invalid
request details found") for its AES key to be known.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import pkcs7
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from emca_sim.backend import Dialect, Issued, Pending, RegisteredApp, SimBackend, SimError, SimErrorKind

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- the choices, in one place
REST_PREFIX = "/emCAServices/rest/"
EMKEY_HEADER = "emKey"
NONCE_BYTES = 12
TAG_BYTES = 16
PENDING_SUBMITTED_MESSAGE = "Request processed successfully"
PENDING_MESSAGE = "Request is pending for approval"
REVOKED_MESSAGE = "Certificate revoked successfully"

MSG_INVALID_PARAMETER = "Invalid parameter"
MSG_INVALID_INPUT = "Invalid input data"
MSG_INVALID_REQUEST = "Invalid request details found"
MSG_SIGNATURE = "Signature verification failed"
MSG_INTERNAL = "Internal server error"

#: SimError kind -> the error string (documented ones first; the rest are our wording).
ERROR_MESSAGES: Mapping[SimErrorKind, str] = {
    SimErrorKind.MISSING_PARAMETER: MSG_INVALID_PARAMETER,
    SimErrorKind.DECRYPTION_FAILED: MSG_INVALID_INPUT,
    SimErrorKind.BAD_CREDENTIALS: MSG_INVALID_REQUEST,
    SimErrorKind.SOURCE_NOT_ALLOWED: MSG_INVALID_REQUEST,
    SimErrorKind.AUTH_KEY_INVALID: MSG_INVALID_REQUEST,
    SimErrorKind.REPLAYED_TXN: MSG_INVALID_REQUEST,
    SimErrorKind.SIGNATURE_INVALID: MSG_SIGNATURE,
    SimErrorKind.UNKNOWN_PROFILE: "Invalid Certificate Profile name",
    SimErrorKind.INTERNAL: MSG_INTERNAL,
    # not documented: the simulator's wording
    SimErrorKind.UNKNOWN_SUBSCRIBER: "Invalid Subscriber ID",
    SimErrorKind.UNKNOWN_CA: "Invalid CA name",
    SimErrorKind.CSR_REJECTED: "Invalid CSR: {detail}",
    SimErrorKind.NOT_FOUND: "No record found",
    SimErrorKind.ALREADY_REVOKED: "Certificate already revoked",
}
REJECTED_MESSAGE = "Request rejected: {detail}"

#: revokeMode -> RFC 5280 reason name (6 = suspend).
REASON_BY_REVOKE_MODE: Mapping[int, str] = {
    0: "unspecified",
    1: "keyCompromise",
    2: "cACompromise",
    3: "affiliationChanged",
    4: "superseded",
    5: "cessationOfOperation",
    6: "certificateHold",
    9: "privilegeWithdrawn",
    10: "aACompromise",
}

PROFILE_INFO_FIELDS = (
    "profileName",
    "profileId",
    "issuingCA",
    "validityDays",
    "keyTypes",
    "manualAuthorization",
    "issuingCAChain",
)

_DIGESTS: Mapping[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def em_key(username: str, password: str) -> str:
    return hashlib.sha1((username + password).encode("utf-8")).hexdigest()


def decrypt_request_data(aes_key: bytes, request_data: str) -> bytes:
    """The inner JSON's bytes; raises ValueError on any failure."""
    try:
        raw = base64.b64decode(request_data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("requestData is not base64") from None
    if base64.b64encode(raw).decode("ascii") != request_data:
        raise ValueError("requestData is not canonical base64")
    if len(raw) < NONCE_BYTES + TAG_BYTES:
        raise ValueError("requestData too short")
    try:
        return AESGCM(aes_key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], None)
    except (InvalidTag, ValueError):  # altered bytes, another key, or a key of the wrong size
        raise ValueError("requestData does not decrypt") from None


class SignatureError(ValueError):
    pass


def verify_signature(signature_b64: str, registered_certificate_pem: str) -> bytes:
    """Verify an attached CMS SignedData against the registered signer; return the payload."""
    try:
        raw = base64.b64decode("".join(signature_b64.split()), validate=True)
        content_info = cms.ContentInfo.load(raw)
        if content_info["content_type"].native != "signed_data":
            raise SignatureError("not SignedData")
        signed_data = content_info["content"]
        return _verify_signed_data(signed_data, registered_certificate_pem)
    except SignatureError:
        raise
    except (ValueError, TypeError, KeyError, binascii.Error, InvalidSignature) as exc:
        raise SignatureError(f"unreadable or invalid signature: {exc}") from None


@dataclass(frozen=True)
class _Signer:
    """What verifying a signature needs of a registered signer certificate, parsed once per certificate."""

    der: bytes
    issuer_der: bytes
    serial_number: int
    key_identifier: bytes | None
    public_key: object


@functools.lru_cache(maxsize=64)
def _signer(registered_certificate_pem: str) -> _Signer:
    registered = x509.load_pem_x509_certificate(registered_certificate_pem.encode("ascii"))
    der = registered.public_bytes(serialization.Encoding.DER)
    asn1 = asn1_x509.Certificate.load(der)
    return _Signer(der=der, issuer_der=asn1.issuer.dump(), serial_number=asn1.serial_number,
                   key_identifier=asn1.key_identifier, public_key=registered.public_key())


def _verify_signed_data(signed_data: cms.SignedData, registered_certificate_pem: str) -> bytes:
    signer = _signer(registered_certificate_pem)
    registered_der = signer.der
    encap = signed_data["encap_content_info"]
    if encap["content_type"].native != "data" or encap["content"].native is None:
        raise SignatureError("no encapsulated data (a detached signature?)")
    payload: bytes = encap["content"].native
    signer_infos = signed_data["signer_infos"]
    if len(signer_infos) != 1:
        raise SignatureError("exactly one signer expected")
    signer_info = signer_infos[0]
    if not _identifies(signer_info["sid"], signer):
        raise SignatureError("the signer is not the registered application")
    embedded = [c.chosen.dump() for c in (signed_data["certificates"] or []) if c.name == "certificate"]
    if registered_der not in embedded:
        raise SignatureError("the registered signer certificate is not embedded")
    # lenient parsing must not let unsigned structure vary: SET tags and algorithm parameters are checked
    if signed_data["digest_algorithms"].dump()[:1] != b"\x31" or signer_infos.dump()[:1] != b"\x31":
        raise SignatureError("digestAlgorithms and signerInfos must be SETs")
    for algorithm in (*signed_data["digest_algorithms"], signer_info["digest_algorithm"], signer_info["signature_algorithm"]):
        if algorithm["parameters"].dump() not in (b"", b"\x05\x00"):
            raise SignatureError("unexpected algorithm parameters")
    digest_name = signer_info["digest_algorithm"]["algorithm"].native
    if digest_name not in _DIGESTS:
        raise SignatureError(f"digest {digest_name} not accepted")
    if digest_name not in [a["algorithm"].native for a in signed_data["digest_algorithms"]]:
        raise SignatureError("signer digest not among SignedData digestAlgorithms")
    expected_version = "v1" if signer_info["sid"].name == "issuer_and_serial_number" else "v3"
    if signer_info["version"].native != expected_version or signed_data["version"].native != expected_version:
        raise SignatureError("SignedData / SignerInfo version does not match the signer identifier")
    hash_algorithm = _DIGESTS[digest_name]()
    signed_attrs = signer_info["signed_attrs"]
    if signed_attrs.native is not None and len(signed_attrs):
        types = [a["type"].native for a in signed_attrs]
        if len(types) != len(set(types)):
            raise SignatureError("a signed attribute appears twice")
        attrs = {a["type"].native: a["values"] for a in signed_attrs}
        for name in ("message_digest", "content_type"):
            if name not in attrs or len(attrs[name]) != 1:
                raise SignatureError(f"signed attributes need exactly one {name}")
        if attrs["content_type"][0].native != "data":
            raise SignatureError("contentType attribute is not data")
        h = hashes.Hash(_DIGESTS[digest_name]())
        h.update(payload)
        if not hmac.compare_digest(attrs["message_digest"][0].native, h.finalize()):
            raise SignatureError("messageDigest does not match the payload")
        signed_bytes = b"\x31" + signed_attrs.dump()[1:]  # [0] IMPLICIT -> the DER SET OF
    else:
        signed_bytes = payload
    _check_signature(signer.public_key, signer_info, signed_bytes, hash_algorithm)
    return payload


def _identifies(sid: cms.SignerIdentifier, signer: _Signer) -> bool:
    if sid.name == "issuer_and_serial_number":
        return sid.chosen["issuer"].dump() == signer.issuer_der and sid.chosen["serial_number"].native == signer.serial_number
    if sid.name == "subject_key_identifier":
        return signer.key_identifier is not None and sid.chosen.native == signer.key_identifier
    return False


def _check_signature(
    public_key: object, signer_info: cms.SignerInfo, signed: bytes, hash_algorithm: hashes.HashAlgorithm
) -> None:
    algorithm = signer_info["signature_algorithm"]
    signature = signer_info["signature"].native
    sig_name = algorithm.signature_algo  # "rsassa_pkcs1v15", "ecdsa", "rsassa_pss", ...
    algo_hash = algorithm["algorithm"].native
    # sha256_rsa / sha256_ecdsa name their hash: it must be the signer's digest
    if "_" in algo_hash and algo_hash.split("_")[0] in _DIGESTS and algo_hash.split("_")[0] != hash_algorithm.name:
        raise SignatureError("signature algorithm hash differs from the digest algorithm")
    if sig_name == "rsassa_pkcs1v15" and isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, signed, padding.PKCS1v15(), hash_algorithm)
    elif sig_name == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, signed, ec.ECDSA(hash_algorithm))
    else:
        raise SignatureError(f"signature algorithm {sig_name} not accepted for this key")


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=256)
def _allowed_networks(allowed: tuple[str, ...]) -> tuple[tuple[_Network, ...], frozenset[str]]:
    """Registered source entries parsed once per list: (networks, entries that are not addresses, matched as text)."""
    networks, names = [], set()
    for entry in allowed:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry)
    return tuple(networks), frozenset(names)


def source_allowed(client_host: str | None, allowed: tuple[str, ...]) -> bool:
    """Is the caller's address one of the registered addresses (or networks)?"""
    if not client_host:
        return False
    networks, names = _allowed_networks(allowed)
    try:
        address = ipaddress.ip_address(client_host)
    except ValueError:
        return client_host in allowed
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks) or client_host in names


# ---------------------------------------------------------------- request handling


class _Refused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class _Call:
    app: RegisteredApp
    inner: dict
    payload: str


_COMMON_FIELDS = ("userName", "password", "signature")
_METHOD_FIELDS: Mapping[str, tuple[str, ...]] = {
    "createCertificate": ("profileName", "subscriberId", "applicationId"),
    "createCertificateP7B": ("profileName", "subscriberId", "applicationId"),
    "getCertificateByRequestID": (),
    "getCertificate": (),
    "revoke": ("remarks", "revokeMode"),
    "getCertificateProfileList": (),
    "getProfileInfoByProfileName": (),
}
#: URL path segment -> method (the documented URL spells it getProfileinfoByProfilename)
PATH_METHODS: Mapping[str, str] = {
    **{name: name for name in _METHOD_FIELDS},
    "getProfileinfoByProfilename": "getProfileInfoByProfileName",
}


def _envelope(status: str, result: object, subscriber_id: str | None = None, request_id: str | None = None) -> bytes:
    body = {"status": status, "result": result, "subscriberId": subscriber_id, "requestId": request_id}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def failure_body(message: str) -> bytes:
    return _envelope("failure", message)


def error_message(error: SimError) -> str:
    return ERROR_MESSAGES.get(error.kind, MSG_INTERNAL).format(detail=error.detail)


def handle(
    backend: SimBackend, method: str, headers: Mapping[str, str], body: bytes, client_host: str | None
) -> tuple[int, bytes]:
    """One V4.0.17 call, from request bytes to (HTTP status, response bytes)."""
    backend.count_request(method)
    try:
        call = _authenticate(backend, method, headers, body, client_host)
        return 200, _HANDLERS[method](backend, call)
    except _Refused as refusal:
        return 200, failure_body(refusal.message)
    except SimError as error:
        return 200, failure_body(error_message(error))
    except Exception:
        log.exception("V4.0.17 %s failed", method)
        return 200, failure_body(MSG_INTERNAL)


def _authenticate(backend: SimBackend, method: str, headers: Mapping[str, str], body: bytes, client_host: str | None) -> _Call:
    lowered = {k.lower(): v for k, v in headers.items()}
    outer = _json_object(body)
    if (
        outer is None
        or not isinstance(outer.get("requestData"), str)
        or not isinstance(outer.get("userName"), str)
        or not lowered.get(EMKEY_HEADER.lower())
    ):
        raise _Refused(MSG_INVALID_PARAMETER)
    app = backend.application(outer["userName"])
    if app is None or app.dialect != Dialect.V4_0_17 or app.aes_key is None or app.signer_certificate_pem is None:
        raise _Refused(MSG_INVALID_REQUEST)
    # 1. decrypt
    try:
        inner = _json_object(decrypt_request_data(app.aes_key, outer["requestData"]))
    except ValueError:
        inner = None
    if inner is None:
        raise _Refused(MSG_INVALID_INPUT)
    for name in _COMMON_FIELDS + _METHOD_FIELDS[method]:
        value = inner.get(name)
        if value is None or (name != "revokeMode" and not isinstance(value, str)):
            raise _Refused(MSG_INVALID_PARAMETER)
    # 2. username / password (and the emKey derived from them)
    if not (
        inner["userName"] == outer["userName"] == app.username
        and hmac.compare_digest(inner["password"].encode("utf-8"), app.password.encode("utf-8"))
        and hmac.compare_digest(lowered[EMKEY_HEADER.lower()].encode("utf-8"), em_key(app.username, app.password).encode("ascii"))
    ):
        raise _Refused(MSG_INVALID_REQUEST)
    # 3. source address
    if not source_allowed(client_host, app.source_addresses):
        raise _Refused(MSG_INVALID_REQUEST)
    # 4. signature against the registered PFX certificate
    try:
        payload = verify_signature(inner["signature"], app.signer_certificate_pem)
    except SignatureError:
        raise _Refused(MSG_SIGNATURE) from None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(MSG_INVALID_PARAMETER) from None
    if not text.strip():
        raise _Refused(MSG_INVALID_PARAMETER)
    return _Call(app=app, inner=inner, payload=text)


def _json_object(data: bytes) -> dict | None:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _b64_der(pem: str) -> str:
    """Base64 of a certificate's DER: the body of the PEM the CA wrote, its 64-character lines joined."""
    lines = pem.strip().splitlines()
    if len(lines) < 3 or lines[0] != "-----BEGIN CERTIFICATE-----" or lines[-1] != "-----END CERTIFICATE-----":
        raise ValueError("not one PEM certificate")
    return "".join(lines[1:-1])


def _serial(text: str) -> str:
    cleaned = "".join(text.split()).replace(":", "").lower().removeprefix("0x")
    try:
        return format(int(cleaned, 16), "x")
    except ValueError:
        raise SimError(SimErrorKind.NOT_FOUND, f"not a serial number: {text!r}") from None


def _issued_body(issued: Issued, request_id: str | None = None, *, p7b: bool = False) -> bytes:
    if p7b:
        certs = [x509.load_pem_x509_certificate(p.encode("ascii")) for p in (issued.certificate_pem, *issued.chain_pem)]
        result = base64.b64encode(pkcs7.serialize_certificates(certs, serialization.Encoding.DER)).decode("ascii")
    else:
        result = _b64_der(issued.certificate_pem)
    return _envelope("success", result, issued.subscriber_id, request_id)


def _create(backend: SimBackend, call: _Call, *, p7b: bool) -> bytes:
    outcome = backend.issue(
        profile=call.inner["profileName"],
        subscriber_id=call.inner["subscriberId"],
        csr_pem=call.payload,
        application_id=call.inner["applicationId"],
        dedupe_by_application_id=True,
    )
    if isinstance(outcome, Pending):
        return _pending_body(outcome, submitted=True, p7b=p7b)
    return _issued_body(outcome, p7b=p7b)


def _pending_body(pending: Pending, *, submitted: bool, p7b: bool = False) -> bytes:
    if pending.state == "approved" and pending.issued is not None:
        return _issued_body(pending.issued, pending.request_id, p7b=p7b)
    if pending.state == "rejected":
        message = REJECTED_MESSAGE.format(detail=pending.rejection or "by the CA officer")
        return _envelope("failure", message, pending.subscriber_id, pending.request_id)
    if submitted:
        return _envelope("success", PENDING_SUBMITTED_MESSAGE, pending.subscriber_id, pending.request_id)
    return _envelope("pending", PENDING_MESSAGE, pending.subscriber_id, pending.request_id)


def _by_request_id(backend: SimBackend, call: _Call) -> bytes:
    return _pending_body(backend.pending(call.payload.strip()), submitted=False)


def _get_certificate(backend: SimBackend, call: _Call) -> bytes:
    return _issued_body(backend.certificate(_serial(call.payload)))


def _revoke(backend: SimBackend, call: _Call) -> bytes:
    mode = call.inner["revokeMode"]
    if isinstance(mode, str) and mode.strip().isdigit():
        mode = int(mode)
    if isinstance(mode, bool) or not isinstance(mode, int) or mode not in REASON_BY_REVOKE_MODE:
        raise _Refused(MSG_INVALID_PARAMETER)
    issued = backend.revoke(_serial(call.payload), REASON_BY_REVOKE_MODE[mode])
    return _envelope("success", REVOKED_MESSAGE, issued.subscriber_id)


def _profile_list(backend: SimBackend, call: _Call) -> bytes:
    ca_name = call.payload
    result = [{"profileName": p.name, "profileId": p.profile_id} for p in backend.profiles() if p.issuing_ca == ca_name]
    return _envelope("success", result)


def _profile_info(backend: SimBackend, call: _Call) -> bytes:
    profile = backend.profile(call.payload)
    if profile is None:
        raise SimError(SimErrorKind.UNKNOWN_PROFILE, call.payload)
    result = {
        "profileName": profile.name,
        "profileId": profile.profile_id,
        "issuingCA": profile.issuing_ca,
        "validityDays": profile.validity_days,
        "keyTypes": list(profile.key_types),
        "manualAuthorization": profile.manual_approval,
        "issuingCAChain": [_b64_der(pem) for pem in backend.chain(profile.issuing_ca)],
    }
    return _envelope("success", result)


_HANDLERS: Mapping[str, Callable[[SimBackend, _Call], bytes]] = {
    "createCertificate": lambda b, c: _create(b, c, p7b=False),
    "createCertificateP7B": lambda b, c: _create(b, c, p7b=True),
    "getCertificateByRequestID": _by_request_id,
    "getCertificate": _get_certificate,
    "revoke": _revoke,
    "getCertificateProfileList": _profile_list,
    "getProfileInfoByProfileName": _profile_info,
}


def routes(backend: SimBackend) -> list[BaseRoute]:
    """The V4.0.17 endpoints over ``backend``."""

    def endpoint_for(method: str) -> Callable[[Request], object]:
        async def endpoint(request: Request) -> Response:
            body = await request.body()
            host = request.client.host if request.client else None
            status, content = handle(backend, method, request.headers, body, host)
            return Response(content=content, status_code=status, media_type="application/json")

        return endpoint

    return [Route(REST_PREFIX + path, endpoint_for(method), methods=["POST"]) for path, method in PATH_METHODS.items()]
