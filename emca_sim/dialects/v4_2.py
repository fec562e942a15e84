"""The emCA 4.2.x REST dialect (V4.2.3 and V4.2.4+), server side.

Public facts (EMCA_API_NOTES.md): HTTPS, TLS 1.2+; registration yields an
appCode (username), password, source IP and a ClientID; ``AuthKey =
SHA256(ClientID + ts + txn)`` in lower-case hex with a never-reused txn; or a
short-lived JWT from a token endpoint (``username``, ``password``, ``clientId``,
``validityInMins``, header ``X-Nonce``) sent as ``Authorization: Bearer``;
operations getCAs, getProfiles, createCertificates, getCertificate,
getCertificateChain, revoke, getCrl (suspend/reinstate exist but are not served here).
Everything else below is OUR CHOICE, written once here and in docs/emca-api.md
("4.2.x"); the connector's ``services/common/emca/dialects/v4_2.py`` states the
same contract and both are held to ``tests/vectors/emca/v4_2/``.

Wire format (the contract)
--------------------------
Paths        ``POST /emCAServices42/auth/token`` (V4.2.4+ only);
             ``GET  /emCAServices42/rest/{getCAs|getProfiles}/{appCode}``;
             ``POST /emCAServices42/rest/{createCertificates|getCertificate|
             getCertificateChain|revoke|getCrl}/{appCode}`` with a JSON body.
Which auth   decided by the application's registered dialect. An appCode that is
             unknown or registered for another dialect gets INVALID_CREDENTIALS.
V4.2.3       every call carries ``Authorization: Basic base64(appCode:password)``,
             ``AuthKey: sha256_hex(ClientID + ts + txn)`` (UTF-8, lower-case hex),
             ``ts: <Unix time in milliseconds, decimal>``, ``txn: <id>``. The
             Basic username must equal the path's appCode.
V4.2.4+      the token call carries ``X-Nonce`` and the JSON body
             ``{"username","password","clientId","validityInMins"}`` (1..60);
             every other call carries ``Authorization: Bearer <jwt>`` and a fresh
             ``X-Nonce: <id>``.
ids          txn and nonce: 8..64 characters of ``[A-Za-z0-9._-]``; each is
             accepted once per appCode, ever (backend.remember_txn; a txn and a
             nonce share that memory). A real server needs to remember them only
             for the clock-skew window; the simulator keeps them.
Clock        ts must be within +-300 s of the server clock (STALE_TIMESTAMP).
JWT          HS256 only, header ``{"alg":"HS256","typ":"JWT"}``, claims in this
             order ``iss="emCA"``, ``aud="emCAServices42"``, ``sub=appCode``,
             ``iat``, ``exp=iat+60*validityInMins`` (integer seconds), ``jti=nonce``
             of the token call. Signing key: HMAC-SHA256(simulator secret,
             JSON ``[appCode,password,ClientID]`` compact), so rotating an
             application's password or ClientID invalidates its tokens at once. The
             simulator secret is ``routes(jwt_secret=...)`` or 32 random bytes kept
             in the process (tokens do not survive a restart: the client gets
             TOKEN_INVALID and fetches a new one). exp is honoured without leeway
             (TOKEN_EXPIRED when now >= exp); an iat more than 300 s ahead is TOKEN_INVALID.
Order        count_request(op) -> app from the path's appCode (unknown/other
             dialect: INVALID_CREDENTIALS) -> source address -> V4.2.3: Basic
             credentials, AuthKey, ts window, txn replay; V4.2.4+: JWT, expiry,
             nonce replay -> body parameters -> operation. The token call: X-Nonce
             present -> body parameters -> app from username -> source address ->
             password and ClientID -> nonce replay. A txn/nonce is consumed only
             once everything before it passed.
Bodies       compact UTF-8 JSON (``separators=(",", ":")``, ASCII-escaped), keys in
             the order written here; unknown request fields are ignored.
  token            -> {"accessToken","tokenType":"Bearer","expiresIn":<seconds>}
  getCAs           -> {"cas":[{"name","keyType","certificate":PEM,"sha256":hex of DER}]}
  getProfiles      -> {"profiles":[{"name","profileId","issuingCa","validityDays",
                        "keyTypes":[...],"manualApproval":bool}]}
  createCertificates {"profileName","subscriberId","applicationId"?(string|null),
                      "applicationIds"?([string|null, one per CSR]),"csrs":[PEM, 1..50]}
                      -> {"certificates":[record per CSR, in order]}; applicationId is
                      every CSR's, applicationIds each CSR's own (not both)
  getCertificate   {"serialNumber"} or {"requestId"} (exactly one) -> record
  getCertificateChain {"caName"} or {"serialNumber"} -> {"chain":[PEM issuing CA first]}
  revoke           {"serialNumber","reason":RFC 5280 name or code,"remarks"?} -> record
  getCrl           {"caName"} -> {"caName","crl":base64 of the DER CRL}
Records      issued/revoked: {"status":"issued"|"revoked","requestId"(null unless it
             came through approval),"serialNumber"(lower-case hex),"certificate":PEM,
             "chain":[PEM],"profileName","subscriberId","applicationId","issuedAt",
             "revokedAt","revocationReason"}; pending: {"status":"pending",
             "requestId","profileName","subscriberId","applicationId"}; rejected:
             {"status":"rejected","requestId"(null for a CSR refused at once),
             "errorCode":"CSR_REJECTED"|"REQUEST_REJECTED","errorMessage"}.
             Times are UTC ``YYYY-MM-DDTHH:MM:SSZ``.
Reasons      unspecified 0, keyCompromise 1, cACompromise 2, affiliationChanged 3,
             superseded 4, cessationOfOperation 5, privilegeWithdrawn 9,
             aACompromise 10 (names case-insensitive; codes as integers or decimal
             strings). certificateHold (6) and removeFromCRL (8): INVALID_PARAMETER.
Batches      profile and subscriber are checked before any CSR is signed. A CSR the
             CA refuses becomes a rejected record; when no CSR of the call was
             issued or held, the call fails with the first refusal (422 CSR_REJECTED).
             Any other error aborts the call (earlier CSRs of it stay issued).
No dedupe    applicationId is recorded, never used to return an existing
             certificate: nothing public says 4.2.x deduplicates.
Success      HTTP 200 ``{"status":"success","result":{...}}``.
Failure      ``{"status":"failure","errorCode":CODE,"errorMessage":text}``, see ERRORS.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from emca_sim.backend import Dialect, Issued, Pending, RegisteredApp, SimBackend, SimError, SimErrorKind

BASE_PATH = "/emCAServices42"
REST_PATH = BASE_PATH + "/rest"
TOKEN_PATH = BASE_PATH + "/auth/token"
MAX_CLOCK_SKEW = timedelta(seconds=300)
TOKEN_VALIDITY_MINS = (1, 60)
MAX_CSRS_PER_CALL = 50
MAX_BODY_BYTES = 1 << 20
JWT_ALGORITHM = "HS256"
JWT_ISSUER = "emCA"
JWT_AUDIENCE = "emCAServices42"
_ID_RE = re.compile(r"[A-Za-z0-9._-]{8,64}")
_TS_RE = re.compile(r"[0-9]{1,15}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: errorCode -> (HTTP status, errorMessage). A detail is appended as ": detail" where noted.
ERRORS: dict[str, tuple[int, str]] = {
    "INVALID_PARAMETER": (400, "Invalid parameter"),  # + detail (the field)
    "AUTH_REQUIRED": (401, "Missing or malformed authentication headers"),
    "INVALID_CREDENTIALS": (401, "Invalid credentials"),
    "INVALID_AUTH_KEY": (401, "Invalid AuthKey"),
    "STALE_TIMESTAMP": (401, "Request timestamp outside the allowed window"),
    "REPLAYED_TXN": (401, "Transaction id already used"),
    "REPLAYED_NONCE": (401, "Nonce already used"),
    "TOKEN_INVALID": (401, "Invalid token"),
    "TOKEN_EXPIRED": (401, "Token expired"),
    "SOURCE_NOT_ALLOWED": (403, "Request from an unregistered address"),
    "NOT_FOUND": (404, "Certificate or request not found"),
    "UNKNOWN_CA": (404, "CA not found"),
    "ALREADY_REVOKED": (409, "Certificate already revoked"),
    "UNKNOWN_PROFILE": (422, "Invalid Certificate Profile name"),
    "UNKNOWN_SUBSCRIBER": (422, "Invalid subscriber id"),
    "CSR_REJECTED": (422, "CSR rejected"),  # + detail (why)
    "INTERNAL_ERROR": (500, "Internal server error"),
}
_DETAILED = frozenset({"INVALID_PARAMETER", "CSR_REJECTED"})

#: how the CA core's errors are worded in this dialect
SIM_ERRORS: dict[SimErrorKind, str] = {
    SimErrorKind.MISSING_PARAMETER: "INVALID_PARAMETER",
    SimErrorKind.DECRYPTION_FAILED: "INVALID_CREDENTIALS",
    SimErrorKind.BAD_CREDENTIALS: "INVALID_CREDENTIALS",
    SimErrorKind.SOURCE_NOT_ALLOWED: "SOURCE_NOT_ALLOWED",
    SimErrorKind.SIGNATURE_INVALID: "INVALID_CREDENTIALS",
    SimErrorKind.AUTH_KEY_INVALID: "INVALID_AUTH_KEY",
    SimErrorKind.REPLAYED_TXN: "REPLAYED_TXN",
    SimErrorKind.UNKNOWN_PROFILE: "UNKNOWN_PROFILE",
    SimErrorKind.UNKNOWN_SUBSCRIBER: "UNKNOWN_SUBSCRIBER",
    SimErrorKind.UNKNOWN_CA: "UNKNOWN_CA",
    SimErrorKind.CSR_REJECTED: "CSR_REJECTED",
    SimErrorKind.NOT_FOUND: "NOT_FOUND",
    SimErrorKind.ALREADY_REVOKED: "ALREADY_REVOKED",
    SimErrorKind.INTERNAL: "INTERNAL_ERROR",
}

#: RFC 5280 CRLReason names accepted by revoke, with their codes
REVOCATION_REASONS: dict[str, int] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}
_REASON_BY_CODE = {code: name for name, code in REVOCATION_REASONS.items()}
_REASON_BY_LOWER = {name.lower(): name for name in REVOCATION_REASONS}

Clock = Callable[[], datetime]
Operation = Callable[[RegisteredApp, dict[str, Any]], dict[str, Any]]


class _Refused(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail


def routes(backend: SimBackend, *, jwt_secret: bytes | None = None, clock: Clock | None = None) -> list[BaseRoute]:
    """Starlette routes serving V4.2.3 and V4.2.4+ on ``backend``.

    ``jwt_secret``: the simulator's token secret (default: 32 random bytes for
    this process). ``clock``: the server's time (default: the system clock).
    """
    api = _Api(backend, jwt_secret if jwt_secret is not None else secrets.token_bytes(32), clock or _system_clock)
    operations: list[tuple[str, str, Operation]] = [
        ("getCAs", "GET", api.get_cas),
        ("getProfiles", "GET", api.get_profiles),
        ("createCertificates", "POST", api.create_certificates),
        ("getCertificate", "POST", api.get_certificate),
        ("getCertificateChain", "POST", api.get_certificate_chain),
        ("revoke", "POST", api.revoke),
        ("getCrl", "POST", api.get_crl),
    ]
    result: list[BaseRoute] = [Route(TOKEN_PATH, api.token, methods=["POST"])]
    for name, method, operation in operations:
        result.append(Route(f"{REST_PATH}/{name}/{{app_code}}", api.endpoint(name, operation), methods=[method]))
    return result


def _system_clock() -> datetime:
    return datetime.now(UTC)


def encode_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _success(result: dict[str, Any]) -> Response:
    return Response(encode_json({"status": "success", "result": result}), 200, media_type="application/json")


def _failure(code: str, detail: str = "") -> Response:
    status, message = ERRORS[code]
    if detail and code in _DETAILED:
        message = f"{message}: {detail}"
    body = {"status": "failure", "errorCode": code, "errorMessage": message}
    return Response(encode_json(body), status, media_type="application/json")


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _issued_record(issued: Issued, request_id: str | None = None) -> dict[str, Any]:
    return {
        "status": "revoked" if issued.revoked_at is not None else "issued",
        "requestId": request_id,
        "serialNumber": issued.serial,
        "certificate": issued.certificate_pem,
        "chain": list(issued.chain_pem),
        "profileName": issued.profile,
        "subscriberId": issued.subscriber_id,
        "applicationId": issued.application_id,
        "issuedAt": _time(issued.issued_at),
        "revokedAt": _time(issued.revoked_at),
        "revocationReason": issued.revocation_reason,
    }


def _pending_record(pending: Pending) -> dict[str, Any]:
    if pending.state == "approved" and pending.issued is not None:
        return _issued_record(pending.issued, pending.request_id)
    if pending.state == "rejected":
        return {
            "status": "rejected",
            "requestId": pending.request_id,
            "errorCode": "REQUEST_REJECTED",
            "errorMessage": pending.rejection or "Request rejected",
        }
    return {
        "status": "pending",
        "requestId": pending.request_id,
        "profileName": pending.profile,
        "subscriberId": pending.subscriber_id,
        "applicationId": pending.application_id,
    }


def _string(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _Refused("INVALID_PARAMETER", name)
    return value


def _application_ids(body: dict[str, Any], count: int, shared: str | None) -> list[str | None]:
    """Each CSR's applicationId: from ``applicationIds`` (one per CSR), else the call's ``applicationId``."""
    given = body.get("applicationIds")
    if given is None:
        return [shared] * count
    if shared is not None:
        raise _Refused("INVALID_PARAMETER", "applicationId and applicationIds: give one")
    if not isinstance(given, list) or len(given) != count:
        raise _Refused("INVALID_PARAMETER", "applicationIds: one per CSR")
    if not all(value is None or (isinstance(value, str) and value) for value in given):
        raise _Refused("INVALID_PARAMETER", "applicationIds")
    return given


def _one_of(body: dict[str, Any], first: str, second: str) -> tuple[str, str]:
    present = [name for name in (first, second) if body.get(name) is not None]
    if len(present) != 1:
        raise _Refused("INVALID_PARAMETER", f"exactly one of {first}, {second}")
    name = present[0]
    value = _string(body, name)
    assert value is not None
    return name, value


def _serial(value: str) -> str:
    serial = value.lower()
    if not re.fullmatch(r"[0-9a-f]{1,64}", serial):
        raise _Refused("INVALID_PARAMETER", "serialNumber")
    return serial


def revocation_reason(value: object) -> str:
    """The RFC 5280 reason name for a revoke call's ``reason`` (a name or a code)."""
    if isinstance(value, str) and value.lower() in _REASON_BY_LOWER:
        return _REASON_BY_LOWER[value.lower()]
    if isinstance(value, str) and value.isdecimal() and len(value) <= 3:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value in _REASON_BY_CODE:
        return _REASON_BY_CODE[value]
    raise _Refused("INVALID_PARAMETER", "reason")


@functools.lru_cache(maxsize=256)
def _networks(allowed: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """An application's source addresses as networks, parsed once per list (unparseable entries match nothing)."""
    networks = []
    for entry in allowed:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue
    return tuple(networks)


def _address_allowed(host: str | None, allowed: tuple[str, ...]) -> bool:
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _networks(allowed))


@dataclass
class _Api:
    backend: SimBackend
    jwt_secret: bytes
    clock: Clock

    # -- plumbing ------------------------------------------------------------
    def endpoint(self, name: str, operation: Operation) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            self.backend.count_request(name)
            try:
                app = self._authenticate(request, request.path_params["app_code"])
                body = await self._body(request) if request.method == "POST" else {}
                return _success(operation(app, body))
            except _Refused as refused:
                return _failure(refused.code, refused.detail)
            except SimError as error:
                return _failure(SIM_ERRORS.get(error.kind, "INTERNAL_ERROR"), error.detail)

        handle.__name__ = name
        return handle

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise _Refused("INVALID_PARAMETER", "body too large")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise _Refused("INVALID_PARAMETER", "body is not JSON") from None
        if not isinstance(body, dict):
            raise _Refused("INVALID_PARAMETER", "body is not a JSON object")
        return body

    def _application(self, request: Request, username: str, *, dialect: Dialect | None = None) -> RegisteredApp:
        app = self.backend.application(username)
        if app is None or app.dialect not in (Dialect.V4_2_3, Dialect.V4_2_4) or (dialect and app.dialect != dialect):
            raise _Refused("INVALID_CREDENTIALS")
        if not _address_allowed(request.client.host if request.client else None, app.source_addresses):
            raise _Refused("SOURCE_NOT_ALLOWED")
        return app

    def _consume(self, app: RegisteredApp, value: str, code: str) -> None:
        if not self.backend.remember_txn(app.username, value):
            raise _Refused(code)

    def _authenticate(self, request: Request, app_code: str) -> RegisteredApp:
        app = self._application(request, app_code)
        if app.dialect == Dialect.V4_2_3:
            self._check_auth_key(request, app)
        else:
            self._check_bearer(request, app)
        return app

    # -- V4.2.3: AuthKey ------------------------------------------------------
    def _check_auth_key(self, request: Request, app: RegisteredApp) -> None:
        headers = request.headers
        authorization, auth_key = headers.get("authorization", ""), headers.get("authkey")
        ts, txn = headers.get("ts"), headers.get("txn")
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic" or not auth_key or ts is None or txn is None or not _ID_RE.fullmatch(txn):
            raise _Refused("AUTH_REQUIRED")
        try:
            username, colon, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise _Refused("AUTH_REQUIRED") from None
        if not colon or username != app.username or not hmac.compare_digest(password.encode(), app.password.encode()):
            raise _Refused("INVALID_CREDENTIALS")
        if not app.client_id:
            raise _Refused("INVALID_CREDENTIALS")
        expected = hashlib.sha256((app.client_id + ts + txn).encode("utf-8")).hexdigest()
        if not hmac.compare_digest(auth_key.encode(), expected.encode()):
            raise _Refused("INVALID_AUTH_KEY")
        if not _TS_RE.fullmatch(ts):
            raise _Refused("STALE_TIMESTAMP")
        sent = _EPOCH + timedelta(milliseconds=int(ts))
        if abs(self.clock() - sent) > MAX_CLOCK_SKEW:
            raise _Refused("STALE_TIMESTAMP")
        self._consume(app, txn, "REPLAYED_TXN")

    # -- V4.2.4+: JWT ---------------------------------------------------------
    def _signing_key(self, app: RegisteredApp) -> bytes:
        identity = encode_json([app.username, app.password, app.client_id or ""])
        return hmac.new(self.jwt_secret, identity, hashlib.sha256).digest()

    def _check_bearer(self, request: Request, app: RegisteredApp) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        nonce = request.headers.get("x-nonce")
        if scheme.lower() != "bearer" or not token or nonce is None or not _ID_RE.fullmatch(nonce):
            raise _Refused("AUTH_REQUIRED")
        try:
            claims = jwt.decode(
                token.strip(),
                self._signing_key(app),
                algorithms=[JWT_ALGORITHM],
                audience=JWT_AUDIENCE,
                issuer=JWT_ISSUER,
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "require": ["exp", "iat", "sub"]},
            )
        except jwt.InvalidTokenError:
            raise _Refused("TOKEN_INVALID") from None
        exp, iat = claims.get("exp"), claims.get("iat")
        if claims.get("sub") != app.username or not isinstance(exp, int) or not isinstance(iat, int):
            raise _Refused("TOKEN_INVALID")
        now = self.clock()
        if _EPOCH + timedelta(seconds=iat) > now + MAX_CLOCK_SKEW:
            raise _Refused("TOKEN_INVALID")
        if now >= _EPOCH + timedelta(seconds=exp):
            raise _Refused("TOKEN_EXPIRED")
        self._consume(app, nonce, "REPLAYED_NONCE")

    async def token(self, request: Request) -> Response:
        self.backend.count_request("token")
        try:
            nonce = request.headers.get("x-nonce")
            if nonce is None or not _ID_RE.fullmatch(nonce):
                raise _Refused("AUTH_REQUIRED")
            body = await self._body(request)
            username, password, client_id = (_string(body, name) for name in ("username", "password", "clientId"))
            assert username is not None and password is not None and client_id is not None
            validity = body.get("validityInMins")
            low, high = TOKEN_VALIDITY_MINS
            if not isinstance(validity, int) or isinstance(validity, bool) or not low <= validity <= high:
                raise _Refused("INVALID_PARAMETER", "validityInMins")
            app = self._application(request, username, dialect=Dialect.V4_2_4)
            if not (
                hmac.compare_digest(password.encode(), app.password.encode())
                and app.client_id
                and hmac.compare_digest(client_id.encode(), app.client_id.encode())
            ):
                raise _Refused("INVALID_CREDENTIALS")
            self._consume(app, nonce, "REPLAYED_NONCE")
            iat = (self.clock() - _EPOCH) // timedelta(seconds=1)
            claims = {
                "iss": JWT_ISSUER,
                "aud": JWT_AUDIENCE,
                "sub": app.username,
                "iat": iat,
                "exp": iat + 60 * validity,
                "jti": nonce,
            }
            access_token = jwt.encode(claims, self._signing_key(app), algorithm=JWT_ALGORITHM)
            return _success({"accessToken": access_token, "tokenType": "Bearer", "expiresIn": 60 * validity})
        except _Refused as refused:
            return _failure(refused.code, refused.detail)
        except SimError as error:
            return _failure(SIM_ERRORS.get(error.kind, "INTERNAL_ERROR"), error.detail)

    # -- operations -----------------------------------------------------------
    def get_cas(self, app: RegisteredApp, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "cas": [
                {"name": ca.name, "keyType": ca.key_type, "certificate": ca.certificate_pem, "sha256": ca.sha256}
                for ca in self.backend.cas()
            ]
        }

    def get_profiles(self, app: RegisteredApp, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "profiles": [
                {
                    "name": profile.name,
                    "profileId": profile.profile_id,
                    "issuingCa": profile.issuing_ca,
                    "validityDays": profile.validity_days,
                    "keyTypes": list(profile.key_types),
                    "manualApproval": profile.manual_approval,
                }
                for profile in self.backend.profiles()
            ]
        }

    def create_certificates(self, app: RegisteredApp, body: dict[str, Any]) -> dict[str, Any]:
        profile, subscriber_id = _string(body, "profileName"), _string(body, "subscriberId")
        application_id = _string(body, "applicationId", required=False)
        csrs = body.get("csrs")
        if not isinstance(csrs, list) or not 1 <= len(csrs) <= MAX_CSRS_PER_CALL:
            raise _Refused("INVALID_PARAMETER", "csrs")
        if not all(isinstance(csr, str) and csr for csr in csrs):
            raise _Refused("INVALID_PARAMETER", "csrs")
        application_ids = _application_ids(body, len(csrs), application_id)
        assert profile is not None and subscriber_id is not None
        if self.backend.profile(profile) is None:
            raise _Refused("UNKNOWN_PROFILE")
        if not self.backend.subscriber_exists(subscriber_id):
            raise _Refused("UNKNOWN_SUBSCRIBER")
        records: list[dict[str, Any]] = []
        first_refusal: SimError | None = None
        for csr, csr_application_id in zip(csrs, application_ids, strict=True):
            try:
                outcome = self.backend.issue(
                    profile=profile,
                    subscriber_id=subscriber_id,
                    csr_pem=csr,
                    application_id=csr_application_id,
                    dedupe_by_application_id=False,
                )
            except SimError as error:
                if error.kind != SimErrorKind.CSR_REJECTED:
                    raise
                first_refusal = first_refusal or error
                message = ERRORS["CSR_REJECTED"][1]
                records.append(
                    {
                        "status": "rejected",
                        "requestId": None,
                        "errorCode": "CSR_REJECTED",
                        "errorMessage": f"{message}: {error.detail}" if error.detail else message,
                    }
                )
                continue
            records.append(_issued_record(outcome) if isinstance(outcome, Issued) else _pending_record(outcome))
        if first_refusal is not None and all(record["status"] == "rejected" for record in records):
            raise first_refusal
        return {"certificates": records}

    def get_certificate(self, app: RegisteredApp, body: dict[str, Any]) -> dict[str, Any]:
        name, value = _one_of(body, "serialNumber", "requestId")
        if name == "serialNumber":
            return _issued_record(self.backend.certificate(_serial(value)))
        return _pending_record(self.backend.pending(value))

    def get_certificate_chain(self, app: RegisteredApp, body: dict[str, Any]) -> dict[str, Any]:
        name, value = _one_of(body, "caName", "serialNumber")
        if name == "caName":
            return {"chain": list(self.backend.chain(value))}
        return {"chain": list(self.backend.certificate(_serial(value)).chain_pem)}

    def revoke(self, app: RegisteredApp, body: dict[str, Any]) -> dict[str, Any]:
        serial = _string(body, "serialNumber")
        assert serial is not None
        if "reason" not in body:
            raise _Refused("INVALID_PARAMETER", "reason")
        reason = revocation_reason(body["reason"])
        remarks = body.get("remarks")
        if remarks is not None and not isinstance(remarks, str):
            raise _Refused("INVALID_PARAMETER", "remarks")
        return _issued_record(self.backend.revoke(_serial(serial), reason))

    def get_crl(self, app: RegisteredApp, body: dict[str, Any]) -> dict[str, Any]:
        ca_name = _string(body, "caName")
        assert ca_name is not None
        return {"caName": ca_name, "crl": base64.b64encode(self.backend.crl_der(ca_name)).decode("ascii")}
