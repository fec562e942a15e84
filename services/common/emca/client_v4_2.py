"""`EmcaConnection` over the 4.2.x REST API, V4.2.3 and V4.2.4+ (``dialects/v4_2.py`` does the wire format).

- V4.2.3 authenticates every call with a fresh ``txn`` (the builder makes one per request).
- V4.2.4+ fetches a JWT once and reuses it (``TokenCache``: renewed 60 s before expiry, or
  half-way through a short lifetime); concurrent calls share one token fetch. A token emCA
  refuses (TOKEN_INVALID / TOKEN_EXPIRED) is dropped and the call retried once with a new one.
- A REPLAYED_TXN / REPLAYED_NONCE refusal happens before the operation, so the call is retried
  once with a new id; after that it is transient.
- No applicationId dedupe (none documented): the issuer must reconcile or report
  POSSIBLE_DUPLICATE (DESIGN.md "Exactly-once effect").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import httpx

from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import RevocationReason
from services.common.emca.dialects import v4_2 as wire
from services.common.emca.support import crl_der_from, probe_application_id, probe_csr_pem, probe_went_through
from services.common.emca.transport import HttpTransport
from services.common.emca.types import (
    BatchOutcome,
    ConnectorFaultError,
    EmcaEndpoint,
    EmcaError,
    EmcaVersion,
    FailureKind,
    HttpOptions,
    IssuedCertificate,
    IssueOutcome,
    IssuingCa,
    PendingIssuance,
    ProfileInfo,
    RequestPermanentError,
    Revocation,
    SubscriberProbe,
    error_for,
)

T = TypeVar("T")

#: errorCode -> (kind, certrail code, hint); transient ones are CA_UNREACHABLE whatever the code
_CODES: dict[str, tuple[FailureKind, ErrorCode, str]] = {
    "INVALID_PARAMETER": (FailureKind.CONNECTOR_FAULT, ErrorCode.CA_PROTOCOL_ERROR, "emCA and the 4.2.x dialect disagree"),
    "AUTH_REQUIRED": (
        FailureKind.CONNECTOR_FAULT,
        ErrorCode.CA_AUTH_FAILED,
        "emCA expects the other 4.2.x authentication: check the emCA version (V4.2.3 or V4.2.4+)",
    ),
    "INVALID_CREDENTIALS": (FailureKind.CONNECTOR_FAULT, ErrorCode.CA_AUTH_FAILED, "wrong username, password or ClientID"),
    "INVALID_AUTH_KEY": (FailureKind.CONNECTOR_FAULT, ErrorCode.CA_AUTH_FAILED, "the AuthKey does not match: check the ClientID"),
    "STALE_TIMESTAMP": (FailureKind.CONNECTOR_FAULT, ErrorCode.CA_AUTH_FAILED, "this host's clock is off: fix its time sync"),
    "SOURCE_NOT_ALLOWED": (FailureKind.CONNECTOR_FAULT, ErrorCode.CA_AUTH_FAILED, "emCA does not allow this source address"),
    "TOKEN_INVALID": (FailureKind.CONNECTOR_FAULT, ErrorCode.CA_AUTH_FAILED, "emCA refused a fresh token"),
    "TOKEN_EXPIRED": (FailureKind.CONNECTOR_FAULT, ErrorCode.CA_AUTH_FAILED, "emCA refused a fresh token"),
    "UNKNOWN_SUBSCRIBER": (FailureKind.CONNECTOR_FAULT, ErrorCode.SUBSCRIBER_INVALID, ""),
    "UNKNOWN_CA": (FailureKind.CONNECTOR_FAULT, ErrorCode.ISSUING_CA_NOT_FOUND, ""),
    "UNKNOWN_PROFILE": (FailureKind.REQUEST_PERMANENT, ErrorCode.CA_PROFILE_NOT_FOUND, ""),
    "CSR_REJECTED": (FailureKind.REQUEST_PERMANENT, ErrorCode.CA_REJECTED, ""),
    "NOT_FOUND": (FailureKind.REQUEST_PERMANENT, ErrorCode.CERTIFICATE_NOT_FOUND, ""),
    "ALREADY_REVOKED": (FailureKind.REQUEST_PERMANENT, ErrorCode.REVOCATION_REJECTED, ""),
}
_REPLAYED = frozenset({"REPLAYED_TXN", "REPLAYED_NONCE"})


def map_failure(failure: wire.EmcaFailure) -> EmcaError:
    message = f"emCA: {failure.code}: {failure.message}"
    common = {"detail": failure.code, "http_status": failure.http_status, "retry_after": failure.retry_after}
    if failure.category is wire.FailureCategory.TRANSIENT:
        return error_for(FailureKind.TRANSIENT, ErrorCode.CA_UNREACHABLE, message, **common)  # type: ignore[arg-type]
    if failure.code in _CODES:
        kind, code, hint = _CODES[failure.code]
        return error_for(kind, code, message + (f" ({hint})" if hint else ""), **common)  # type: ignore[arg-type]
    hint = " (not a 4.2.x emCA answer: check the base URL and version)"
    return error_for(FailureKind.CONNECTOR_FAULT, ErrorCode.CA_PROTOCOL_ERROR, message + hint, **common)  # type: ignore[arg-type]


def _issued(record: wire.IssuedCertificate) -> IssuedCertificate:
    return IssuedCertificate(
        serial=format(int(record.serial, 16), "x"),
        certificate_pem=record.certificate_pem,
        chain_pem=record.chain_pem,
        request_id=record.request_id,
        revoked=record.revoked,
    )


def _rejected(record: wire.RejectedRequest) -> RequestPermanentError:
    if record.code == "REQUEST_REJECTED":
        return RequestPermanentError(
            ErrorCode.APPROVAL_REJECTED, f"emCA rejected request {record.request_id}: {record.message}", detail=record.code
        )
    return RequestPermanentError(ErrorCode.CA_REJECTED, f"emCA: {record.code}: {record.message}", detail=record.code)


def _outcome(record: wire.Outcome) -> IssueOutcome:
    if isinstance(record, wire.PendingRequest):
        return PendingIssuance(request_id=record.request_id)
    if isinstance(record, wire.RejectedRequest):
        raise _rejected(record)
    return _issued(record)


def _batch_outcome(record: wire.Outcome) -> BatchOutcome:
    if isinstance(record, wire.RejectedRequest):
        return _rejected(record)
    return _outcome(record)


def _profile(entry: wire.ProfileEntry) -> ProfileInfo:
    return ProfileInfo(
        name=entry.name,
        profile_id=entry.profile_id,
        issuing_ca=entry.issuing_ca,
        validity_days=entry.validity_days,
        key_types=entry.key_types,
        manual_approval=entry.manual_approval,
    )


class V42Connection:
    """One 4.2.x emCA application. Build it with ``services.common.emca.client.connect``."""

    def __init__(
        self,
        endpoint: EmcaEndpoint,
        options: HttpOptions,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if endpoint.client_id is None:
            raise ValueError("a 4.2.x connection needs the ClientID")
        self._version = EmcaVersion(endpoint.version)
        wire_version = wire.Version.V4_2_3 if self._version is EmcaVersion.V4_2_3 else wire.Version.V4_2_4
        self._clock = clock or (lambda: datetime.now(UTC))
        credentials = wire.Credentials(app_code=endpoint.username, password=endpoint.password, client_id=endpoint.client_id)
        self._builder = wire.RequestBuilder(wire_version, credentials, clock=self._clock)
        self._http = HttpTransport(endpoint.base_url, endpoint.ca_bundle_pem, options, transport=transport)
        self._token_validity = options.token_validity_mins
        self._tokens = wire.TokenCache()
        self._token_lock = asyncio.Lock()

    @property
    def version(self) -> EmcaVersion:
        return self._version

    async def _send(self, request: wire.HttpRequest) -> wire.HttpResponse:
        raw = await self._http.send(request.method, request.path, request.headers, request.body)
        return wire.HttpResponse(raw.status, raw.body, raw.headers)

    async def _token(self) -> str | None:
        if self._version is EmcaVersion.V4_2_3:
            return None
        value = self._tokens.current(self._clock())
        if value is not None:
            return value
        async with self._token_lock:  # one fetch for every caller waiting on it
            value = self._tokens.current(self._clock())
            if value is not None:
                return value
            request = self._builder.token(validity_mins=self._token_validity)
            sent_at = self._clock()
            response = await self._send(request)
            try:
                token = wire.parse_token(response, requested_at=sent_at)
            except wire.EmcaFailure as failure:
                raise map_failure(failure) from None
            self._tokens.store(token)
            return token.value

    async def _call(self, build: Callable[[str | None], wire.HttpRequest], parse: Callable[[wire.HttpResponse], T]) -> T:
        token_retried = replay_retried = False
        while True:
            token = await self._token()
            response = await self._send(build(token))
            try:
                return parse(response)
            except wire.EmcaFailure as failure:
                if failure.category is wire.FailureCategory.TOKEN_REJECTED and not token_retried:
                    self._tokens.invalidate(token)
                    token_retried = True
                    continue
                if failure.code in _REPLAYED and not replay_retried:
                    replay_retried = True
                    continue
                raise map_failure(failure) from None

    async def check_connection(self) -> None:
        await self._call(lambda token: self._builder.get_cas(token=token), wire.parse_cas)

    async def list_issuing_cas(self, *, via_profiles: Sequence[str] = ()) -> tuple[IssuingCa, ...]:
        entries = await self._call(lambda token: self._builder.get_cas(token=token), wire.parse_cas)
        return tuple(IssuingCa(e.name, e.certificate_pem, e.sha256.lower()) for e in entries)

    async def _profiles(self) -> tuple[wire.ProfileEntry, ...]:
        return await self._call(lambda token: self._builder.get_profiles(token=token), wire.parse_profiles)

    async def list_profiles(self, issuing_ca: str) -> tuple[ProfileInfo, ...]:
        return tuple(_profile(e) for e in await self._profiles() if e.issuing_ca == issuing_ca)

    async def profile_info(self, profile_name: str) -> ProfileInfo:
        for entry in await self._profiles():
            if entry.name == profile_name:
                return _profile(entry)
        raise RequestPermanentError(
            ErrorCode.CA_PROFILE_NOT_FOUND, f"emCA has no certificate profile named {profile_name!r}", detail="UNKNOWN_PROFILE"
        )

    async def check_subscriber(self, *, profile_name: str, subscriber_id: str) -> SubscriberProbe:
        application_id = probe_application_id()
        csr = probe_csr_pem()

        def build(token: str | None) -> wire.HttpRequest:
            return self._builder.create_certificates(
                profile_name=profile_name, subscriber_id=subscriber_id, csrs=[csr], application_id=application_id, token=token
            )

        try:
            (record,) = await self._call(build, wire.parse_create_certificates)
            outcome = _outcome(record)
        except RequestPermanentError as error:
            if error.detail == "CSR_REJECTED":
                return SubscriberProbe(note=f"subscriber accepted; the probe CSR was refused as intended ({error.message})")
            raise
        return await probe_went_through(self, outcome)

    async def submit_csr(self, *, csr_pem: str, profile_name: str, subscriber_id: str, application_id: str) -> IssueOutcome:
        def build(token: str | None) -> wire.HttpRequest:
            return self._builder.create_certificates(
                profile_name=profile_name, subscriber_id=subscriber_id, csrs=[csr_pem], application_id=application_id, token=token
            )

        records = await self._call(build, wire.parse_create_certificates)
        if len(records) != 1:
            raise ConnectorFaultError(ErrorCode.CA_PROTOCOL_ERROR, f"createCertificates answered {len(records)} records for one CSR")
        return _outcome(records[0])

    @property
    def max_csrs_per_call(self) -> int:
        return wire.MAX_CSRS_PER_CALL

    async def submit_csrs(
        self, *, csr_pems: Sequence[str], profile_name: str, subscriber_id: str, application_ids: Sequence[str | None]
    ) -> tuple[BatchOutcome, ...]:
        def build(token: str | None) -> wire.HttpRequest:
            return self._builder.create_certificates(
                profile_name=profile_name, subscriber_id=subscriber_id, csrs=csr_pems, application_ids=application_ids,
                token=token,
            )

        records = await self._call(build, wire.parse_create_certificates)
        if len(records) != len(csr_pems):
            raise ConnectorFaultError(
                ErrorCode.CA_PROTOCOL_ERROR, f"createCertificates answered {len(records)} records for {len(csr_pems)} CSRs"
            )
        return tuple(_batch_outcome(record) for record in records)

    async def poll_request(self, request_id: str) -> IssueOutcome:
        record = await self._call(
            lambda token: self._builder.get_certificate(request_id=request_id, token=token), wire.parse_certificate
        )
        return _outcome(record)

    async def get_certificate(self, serial: str) -> IssuedCertificate:
        record = await self._call(lambda token: self._builder.get_certificate(serial=serial, token=token), wire.parse_certificate)
        if not isinstance(record, wire.IssuedCertificate):
            raise ConnectorFaultError(ErrorCode.CA_PROTOCOL_ERROR, "getCertificate by serial answered no certificate")
        return _issued(record)

    async def revoke(self, serial: str, reason: RevocationReason, *, remarks: str = "") -> Revocation:
        def build(token: str | None) -> wire.HttpRequest:
            return self._builder.revoke(serial=serial, reason=reason, remarks=remarks, token=token)

        try:
            record = await self._call(build, wire.parse_revoke)
        except RequestPermanentError as error:
            if error.detail == "ALREADY_REVOKED":
                return Revocation(serial=format(int(wire.normalise_serial(serial), 16), "x"), reason=reason, already_revoked=True)
            raise
        return Revocation(serial=_issued(record).serial, reason=reason)

    async def get_chain(self, issuing_ca: str) -> tuple[str, ...]:
        return await self._call(
            lambda token: self._builder.get_certificate_chain(ca_name=issuing_ca, token=token), wire.parse_chain
        )

    async def get_crl(self, issuing_ca: str, *, distribution_point: str | None = None) -> bytes:
        if distribution_point is not None:
            return crl_der_from(await self._http.get_url(distribution_point), distribution_point)
        return await self._call(lambda token: self._builder.get_crl(ca_name=issuing_ca, token=token), wire.parse_crl)

    async def aclose(self) -> None:
        await self._http.aclose()
