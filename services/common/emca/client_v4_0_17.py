"""`EmcaConnection` over the V4.0.17 "Open API" (``dialects/v4_0_17.py`` does the wire format).

What this dialect lacks, and how the connection makes up for it:
- no CA listing: `list_issuing_cas` reads the issuing CA from the profile information of the
  profiles it is given; `list_profiles` uses getCertificateProfileList, which takes the CA name
  (exact) and answers an empty list for an unknown CA; `get_chain` is the ``issuingCAChain`` of
  the profile information of one of the CA's profiles.
- no CRL method: `get_crl` needs the distribution point URL (from an issued certificate).
- getCertificate / getCertificateByRequestID return the leaf alone (``chain_pem`` empty): the
  issuer verifies it against the connector's pinned chain. createCertificateP7B (used by
  `submit_csr`) returns the chain.
- applicationId dedupe is documented: submitting an issuance id again returns its certificate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import httpx

from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import RevocationReason
from services.common.emca.dialects import v4_0_17 as wire
from services.common.emca.support import (
    certificate_sha256,
    crl_der_from,
    probe_application_id,
    probe_csr_pem,
    probe_went_through,
)
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
    UnsupportedOperation,
    error_for,
)

T = TypeVar("T")
CONNECTION_CHECK_PAYLOAD = "certrail connection check"

#: what the operator should read for each documented refusal
_HINTS: dict[wire.FailureReason, str] = {
    wire.FailureReason.AUTHENTICATION_FAILED: "wrong username or password, or a source address emCA does not allow",
    wire.FailureReason.DECRYPTION_FAILED: "emCA could not decrypt the request: check the AES key",
    wire.FailureReason.SIGNATURE_FAILED: "emCA did not accept the request signature: check the PFX",
    wire.FailureReason.INVALID_PARAMETER: "emCA and the V4.0.17 dialect disagree on the request format",
    wire.FailureReason.HTTP_ERROR: "not a V4.0.17 emCA answer: check the base URL and version",
    wire.FailureReason.MALFORMED_RESPONSE: "not a V4.0.17 emCA answer: check the base URL and version",
}


def map_failure(failure: wire.EmcaFailure) -> EmcaError:
    kind = FailureKind(failure.category.value)
    code = failure.error_code or ErrorCode.CA_PROTOCOL_ERROR
    hint = _HINTS.get(failure.reason)
    message = f"emCA: {failure.message}" + (f" ({hint})" if hint else "")
    return error_for(
        kind, code, message, detail=failure.reason.value, http_status=failure.http_status, retry_after=failure.retry_after
    )


def _issued(result: wire.IssuedCertificate) -> IssuedCertificate:
    return IssuedCertificate(
        serial=result.serial, certificate_pem=result.certificate_pem, chain_pem=result.chain_pem, request_id=result.request_id
    )


def _outcome(result: wire.IssuedCertificate | wire.PendingApproval) -> IssueOutcome:
    if isinstance(result, wire.PendingApproval):
        return PendingIssuance(request_id=result.request_id, message=result.message)
    return _issued(result)


class V4017Connection:
    """One V4.0.17 emCA application. Build it with ``services.common.emca.client.connect``."""

    def __init__(
        self,
        endpoint: EmcaEndpoint,
        options: HttpOptions,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if endpoint.aes_key is None or endpoint.pfx is None:
            raise ValueError("a V4.0.17 connection needs the AES key and the PFX")
        try:
            signer = wire.load_pfx(endpoint.pfx, endpoint.pfx_password)
        except wire.PfxError as exc:
            raise ConnectorFaultError(ErrorCode.CA_SIGNATURE_FAILED, f"the uploaded PFX cannot be used: {exc}") from None
        try:
            aes_key = wire.parse_aes_key(endpoint.aes_key)
        except ValueError as exc:
            raise ConnectorFaultError(ErrorCode.CA_DECRYPTION_FAILED, f"the AES key cannot be used: {exc}") from None
        credentials = wire.Credentials(username=endpoint.username, password=endpoint.password, aes_key=aes_key, signer=signer)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._requests = wire.V4017Requests(credentials, clock=self._clock)
        self._http = HttpTransport(endpoint.base_url, endpoint.ca_bundle_pem, options, transport=transport)

    @property
    def version(self) -> EmcaVersion:
        return EmcaVersion.V4_0_17

    async def _call(self, request: wire.EmcaRequest, parse: Callable[[int, dict[str, str], bytes], T]) -> T:
        raw = await self._http.send("POST", request.path, request.headers, request.body)
        try:
            return parse(raw.status, raw.headers_dict(), raw.body)
        except wire.EmcaFailure as failure:
            raise map_failure(failure) from None

    def _parse_with_clock(self, parse: Callable[..., T]) -> Callable[[int, dict[str, str], bytes], T]:
        return lambda status, headers, body: parse(status, headers, body, now=self._clock())

    async def check_connection(self) -> None:
        # Authenticated and signed, read-only; an unknown CA name answers an empty list.
        request = self._requests.get_certificate_profile_list(CONNECTION_CHECK_PAYLOAD)
        await self._call(request, self._parse_with_clock(wire.parse_profile_list_response))

    async def list_issuing_cas(self, *, via_profiles: Sequence[str] = ()) -> tuple[IssuingCa, ...]:
        found: dict[str, IssuingCa] = {}
        for name in dict.fromkeys(via_profiles):
            try:
                info = await self.profile_info(name)
            except RequestPermanentError:
                continue  # an unknown profile implies no CA
            if info.issuing_ca and info.issuing_ca_chain_pem and info.issuing_ca not in found:
                pem = info.issuing_ca_chain_pem[0]
                found[info.issuing_ca] = IssuingCa(info.issuing_ca, pem, certificate_sha256(pem))
        return tuple(found.values())

    async def list_profiles(self, issuing_ca: str) -> tuple[ProfileInfo, ...]:
        request = self._requests.get_certificate_profile_list(issuing_ca)
        summaries = await self._call(request, self._parse_with_clock(wire.parse_profile_list_response))
        return tuple(ProfileInfo(name=s.name, profile_id=s.profile_id, issuing_ca=issuing_ca) for s in summaries)

    async def profile_info(self, profile_name: str) -> ProfileInfo:
        request = self._requests.get_profile_info(profile_name)
        details = await self._call(request, self._parse_with_clock(wire.parse_profile_info_response))
        return ProfileInfo(
            name=details.name,
            profile_id=details.profile_id,
            issuing_ca=details.issuing_ca,
            validity_days=details.validity_days,
            key_types=details.key_types,
            manual_approval=details.manual_approval,
            issuing_ca_chain_pem=details.issuing_ca_chain_pem,
        )

    async def check_subscriber(self, *, profile_name: str, subscriber_id: str) -> SubscriberProbe:
        request = self._requests.create_certificate(
            profile_name=profile_name, subscriber_id=subscriber_id, application_id=probe_application_id(), csr_pem=probe_csr_pem()
        )
        try:
            outcome = await self._call(request, self._parse_with_clock(wire.parse_issue_response))
        except RequestPermanentError as error:
            if error.detail == wire.FailureReason.CSR_REJECTED.value:
                return SubscriberProbe(note=f"subscriber accepted; the probe CSR was refused as intended ({error.message})")
            raise
        return await probe_went_through(self, _outcome(outcome))

    @property
    def max_csrs_per_call(self) -> int:
        return 1  # V4.0.17 has no batch call

    async def submit_csrs(
        self, *, csr_pems: Sequence[str], profile_name: str, subscriber_id: str, application_ids: Sequence[str | None]
    ) -> tuple[BatchOutcome, ...]:
        if len(csr_pems) != 1 or len(application_ids) != 1 or application_ids[0] is None:
            raise UnsupportedOperation("V4.0.17 takes one CSR per call, with its applicationId")
        return (await self.submit_csr(csr_pem=csr_pems[0], profile_name=profile_name, subscriber_id=subscriber_id,
                                      application_id=application_ids[0]),)

    async def submit_csr(self, *, csr_pem: str, profile_name: str, subscriber_id: str, application_id: str) -> IssueOutcome:
        request = self._requests.create_certificate(
            profile_name=profile_name, subscriber_id=subscriber_id, application_id=application_id, csr_pem=csr_pem, p7b=True
        )
        return _outcome(await self._call(request, self._parse_with_clock(wire.parse_issue_response)))

    async def poll_request(self, request_id: str) -> IssueOutcome:
        request = self._requests.get_certificate_by_request_id(request_id)
        return _outcome(await self._call(request, self._parse_with_clock(wire.parse_issue_response)))

    async def get_certificate(self, serial: str) -> IssuedCertificate:
        result = await self._call(self._requests.get_certificate(serial), self._parse_with_clock(wire.parse_certificate_response))
        if isinstance(result, wire.PendingApproval):
            raise ConnectorFaultError(ErrorCode.CA_PROTOCOL_ERROR, "getCertificate answered a pending request")
        return _issued(result)

    async def revoke(self, serial: str, reason: RevocationReason, *, remarks: str = "") -> Revocation:
        request = self._requests.revoke(serial, reason.value, remarks or None)

        def parse(status: int, headers: dict[str, str], body: bytes) -> wire.Revocation:
            return wire.parse_revoke_response(status, headers, body, serial=serial, reason=reason.value, now=self._clock())

        result = await self._call(request, parse)
        return Revocation(serial=result.serial, reason=reason, already_revoked=result.already_revoked)

    async def get_chain(self, issuing_ca: str) -> tuple[str, ...]:
        profiles = await self.list_profiles(issuing_ca)
        if not profiles:
            raise ConnectorFaultError(
                ErrorCode.ISSUING_CA_NOT_FOUND, f"emCA lists no certificate profile for the issuing CA {issuing_ca!r}"
            )
        info = await self.profile_info(profiles[0].name)
        if not info.issuing_ca_chain_pem:
            raise ConnectorFaultError(ErrorCode.CA_PROTOCOL_ERROR, f"the profile information of {info.name!r} has no CA chain")
        return info.issuing_ca_chain_pem

    async def get_crl(self, issuing_ca: str, *, distribution_point: str | None = None) -> bytes:
        if distribution_point is None:
            raise UnsupportedOperation("V4.0.17 has no CRL method: give the CRL distribution point of a certificate")
        return crl_der_from(await self._http.get_url(distribution_point), distribution_point)

    async def aclose(self) -> None:
        await self._http.aclose()

