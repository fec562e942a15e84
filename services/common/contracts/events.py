"""Events (past tense), published to ``certrail.events``. Failure events carry
a stable error code and a human message (`ErrorInfo`)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AwareDatetime, Field

from services.common.contracts.envelope import Message
from services.common.contracts.fields import (
    CertificatePem,
    ChainPem,
    ErrorInfo,
    KeyGeneration,
    Part,
    RequestKind,
    RevocationReason,
    SanList,
    Sha256Hex,
    ShortText,
)
from services.common.contracts.identity import (
    CertificateId,
    ConnectorName,
    Identity,
    IssuanceId,
    ProfileName,
    RequestId,
    Serial,
)


class RequestAccepted(Message):
    TYPE: ClassVar[str] = "io.certrail.request.accepted.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "The gateway validated a request and published its command."

    request_id: RequestId
    requester: Identity
    kind: RequestKind
    certificate_id: CertificateId
    profile: ProfileName | None = None
    connector: ConnectorName | None = None
    issuance_id: IssuanceId | None = None
    command_id: str | None = Field(default=None, max_length=128)
    #: SHA-256 of the SubjectPublicKeyInfo (DER) of the CSR the command carries; absent when the
    #: request carried no CSR (a bot-key request: the deployer makes the key) and in records
    #: written before v1 gained the field (decision 0011, "Amendment")
    public_key_sha256: Sha256Hex | None = None


class RequestRejected(Message):
    TYPE: ClassVar[str] = "io.certrail.request.rejected.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "The gateway refused a request; the error says why."

    request_id: RequestId
    requester: Identity | None = None
    kind: RequestKind | None = None
    certificate_id: CertificateId | None = None
    error: ErrorInfo


class IssuancePending(Message):
    TYPE: ClassVar[str] = "io.certrail.issuance.pending.v1"
    CHANNEL: ClassVar[str] = "events.issuer"
    SUMMARY: ClassVar[str] = "emCA holds the request for manual approval; the issuer polls it."

    issuance_id: IssuanceId
    certificate_id: CertificateId
    request_id: RequestId
    connector: ConnectorName
    ca_request_id: ShortText


class CertificateIssued(Message):
    TYPE: ClassVar[str] = "io.certrail.certificate.issued.v1"
    CHANNEL: ClassVar[str] = "events.issuer"
    SUMMARY: ClassVar[str] = "emCA issued a certificate; the issuer verified it against the CSR and the pinned CA."

    issuance_id: IssuanceId
    certificate_id: CertificateId
    request_id: RequestId
    connector: ConnectorName
    profile: ProfileName
    serial: Serial
    certificate: CertificatePem
    chain: ChainPem
    subject: Annotated[str, Field(max_length=1024)]
    issuer: Annotated[str, Field(max_length=1024)]
    sans: SanList
    not_before: AwareDatetime
    not_after: AwareDatetime
    public_key_sha256: Sha256Hex  # SHA-256 of the SubjectPublicKeyInfo (DER)
    replaces_serial: Serial | None = None
    possible_duplicate: bool = False


class IssuanceFailed(Message):
    TYPE: ClassVar[str] = "io.certrail.issuance.failed.v1"
    CHANNEL: ClassVar[str] = "events.issuer"
    SUMMARY: ClassVar[str] = "An issuance ended without a certificate (request-permanent failure)."

    issuance_id: IssuanceId
    certificate_id: CertificateId
    request_id: RequestId
    connector: ConnectorName
    error: ErrorInfo


class CertificateRevoked(Message):
    TYPE: ClassVar[str] = "io.certrail.certificate.revoked.v1"
    CHANNEL: ClassVar[str] = "events.issuer"
    SUMMARY: ClassVar[str] = "emCA revoked a certificate."

    certificate_id: CertificateId
    serial: Serial
    request_id: RequestId
    connector: ConnectorName
    reason: RevocationReason
    revoked_at: AwareDatetime
    replace: bool = False


class RevocationFailed(Message):
    TYPE: ClassVar[str] = "io.certrail.revocation.failed.v1"
    CHANNEL: ClassVar[str] = "events.issuer"
    SUMMARY: ClassVar[str] = "emCA refused a revocation."

    certificate_id: CertificateId
    serial: Serial
    request_id: RequestId
    connector: ConnectorName
    error: ErrorInfo


class TargetRef(Part):
    """Where a certificate is deployed."""

    name: ShortText
    kind: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]


class CertificateDeployed(Message):
    TYPE: ClassVar[str] = "io.certrail.certificate.deployed.v1"
    CHANNEL: ClassVar[str] = "events.deployer"
    SUMMARY: ClassVar[str] = "The deployer installed a certificate on a target and verified it serves that serial."

    certificate_id: CertificateId
    serial: Serial
    target: TargetRef
    verified_serial: Serial
    deployed_at: AwareDatetime


class DeploymentFailed(Message):
    TYPE: ClassVar[str] = "io.certrail.deployment.failed.v1"
    CHANNEL: ClassVar[str] = "events.deployer"
    SUMMARY: ClassVar[str] = "Installing or verifying a certificate on a target failed; the previous one was restored."

    certificate_id: CertificateId
    serial: Serial
    target: TargetRef
    rolled_back: bool
    error: ErrorInfo


class RenewalDue(Message):
    TYPE: ClassVar[str] = "io.certrail.renewal.due.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "A certificate reached its renewal time; its key holder should send a new CSR."

    certificate_id: CertificateId
    serial: Serial  # the serial it replaces; with the certificate id, the event id
    profile: ProfileName
    connector: ConnectorName
    key_generation: KeyGeneration
    renew_at: AwareDatetime
    not_after: AwareDatetime
    requester: Identity | None = None


class CertificateExpiring(Message):
    TYPE: ClassVar[str] = "io.certrail.certificate.expiring.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = "A certificate crossed an expiry notification threshold (once per threshold)."

    certificate_id: CertificateId
    serial: Serial
    not_after: AwareDatetime
    threshold_days: Annotated[int, Field(ge=0, le=3650)]
    profile: ProfileName | None = None
    connector: ConnectorName | None = None


class SupersededBy(StrEnum):
    """Why a certificate was retired in favour of another certificate id."""

    ACME_REPLACES = "acme_replaces"  # an ACME order named it in ``replaces`` (RFC 9773 5) and became valid
    #: an ACME order without ``replaces`` became valid for exactly its identifiers, account, profile and key type
    #: (how ACME clients without RFC 9773 renew)
    ACME_SAME_IDENTIFIERS = "acme_same_identifiers"


class CertificateSuperseded(Message):
    TYPE: ClassVar[str] = "io.certrail.certificate.superseded.v1"
    CHANNEL: ClassVar[str] = "events.gateway"
    SUMMARY: ClassVar[str] = ("A certificate was retired because another certificate id replaces it (an ACME renewal: "
                              "the order's replaces, RFC 9773, or the same identifiers, account, profile and key "
                              "type): it is not revoked and stays valid until it expires, but it is no longer "
                              "renewed, notified or counted as live.")

    certificate_id: CertificateId  # the retired certificate
    serial: Serial  # its serial that was current when it was retired
    replaced_by: CertificateId  # the certificate that replaces it
    replaced_by_serial: Serial
    reason: SupersededBy = SupersededBy.ACME_REPLACES
    superseded_at: AwareDatetime


class ConnectorStatus(StrEnum):
    UP = "up"
    DOWN = "down"  # unreachable or failing transiently: circuit open, requests queued
    MISCONFIGURED = "misconfigured"  # credentials, keys, TLS trust or subscriber rejected
    DISABLED = "disabled"


class ConnectorStatusChanged(Message):
    TYPE: ClassVar[str] = "io.certrail.connector.status_changed.v1"
    CHANNEL: ClassVar[str] = "events.issuer"
    SUMMARY: ClassVar[str] = "An emCA connector went up, down, misconfigured or disabled."

    connector: ConnectorName
    status: ConnectorStatus
    previous: ConnectorStatus | None = None
    error: ErrorInfo | None = None
    changed_at: AwareDatetime


EVENT_TYPES: list[type[Message]] = [
    RequestAccepted,
    RequestRejected,
    IssuancePending,
    CertificateIssued,
    IssuanceFailed,
    CertificateRevoked,
    RevocationFailed,
    CertificateDeployed,
    DeploymentFailed,
    RenewalDue,
    CertificateExpiring,
    CertificateSuperseded,
    ConnectorStatusChanged,
]
