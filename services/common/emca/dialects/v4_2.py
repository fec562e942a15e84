"""The emCA 4.2.x REST dialect (V4.2.3 and V4.2.4+), connector side, sans-IO.

Builds requests (method, path, headers, body bytes) and parses responses into
typed results or a classified `EmcaFailure`; the HTTP client (httpx) lives
elsewhere and only moves bytes. The clock and the txn/nonce generator are
injected so that the output is deterministic under test. Independent of the
simulator (no ``emca_sim`` import): both are held to ``tests/vectors/emca/v4_2/``.

Public facts (EMCA_API_NOTES.md): ``AuthKey = SHA256(ClientID + ts + txn)``,
lower-case hex, with a never-reused txn; a short-lived JWT from a token endpoint
(``username``, ``password``, ``clientId``, ``validityInMins``, ``X-Nonce``) sent
as ``Authorization: Bearer``. Everything else is OUR CHOICE, written once here
and in docs/emca-api.md ("4.2.x"), mirrored by ``emca_sim/dialects/v4_2.py``:

Paths        ``POST /emCAServices42/auth/token`` (V4.2.4+ only);
             ``GET  /emCAServices42/rest/{getCAs|getProfiles}/{appCode}``;
             ``POST /emCAServices42/rest/{createCertificates|getCertificate|
             getCertificateChain|revoke|getCrl}/{appCode}`` (JSON body).
V4.2.3       headers, in order: ``Authorization: Basic base64(appCode:password)``,
             ``AuthKey: sha256_hex(ClientID + ts + txn)``, ``ts: <Unix ms>``,
             ``txn: <id>``, then ``Content-Type: application/json`` on POST.
V4.2.4+      token call: ``X-Nonce``, ``Content-Type``; body ``{"username",
             "password","clientId","validityInMins"}`` (1..60, default 15). Other
             calls: ``Authorization: Bearer <jwt>``, ``X-Nonce: <id>``, then
             ``Content-Type`` on POST. A fresh nonce for every call.
ids          one new txn (V4.2.3) or nonce (V4.2.4+) per request from ``new_id``
             (default: 32 lower-case hex characters of uuid4); allowed: 8..64 of
             ``[A-Za-z0-9._-]``. The server refuses any id it has seen (REPLAYED_*)
             and a ts more than 300 s from its clock (STALE_TIMESTAMP).
JWT          opaque here: HS256 signed by the server; its lifetime is ``expiresIn``
             seconds from the token response, counted from when we sent the request.
Bodies       compact JSON (``separators=(",", ":")``, ASCII-escaped), keys in order:
  createCertificates {"profileName","subscriberId","applicationId"(string|null),
                     "applicationIds"?([string|null] one per CSR, when each has its own),"csrs":[PEM]}
  getCertificate     {"serialNumber"} | {"requestId"}
  getCertificateChain {"caName"} | {"serialNumber"}
  revoke             {"serialNumber","reason":RFC 5280 name,"remarks"}
  getCrl             {"caName"}
Responses    200 ``{"status":"success","result":{...}}``: token {"accessToken",
             "tokenType":"Bearer","expiresIn"}; getCAs {"cas":[{"name","keyType",
             "certificate":PEM,"sha256"}]}; getProfiles {"profiles":[{"name",
             "profileId","issuingCa","validityDays","keyTypes","manualApproval"}]};
             createCertificates {"certificates":[record]}; getCertificate/revoke:
             record; getCertificateChain {"chain":[PEM]}; getCrl {"caName","crl":
             base64 DER}. Records: "status" issued|revoked (serialNumber, certificate,
             chain, profileName, subscriberId, applicationId, requestId, issuedAt,
             revokedAt, revocationReason), pending (requestId, profileName,
             subscriberId, applicationId) or rejected (requestId|null, errorCode,
             errorMessage). Times ``YYYY-MM-DDTHH:MM:SSZ`` (UTC).
Failures     ``{"status":"failure","errorCode","errorMessage"}`` with the HTTP status
             of docs/emca-api.md; classified by `classify_failure` (CATEGORIES):
             429/5xx/408 transient whatever the body; otherwise by errorCode; an
             unknown code or an unparseable body on another status is a connector
             fault (the request stays queued rather than being failed for good).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import ssl
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from services.common.contracts.fields import RevocationReason

BASE_PATH = "/emCAServices42"
REST_PATH = BASE_PATH + "/rest"
TOKEN_PATH = BASE_PATH + "/auth/token"
DEFAULT_TOKEN_VALIDITY_MINS = 15
TOKEN_VALIDITY_MINS = (1, 60)
MAX_CSRS_PER_CALL = 50
JSON_CONTENT_TYPE = "application/json"
_ID_RE = re.compile(r"[A-Za-z0-9._-]{8,64}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

#: RFC 5280 CRLReason codes of the reasons revoke takes (certificateHold is suspend, not served)
REVOCATION_REASON_CODES: dict[str, int] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}


class Version(StrEnum):
    V4_2_3 = "V4.2.3"
    V4_2_4 = "V4.2.4+"


class FailureCategory(StrEnum):
    """What the issuer does about a failed call (DESIGN.md "Three kinds of failure")."""

    REQUEST_PERMANENT = "request_permanent"  # emCA refused this request: fail it, never retry
    CONNECTOR_FAULT = "connector_fault"  # the connector is misconfigured: keep requests queued, alert
    TRANSIENT = "transient"  # back off (honour retry_after) and retry; requests stay queued
    TOKEN_REJECTED = "token_rejected"  # V4.2.4+: drop the cached token, fetch a new one, retry once


#: errorCode -> category, for responses that are not 408/429/5xx
CATEGORIES: dict[str, FailureCategory] = {
    "INVALID_PARAMETER": FailureCategory.CONNECTOR_FAULT,  # we always send well-formed parameters: dialect mismatch
    "AUTH_REQUIRED": FailureCategory.CONNECTOR_FAULT,
    "INVALID_CREDENTIALS": FailureCategory.CONNECTOR_FAULT,
    "INVALID_AUTH_KEY": FailureCategory.CONNECTOR_FAULT,
    "STALE_TIMESTAMP": FailureCategory.CONNECTOR_FAULT,  # our clock is off by more than 300 s
    "SOURCE_NOT_ALLOWED": FailureCategory.CONNECTOR_FAULT,
    "UNKNOWN_SUBSCRIBER": FailureCategory.CONNECTOR_FAULT,
    "UNKNOWN_CA": FailureCategory.CONNECTOR_FAULT,  # the connector's issuing CA name no longer exists
    "REPLAYED_TXN": FailureCategory.TRANSIENT,  # retry with a new id
    "REPLAYED_NONCE": FailureCategory.TRANSIENT,
    "TOKEN_INVALID": FailureCategory.TOKEN_REJECTED,
    "TOKEN_EXPIRED": FailureCategory.TOKEN_REJECTED,
    "UNKNOWN_PROFILE": FailureCategory.REQUEST_PERMANENT,
    "CSR_REJECTED": FailureCategory.REQUEST_PERMANENT,
    "NOT_FOUND": FailureCategory.REQUEST_PERMANENT,
    "ALREADY_REVOKED": FailureCategory.REQUEST_PERMANENT,  # EmcaFailure.already_revoked: treat revoke as done
    "INTERNAL_ERROR": FailureCategory.TRANSIENT,
}
MALFORMED_RESPONSE = "MALFORMED_RESPONSE"


# -- values -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What emCA handed over at registration. Secrets stay out of repr."""

    app_code: str
    password: str = field(repr=False)
    client_id: str = field(repr=False)


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str  # relative to the connector's base URL
    headers: tuple[tuple[str, str], ...]
    body: bytes  # b"" for GET


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), None)


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    obtained_at: datetime  # when the token request was sent
    expires_at: datetime


@dataclass(frozen=True)
class CaEntry:
    name: str  # exactly as emCA spells it
    key_type: str
    certificate_pem: str
    sha256: str  # of the DER certificate, lower-case hex (checked against the certificate)


@dataclass(frozen=True)
class ProfileEntry:
    name: str
    profile_id: str
    issuing_ca: str
    validity_days: int
    key_types: tuple[str, ...]
    manual_approval: bool


@dataclass(frozen=True)
class IssuedCertificate:
    serial: str  # lower-case hex
    certificate_pem: str
    chain_pem: tuple[str, ...]  # issuing CA first
    profile_name: str
    subscriber_id: str
    application_id: str | None
    request_id: str | None  # set when it was issued after manual approval
    issued_at: datetime
    revoked: bool
    revoked_at: datetime | None
    revocation_reason: str | None


@dataclass(frozen=True)
class PendingRequest:
    request_id: str
    profile_name: str
    subscriber_id: str
    application_id: str | None


@dataclass(frozen=True)
class RejectedRequest:
    request_id: str | None  # None: refused at submission; else refused at approval
    code: str  # "CSR_REJECTED" or "REQUEST_REJECTED"
    message: str


Outcome = IssuedCertificate | PendingRequest | RejectedRequest


class EmcaFailure(Exception):
    """A call emCA did not answer with success, classified."""

    def __init__(
        self, category: FailureCategory, code: str, message: str, *, http_status: int | None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.category = category
        self.code = code
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after

    @property
    def already_revoked(self) -> bool:
        return self.code == "ALREADY_REVOKED"

    def __repr__(self) -> str:
        return f"EmcaFailure({self.category!s}, {self.code!r}, {self.message!r}, http_status={self.http_status})"


# -- requests ---------------------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _random_id() -> str:
    return uuid.uuid4().hex


def encode_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def auth_key(client_id: str, ts: str, txn: str) -> str:
    """``SHA256(ClientID + ts + txn)``, lower-case hex."""
    return hashlib.sha256((client_id + ts + txn).encode("utf-8")).hexdigest()


def timestamp_ms(moment: datetime) -> str:
    """The ``ts`` header: Unix time in milliseconds, decimal."""
    return str((moment - _EPOCH) // timedelta(milliseconds=1))


def normalise_serial(serial: str) -> str:
    value = serial.replace(":", "").lower()
    if not re.fullmatch(r"[0-9a-f]{1,64}", value):
        raise ValueError(f"not a hexadecimal serial number: {serial!r}")
    return value


class RequestBuilder:
    """Request bytes for one connector. V4.2.4+ operations need the bearer ``token``."""

    def __init__(
        self,
        version: Version | str,
        credentials: Credentials,
        *,
        clock: Callable[[], datetime] = _utc_now,
        new_id: Callable[[], str] = _random_id,
    ) -> None:
        self.version = Version(version)
        self._credentials = credentials
        self._clock = clock
        self._new_id = new_id

    def _fresh_id(self) -> str:
        value = self._new_id()
        if not _ID_RE.fullmatch(value):
            raise ValueError("txn/nonce generator returned an id outside [A-Za-z0-9._-]{8,64}")
        return value

    def token(self, *, validity_mins: int = DEFAULT_TOKEN_VALIDITY_MINS) -> HttpRequest:
        if self.version != Version.V4_2_4:
            raise ValueError("V4.2.3 has no token endpoint")
        low, high = TOKEN_VALIDITY_MINS
        if not low <= validity_mins <= high:
            raise ValueError(f"validity_mins must be within {low}..{high}")
        creds = self._credentials
        body = encode_json(
            {"username": creds.app_code, "password": creds.password, "clientId": creds.client_id, "validityInMins": validity_mins}
        )
        headers = (("X-Nonce", self._fresh_id()), ("Content-Type", JSON_CONTENT_TYPE))
        return HttpRequest("POST", TOKEN_PATH, headers, body)

    def _request(self, method: str, operation: str, body: dict[str, Any] | None, token: str | None) -> HttpRequest:
        creds = self._credentials
        path = f"{REST_PATH}/{operation}/{quote(creds.app_code, safe='')}"
        if self.version == Version.V4_2_3:
            if token is not None:
                raise ValueError("V4.2.3 authenticates with AuthKey, not a token")
            ts, txn = timestamp_ms(self._clock()), self._fresh_id()
            basic = base64.b64encode(f"{creds.app_code}:{creds.password}".encode()).decode("ascii")
            headers = [
                ("Authorization", f"Basic {basic}"),
                ("AuthKey", auth_key(creds.client_id, ts, txn)),
                ("ts", ts),
                ("txn", txn),
            ]
        else:
            if not token:
                raise ValueError("V4.2.4+ operations need a bearer token")
            headers = [("Authorization", f"Bearer {token}"), ("X-Nonce", self._fresh_id())]
        if body is None:
            return HttpRequest(method, path, tuple(headers), b"")
        headers.append(("Content-Type", JSON_CONTENT_TYPE))
        return HttpRequest(method, path, tuple(headers), encode_json(body))

    def get_cas(self, *, token: str | None = None) -> HttpRequest:
        return self._request("GET", "getCAs", None, token)

    def get_profiles(self, *, token: str | None = None) -> HttpRequest:
        return self._request("GET", "getProfiles", None, token)

    def create_certificates(
        self,
        *,
        profile_name: str,
        subscriber_id: str,
        csrs: Sequence[str],
        application_id: str | None = None,
        application_ids: Sequence[str | None] | None = None,
        token: str | None = None,
    ) -> HttpRequest:
        if isinstance(csrs, str) or not 1 <= len(csrs) <= MAX_CSRS_PER_CALL:
            raise ValueError(f"csrs must be a sequence of 1..{MAX_CSRS_PER_CALL} PEM CSRs")
        body: dict[str, Any] = {"profileName": profile_name, "subscriberId": subscriber_id, "applicationId": application_id}
        if application_ids is not None:
            if application_id is not None or isinstance(application_ids, str) or len(application_ids) != len(csrs):
                raise ValueError("application_ids: one per CSR, and no application_id beside them")
            body["applicationIds"] = list(application_ids)
        body["csrs"] = list(csrs)
        return self._request("POST", "createCertificates", body, token)

    def get_certificate(
        self, *, serial: str | None = None, request_id: str | None = None, token: str | None = None
    ) -> HttpRequest:
        if (serial is None) == (request_id is None):
            raise ValueError("give exactly one of serial, request_id")
        body = {"serialNumber": normalise_serial(serial)} if serial is not None else {"requestId": request_id}
        return self._request("POST", "getCertificate", body, token)

    def get_certificate_chain(
        self, *, ca_name: str | None = None, serial: str | None = None, token: str | None = None
    ) -> HttpRequest:
        if (ca_name is None) == (serial is None):
            raise ValueError("give exactly one of ca_name, serial")
        body = {"caName": ca_name} if ca_name is not None else {"serialNumber": normalise_serial(serial or "")}
        return self._request("POST", "getCertificateChain", body, token)

    def revoke(self, *, serial: str, reason: RevocationReason | str, remarks: str = "", token: str | None = None) -> HttpRequest:
        name = str(reason)
        if name not in REVOCATION_REASON_CODES:
            raise ValueError(f"not a revocation reason emCA takes: {name!r}")
        body = {"serialNumber": normalise_serial(serial), "reason": name, "remarks": remarks}
        return self._request("POST", "revoke", body, token)

    def get_crl(self, *, ca_name: str, token: str | None = None) -> HttpRequest:
        return self._request("POST", "getCrl", {"caName": ca_name}, token)


# -- responses --------------------------------------------------------------------------------------


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """A Retry-After header in seconds: delta-seconds, or an HTTP date when ``now`` is given."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdecimal():
        return float(int(text))
    if now is None:
        return None
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - now).total_seconds())


def _decode(response: HttpResponse) -> dict[str, Any] | None:
    try:
        body = json.loads(response.body)
    except (UnicodeDecodeError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def classify_failure(response: HttpResponse, *, now: datetime | None = None) -> EmcaFailure:
    """The `EmcaFailure` a non-success response stands for (see CATEGORIES)."""
    body = _decode(response)
    code = body.get("errorCode") if body else None
    message = body.get("errorMessage") if body else None
    code = code if isinstance(code, str) and code else None
    message = message if isinstance(message, str) else ""
    status = response.status
    retry_after = retry_after_seconds(response.header("Retry-After"), now=now)
    if status == 429 or status == 408 or status >= 500:
        return EmcaFailure(
            FailureCategory.TRANSIENT,
            code or f"HTTP_{status}",
            message or f"HTTP {status}",
            http_status=status,
            retry_after=retry_after,
        )
    if code is not None and code in CATEGORIES:
        return EmcaFailure(CATEGORIES[code], code, message, http_status=status, retry_after=retry_after)
    if body is None or code is None:
        detail = "response is not an emCA failure envelope"
        return EmcaFailure(FailureCategory.CONNECTOR_FAULT, MALFORMED_RESPONSE, f"HTTP {status}: {detail}", http_status=status)
    return EmcaFailure(FailureCategory.CONNECTOR_FAULT, code, message or "unknown error code", http_status=status)


def _malformed(response: HttpResponse, detail: str) -> EmcaFailure:
    return EmcaFailure(FailureCategory.CONNECTOR_FAULT, MALFORMED_RESPONSE, detail, http_status=response.status)


def _result(response: HttpResponse) -> dict[str, Any]:
    body = _decode(response)
    if response.status != 200 or body is None or body.get("status") != "success":
        if response.status == 200 and (body is None or body.get("status") != "failure"):
            raise _malformed(response, "success response without a success envelope")
        raise classify_failure(response)
    result = body.get("result")
    if not isinstance(result, dict):
        raise _malformed(response, "result is not an object")
    return result


class _Fields:
    """Typed access to one JSON object of a response; any mismatch is MALFORMED_RESPONSE."""

    def __init__(self, response: HttpResponse, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise _malformed(response, f"{where} is not an object")
        self._response, self._value, self._where = response, value, where

    def _fail(self, name: str, expected: str) -> EmcaFailure:
        return _malformed(self._response, f"{self._where}.{name} is not {expected}")

    def text(self, name: str) -> str:
        value = self._value.get(name)
        if not isinstance(value, str) or not value:
            raise self._fail(name, "a non-empty string")
        return value

    def opt_text(self, name: str) -> str | None:
        value = self._value.get(name)
        if value is not None and not isinstance(value, str):
            raise self._fail(name, "a string or null")
        return value

    def integer(self, name: str) -> int:
        value = self._value.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(name, "an integer")
        return value

    def flag(self, name: str) -> bool:
        value = self._value.get(name)
        if not isinstance(value, bool):
            raise self._fail(name, "a boolean")
        return value

    def texts(self, name: str) -> tuple[str, ...]:
        value = self._value.get(name)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._fail(name, "a list of strings")
        return tuple(value)

    def items(self, name: str) -> list[object]:
        value = self._value.get(name)
        if not isinstance(value, list):
            raise self._fail(name, "a list")
        return value

    def time(self, name: str, *, optional: bool = False) -> datetime | None:
        value = self.opt_text(name) if optional else self.text(name)
        if value is None:
            return None
        try:
            return datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise self._fail(name, "a time YYYY-MM-DDTHH:MM:SSZ") from None


def parse_token(response: HttpResponse, *, requested_at: datetime) -> AccessToken:
    """The token of a token response; ``requested_at``: when the request was sent."""
    fields = _Fields(response, _result(response), "result")
    value, token_type, expires_in = fields.text("accessToken"), fields.text("tokenType"), fields.integer("expiresIn")
    if token_type.lower() != "bearer" or expires_in <= 0:
        raise _malformed(response, "token is not a Bearer token with a positive lifetime")
    return AccessToken(value, requested_at, requested_at + timedelta(seconds=expires_in))


def parse_cas(response: HttpResponse) -> tuple[CaEntry, ...]:
    entries = []
    for index, item in enumerate(_Fields(response, _result(response), "result").items("cas")):
        fields = _Fields(response, item, f"cas[{index}]")
        entry = CaEntry(fields.text("name"), fields.text("keyType"), fields.text("certificate"), fields.text("sha256"))
        try:
            actual = hashlib.sha256(ssl.PEM_cert_to_DER_cert(entry.certificate_pem)).hexdigest()
        except (ValueError, binascii.Error):
            raise _malformed(response, f"cas[{index}].certificate is not a PEM certificate") from None
        if actual != entry.sha256.lower():
            raise _malformed(response, f"cas[{index}].sha256 does not match its certificate")
        entries.append(entry)
    return tuple(entries)


def parse_profiles(response: HttpResponse) -> tuple[ProfileEntry, ...]:
    entries = []
    for index, item in enumerate(_Fields(response, _result(response), "result").items("profiles")):
        fields = _Fields(response, item, f"profiles[{index}]")
        entries.append(
            ProfileEntry(
                fields.text("name"),
                fields.text("profileId"),
                fields.text("issuingCa"),
                fields.integer("validityDays"),
                fields.texts("keyTypes"),
                fields.flag("manualApproval"),
            )
        )
    return tuple(entries)


def _record(response: HttpResponse, value: object, where: str) -> Outcome:
    fields = _Fields(response, value, where)
    status = fields.text("status")
    if status in ("issued", "revoked"):
        issued_at = fields.time("issuedAt")
        assert issued_at is not None
        return IssuedCertificate(
            serial=fields.text("serialNumber").lower(),
            certificate_pem=fields.text("certificate"),
            chain_pem=fields.texts("chain"),
            profile_name=fields.text("profileName"),
            subscriber_id=fields.text("subscriberId"),
            application_id=fields.opt_text("applicationId"),
            request_id=fields.opt_text("requestId"),
            issued_at=issued_at,
            revoked=status == "revoked",
            revoked_at=fields.time("revokedAt", optional=True),
            revocation_reason=fields.opt_text("revocationReason"),
        )
    if status == "pending":
        return PendingRequest(
            fields.text("requestId"), fields.text("profileName"), fields.text("subscriberId"), fields.opt_text("applicationId")
        )
    if status == "rejected":
        return RejectedRequest(fields.opt_text("requestId"), fields.text("errorCode"), fields.opt_text("errorMessage") or "")
    raise _malformed(response, f"{where}.status {status!r} is unknown")


def parse_create_certificates(response: HttpResponse) -> tuple[Outcome, ...]:
    """One outcome per submitted CSR, in order. A call where every CSR was refused is an EmcaFailure."""
    items = _Fields(response, _result(response), "result").items("certificates")
    if not items:
        raise _malformed(response, "result.certificates is empty")
    return tuple(_record(response, item, f"certificates[{index}]") for index, item in enumerate(items))


def parse_certificate(response: HttpResponse) -> Outcome:
    """getCertificate: by serial an IssuedCertificate; by request id any of the three."""
    return _record(response, _result(response), "result")


def parse_revoke(response: HttpResponse) -> IssuedCertificate:
    record = _record(response, _result(response), "result")
    if not isinstance(record, IssuedCertificate) or not record.revoked:
        raise _malformed(response, "revoke did not answer with a revoked certificate")
    return record


def parse_chain(response: HttpResponse) -> tuple[str, ...]:
    chain = _Fields(response, _result(response), "result").texts("chain")
    if not chain:
        raise _malformed(response, "result.chain is empty")
    return chain


def parse_crl(response: HttpResponse) -> bytes:
    """The DER bytes of the CRL."""
    encoded = _Fields(response, _result(response), "result").text("crl")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise _malformed(response, "result.crl is not base64") from None


# -- token cache ------------------------------------------------------------------------------------


class TokenCache:
    """Reuses a V4.2.4+ token until shortly before it expires.

    It is renewed ``refresh_margin`` before expiry, or half-way through its
    lifetime when that is shorter. Not locked: one cache per connector, used
    from one event loop.
    """

    def __init__(self, *, refresh_margin: timedelta = timedelta(seconds=60)) -> None:
        self._refresh_margin = refresh_margin
        self._token: AccessToken | None = None

    def current(self, now: datetime) -> str | None:
        """The cached token's value, or None when a new one must be fetched."""
        token = self._token
        if token is None:
            return None
        margin = min(self._refresh_margin, (token.expires_at - token.obtained_at) / 2)
        return token.value if now < token.expires_at - margin else None

    def store(self, token: AccessToken) -> None:
        self._token = token

    def invalidate(self, value: str | None = None) -> None:
        """Forget the token (only if it is still ``value``, when given: a newer one stays)."""
        if value is None or (self._token is not None and self._token.value == value):
            self._token = None
