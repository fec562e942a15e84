"""The emCA connection: one interface over every dialect, its typed results and errors.

`EmcaConnection` is what the issuer and the connector registry talk to. The real
implementation (``services.common.emca.client.connect``) wraps the sans-IO
dialect modules (``dialects/v4_0_17.py``, ``dialects/v4_2.py``) in httpx; the
fake (``services.common.emca.fake``) keeps a CA in memory for unit tests. Both
pass the one contract test class (``tests/unit/emca_contract.py``).

Every failure reaches the caller as an `EmcaError` of one of the three kinds of
DESIGN.md ("Three kinds of failure"), each with one stable `ErrorCode`:

- `RequestPermanentError`: emCA refused *this* request (CA_REJECTED,
  CA_PROFILE_NOT_FOUND, CERTIFICATE_NOT_FOUND, APPROVAL_REJECTED,
  REVOCATION_REJECTED): fail it, never retry.
- `ConnectorFaultError`: the connector is misconfigured (CA_AUTH_FAILED,
  CA_DECRYPTION_FAILED, CA_SIGNATURE_FAILED, CA_TLS_UNTRUSTED,
  SUBSCRIBER_INVALID, ISSUING_CA_NOT_FOUND, CA_PROTOCOL_ERROR): keep the
  requests queued, mark the connector misconfigured, alert.
- `TransientError` (always CA_UNREACHABLE): connect errors, timeouts, 5xx,
  429, "Internal server error": back off (at least ``retry_after`` seconds when
  emCA said so) and retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Protocol, runtime_checkable

from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import RevocationReason

__all__ = [
    "ConnectorFaultError",
    "EmcaConnection",
    "EmcaEndpoint",
    "EmcaError",
    "EmcaVersion",
    "FailureKind",
    "POOL_CAP",
    "HttpOptions",
    "BatchOutcome",
    "IssueOutcome",
    "IssuedCertificate",
    "IssuingCa",
    "PendingIssuance",
    "ProfileInfo",
    "RequestPermanentError",
    "Revocation",
    "SubscriberProbe",
    "TransientError",
    "UnsupportedOperation",
    "error_for",
]


class EmcaVersion(StrEnum):
    """The emCA API versions a connector can speak (as the CERTInext screen names them)."""

    V4_0_17 = "V4.0.17"
    V4_2_3 = "V4.2.3"
    V4_2_4 = "V4.2.4+"


class FailureKind(StrEnum):
    """DESIGN.md's three kinds of failure."""

    REQUEST_PERMANENT = "request_permanent"
    CONNECTOR_FAULT = "connector_fault"
    TRANSIENT = "transient"


class EmcaError(Exception):
    """A classified failure of a call to emCA. ``detail`` is the dialect's own word for it
    (e.g. ``UNKNOWN_SUBSCRIBER`` or ``authentication_failed``), for logs and metrics."""

    kind: ClassVar[FailureKind]

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        detail: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.detail = detail
        self.http_status = http_status
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.value!r}, {self.message!r}, detail={self.detail!r})"


class RequestPermanentError(EmcaError):
    kind = FailureKind.REQUEST_PERMANENT


class ConnectorFaultError(EmcaError):
    kind = FailureKind.CONNECTOR_FAULT


class TransientError(EmcaError):
    kind = FailureKind.TRANSIENT

    def __init__(self, message: str, *, unsent: bool = False, **kwargs: object) -> None:
        super().__init__(ErrorCode.CA_UNREACHABLE, message, **kwargs)  # type: ignore[arg-type]
        #: the request certainly never reached emCA (no connection, no free pooled connection)
        self.unsent = unsent

    @property
    def may_have_reached_ca(self) -> bool:
        """Whether emCA may have acted on the request although no answer came back (a timeout
        after sending, a reset connection, a 5xx). 429 and 408 say it was not processed."""
        return not self.unsent and self.http_status not in (408, 429)


class UnsupportedOperation(Exception):
    """The dialect has no way to do this (a caller's mistake, not a failure of emCA)."""


def error_for(
    kind: FailureKind,
    code: ErrorCode,
    message: str,
    *,
    detail: str | None = None,
    http_status: int | None = None,
    retry_after: float | None = None,
) -> EmcaError:
    """The `EmcaError` of that kind (a transient one is always CA_UNREACHABLE)."""
    if kind is FailureKind.TRANSIENT:
        return TransientError(message, detail=detail, http_status=http_status, retry_after=retry_after)
    cls = RequestPermanentError if kind is FailureKind.REQUEST_PERMANENT else ConnectorFaultError
    return cls(code, message, detail=detail, http_status=http_status, retry_after=retry_after)


# -- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate emCA issued. Not verified here: the issuer checks it against the CSR and the pin."""

    serial: str  # lower-case hex, no separators or leading zeros
    certificate_pem: str
    chain_pem: tuple[str, ...]  # issuing CA first (empty only if emCA sent no chain)
    request_id: str | None = None  # set when it went through manual approval
    revoked: bool | None = None  # None: the dialect does not say


@dataclass(frozen=True)
class PendingIssuance:
    """emCA holds the request for manual approval: poll ``request_id``."""

    request_id: str
    message: str = ""


IssueOutcome = IssuedCertificate | PendingIssuance

BatchOutcome = IssuedCertificate | PendingIssuance | RequestPermanentError
"""One CSR's outcome inside a batch: its refusal is a value, so it fails that CSR alone."""


@dataclass(frozen=True)
class Revocation:
    serial: str
    reason: RevocationReason
    already_revoked: bool = False  # it was revoked before: the revocation is done either way


@dataclass(frozen=True)
class IssuingCa:
    name: str  # exactly as emCA spells it
    certificate_pem: str
    sha256: str  # of the DER certificate, lower-case hex: what a connector pins


@dataclass(frozen=True)
class ProfileInfo:
    """A certificate profile. Fields a dialect does not report are None / empty."""

    name: str
    profile_id: str | None = None
    issuing_ca: str | None = None
    validity_days: int | None = None
    key_types: tuple[str, ...] = ()
    manual_approval: bool | None = None
    issuing_ca_chain_pem: tuple[str, ...] = ()  # issuing CA first, where the dialect gives it


@dataclass(frozen=True)
class SubscriberProbe:
    """emCA accepted the subscriber ID (see `EmcaConnection.check_subscriber`)."""

    note: str
    issued_serial: str | None = None  # set only if emCA signed the probe anyway (then revoked at once)


# -- how to reach one emCA -------------------------------------------------------------------------


@dataclass(frozen=True)
class EmcaEndpoint:
    """Everything needed to talk to one emCA as one registered application. Secrets stay out of repr.

    V4.0.17 needs ``aes_key`` and ``pfx`` (+ ``pfx_password``); 4.2.x needs ``client_id``.
    ``ca_bundle_pem`` is the trust anchor(s) of emCA's TLS server certificate; None: system trust.
    """

    version: EmcaVersion
    base_url: str
    username: str
    password: str = field(repr=False)
    ca_bundle_pem: str | None = field(default=None, repr=False)
    client_id: str | None = field(default=None, repr=False)
    aes_key: str | bytes | None = field(default=None, repr=False)
    pfx: bytes | None = field(default=None, repr=False)
    pfx_password: str | None = field(default=None, repr=False)


#: the most pooled connections a connection keeps, whatever the concurrency (docs/connectors.md, "HTTP pool")
POOL_CAP = 8


@dataclass(frozen=True)
class HttpOptions:
    """Timeouts (seconds) and the httpx connection pool of one connection.

    The pool is explicit and small (`for_concurrency`): measured against the simulator, client
    CPU per call grows with the number of pooled connections (httpcore scans its pool on every
    request and response): 1.9 ms/call with 8 connections against 2.9 with 16 and 5.2 with 64
    (one per concurrent call), and 2.6-3.0 with httpx's default (100, 20 kept alive). Calls
    beyond the pool wait for a connection (``pool_timeout``).
    """

    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    write_timeout: float = 10.0
    pool_timeout: float = 30.0  # waiting for a free pooled connection
    max_connections: int = POOL_CAP
    max_keepalive_connections: int = POOL_CAP
    keepalive_expiry: float = 30.0
    max_response_bytes: int = 16 * 1024 * 1024  # CRLs can be large; anything bigger is refused
    token_validity_mins: int = 15  # V4.2.4+

    @classmethod
    def for_concurrency(cls, concurrency: int, **overrides: float | int) -> HttpOptions:
        """A pool of min(concurrency, POOL_CAP) connections, all kept alive."""
        size = max(1, min(concurrency, POOL_CAP))
        values: dict[str, float | int] = {"max_connections": size, "max_keepalive_connections": size}
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


# -- the interface ----------------------------------------------------------------------------------


@runtime_checkable
class EmcaConnection(Protocol):
    """One emCA, reached as one registered application, in one dialect.

    Every method raises `EmcaError` (one of its three kinds) for any failure.
    """

    @property
    def version(self) -> EmcaVersion: ...

    async def check_connection(self) -> None:
        """Reachable over verified TLS and the credentials accepted (an authenticated read-only call)."""
        ...

    async def list_issuing_cas(self, *, via_profiles: Sequence[str] = ()) -> tuple[IssuingCa, ...]:
        """The issuing CAs. 4.2.x lists them (getCAs). V4.0.17 has no CA listing: it returns the CAs
        that the profiles named in ``via_profiles`` imply (their profile information)."""
        ...

    async def list_profiles(self, issuing_ca: str) -> tuple[ProfileInfo, ...]:
        """The certificate profiles of one issuing CA (exact name; an unknown CA gives none)."""
        ...

    async def profile_info(self, profile_name: str) -> ProfileInfo:
        """One profile; RequestPermanentError(CA_PROFILE_NOT_FOUND) when emCA has none by that name."""
        ...

    async def check_subscriber(self, *, profile_name: str, subscriber_id: str) -> SubscriberProbe:
        """Is the subscriber ID accepted, without issuing? A createCertificate(s) with a CSR whose
        signature is broken: emCA refuses an unknown subscriber (ConnectorFaultError
        SUBSCRIBER_INVALID) before it looks at the CSR, and an invalid CSR otherwise."""
        ...

    async def submit_csr(
        self, *, csr_pem: str, profile_name: str, subscriber_id: str, application_id: str
    ) -> IssueOutcome:
        """Submit one CSR; ``application_id`` is the issuance id (V4.0.17 dedupes on it)."""
        ...

    @property
    def max_csrs_per_call(self) -> int:
        """How many CSRs one `submit_csrs` call takes: 1 where the dialect has no batch call (V4.0.17)."""
        ...

    async def submit_csrs(
        self, *, csr_pems: Sequence[str], profile_name: str, subscriber_id: str, application_ids: Sequence[str | None]
    ) -> tuple[BatchOutcome, ...]:
        """Submit 1..``max_csrs_per_call`` CSRs of one profile in one call; one outcome per CSR, in order. A CSR
        emCA refuses is a `RequestPermanentError` in its place; a failure of the call itself is raised (every CSR
        of it then shares that failure). When emCA refuses every CSR of the call, the call fails with the first
        refusal (4.2.x: 422 CSR_REJECTED). ``application_ids``: each CSR's applicationId, in order (4.2.x records
        them and does not deduplicate on them)."""
        ...

    async def poll_request(self, request_id: str) -> IssueOutcome:
        """A request held for approval: still pending, or issued; rejected -> APPROVAL_REJECTED."""
        ...

    async def get_certificate(self, serial: str) -> IssuedCertificate: ...

    async def revoke(self, serial: str, reason: RevocationReason, *, remarks: str = "") -> Revocation:
        """Revoke with an RFC 5280 reason; revoking a revoked certificate is done (``already_revoked``)."""
        ...

    async def get_chain(self, issuing_ca: str) -> tuple[str, ...]:
        """The issuing CA's chain, PEM, issuing CA first (up to the root where emCA gives it)."""
        ...

    async def get_crl(self, issuing_ca: str, *, distribution_point: str | None = None) -> bytes:
        """The issuing CA's CRL (DER): from ``distribution_point`` over HTTP(S) when given, else
        from emCA's API (4.2.x getCrl; V4.0.17 has none: UnsupportedOperation)."""
        ...

    async def aclose(self) -> None: ...


def first_line(text: str, limit: int = 300) -> str:
    """A short one-line excerpt of a message for error texts."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
