"""The contract between the emCA simulator's CA core and its API dialects.

The CA core (``emca_sim/ca.py``, ``emca_sim/state.py``) implements `SimBackend`;
each dialect's server module (``emca_sim/dialects/v4_0_17.py``,
``emca_sim/dialects/v4_2.py``) turns HTTP requests in that dialect's wire
format into calls on it, and its results and `SimError`s into that dialect's
responses and documented error strings. A dialect module exposes::

    def routes(backend: SimBackend) -> list[starlette.routing.BaseRoute]

and never touches keys, certificates or storage directly.

Nothing here is part of certrail's product services: the simulator stands in
for emCA in the embedded run and the tests only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class Dialect(StrEnum):
    V4_0_17 = "V4.0.17"
    V4_2_3 = "V4.2.3"
    V4_2_4 = "V4.2.4+"


class SimErrorKind(StrEnum):
    """What went wrong, independent of how a dialect words it."""

    MISSING_PARAMETER = "missing_parameter"  # V4.0.17: "Invalid parameter"
    DECRYPTION_FAILED = "decryption_failed"  # V4.0.17: "Invalid input data"
    BAD_CREDENTIALS = "bad_credentials"  # wrong user/password/IP: "Invalid request details found"
    SOURCE_NOT_ALLOWED = "source_not_allowed"  # also "Invalid request details found" on V4.0.17
    SIGNATURE_INVALID = "signature_invalid"  # "Signature verification failed"
    AUTH_KEY_INVALID = "auth_key_invalid"  # 4.2.x AuthKey/JWT wrong or expired
    REPLAYED_TXN = "replayed_txn"  # 4.2.x: a txn (or nonce) used twice
    UNKNOWN_PROFILE = "unknown_profile"  # "Invalid Certificate Profile name"
    UNKNOWN_SUBSCRIBER = "unknown_subscriber"
    UNKNOWN_CA = "unknown_ca"
    CSR_REJECTED = "csr_rejected"  # bad CSR signature, key type/size not allowed, forbidden SAN
    NOT_FOUND = "not_found"  # serial / request id unknown
    ALREADY_REVOKED = "already_revoked"
    INTERNAL = "internal"  # "Internal server error"


class SimError(Exception):
    def __init__(self, kind: SimErrorKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class RegisteredApp:
    """An external application registered at the simulated emCA.

    ``username``/``password`` are the current credentials (the admin API can
    rotate the password). V4.0.17 applications have ``aes_key`` (32 bytes) and
    ``signer_certificate_pem`` (the certificate of the PFX emCA issued them,
    against which request signatures are verified); 4.2.x ones a ``client_id``.
    """

    username: str
    password: str
    dialect: Dialect
    source_addresses: tuple[str, ...] = ("127.0.0.1", "::1")
    aes_key: bytes | None = None
    signer_certificate_pem: str | None = None
    client_id: str | None = None


@dataclass(frozen=True)
class ProfileInfo:
    name: str
    profile_id: str
    issuing_ca: str
    validity_days: int
    key_types: tuple[str, ...]  # e.g. ("EC-P256", "RSA-2048")
    manual_approval: bool = False


@dataclass(frozen=True)
class CaInfo:
    name: str
    key_type: str  # "EC-P256" or "RSA-2048"
    certificate_pem: str
    sha256: str  # of the DER certificate, lower-case hex


@dataclass(frozen=True)
class Issued:
    """A certificate the simulated emCA issued."""

    serial: str  # lower-case hex
    certificate_pem: str
    chain_pem: tuple[str, ...]  # issuing CA first, then up to the root
    profile: str
    subscriber_id: str
    application_id: str | None
    issued_at: datetime
    revoked_at: datetime | None = None
    revocation_reason: str | None = None  # RFC 5280 name


@dataclass(frozen=True)
class Pending:
    """A request held for manual approval."""

    request_id: str
    profile: str
    subscriber_id: str
    application_id: str | None
    state: str  # "pending", "approved", "rejected"
    issued: Issued | None = None
    rejection: str | None = None


@dataclass
class Counters:
    issued_by_application_id: dict[str, int] = field(default_factory=dict)
    issued_by_public_key_sha256: dict[str, int] = field(default_factory=dict)
    requests_by_method: dict[str, int] = field(default_factory=dict)


class SimBackend(Protocol):
    """What the dialects may ask of the simulated CA."""

    def application(self, username: str) -> RegisteredApp | None: ...

    def application_by_client_id(self, client_id: str) -> RegisteredApp | None: ...

    def remember_txn(self, username: str, txn: str) -> bool:
        """Record a 4.2.x transaction id (or nonce); False when it was seen before."""
        ...

    def count_request(self, method: str) -> None: ...

    def profiles(self) -> list[ProfileInfo]: ...

    def profile(self, name: str) -> ProfileInfo | None: ...

    def profile_by_id(self, profile_id: str) -> ProfileInfo | None: ...

    def cas(self) -> list[CaInfo]: ...

    def subscriber_exists(self, subscriber_id: str) -> bool: ...

    def issue(self, *, profile: str, subscriber_id: str, csr_pem: str, application_id: str | None,
              dedupe_by_application_id: bool) -> Issued | Pending:
        """Validate the CSR against the profile and sign it (or hold it for
        approval when the profile needs manual approval). With
        ``dedupe_by_application_id`` (V4.0.17 only) a known application id
        returns its existing certificate. Raises SimError."""
        ...

    def pending(self, request_id: str) -> Pending:
        """Raises SimError(NOT_FOUND)."""
        ...

    def certificate(self, serial: str) -> Issued:
        """Raises SimError(NOT_FOUND)."""
        ...

    def revoke(self, serial: str, reason: str) -> Issued:
        """Revoke with an RFC 5280 reason name; raises SimError(NOT_FOUND / ALREADY_REVOKED)."""
        ...

    def crl_der(self, ca_name: str) -> bytes:
        """The current signed CRL of an issuing CA; raises SimError(UNKNOWN_CA)."""
        ...

    def chain(self, ca_name: str) -> tuple[str, ...]:
        """PEM certificates of an issuing CA's chain, issuing CA first; raises SimError(UNKNOWN_CA)."""
        ...
