"""Events of a possible duplicate issuance and its resolution (issue 20, decision 0032).

On a dialect without applicationId dedupe (emCA 4.2.x) an issuance retried after an uncertain attempt is published
with ``possible_duplicate``: emCA may hold an extra certificate for the same CSR. The issuer records it as an
unresolved duplicate (DuplicateDetected, published with the CertificateIssued it concerns); an operator resolves it
through the gateway's API: with the extra certificate's serial (found at emCA), which the issuer checks and revokes
as superseded (DuplicateResolved, then RevocationConfirmed once the CRL lists it), or by stating that there is no
extra certificate (DuplicateResolved with ``no_extra``). A serial that fails a check is refused
(DuplicateResolutionRefused). Every event is the issuer's, on ``certrail.events.issuer``, keyed by the certificate
id; the resolution and the refusal name the acting operator."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AwareDatetime, Field

from services.common.contracts.envelope import Message
from services.common.contracts.fields import ErrorInfo, RevocationReason, Sha256Hex
from services.common.contracts.identity import CertificateId, ConnectorName, Identity, IssuanceId, RequestId, Serial

Note = Annotated[str, Field(min_length=1, max_length=1000)]


class DuplicateResolution(StrEnum):
    REVOKED = "revoked"  # the extra certificate was checked and revoked (superseded) at emCA
    NO_EXTRA = "no_extra"  # the operator found no extra certificate at emCA


class DuplicateDetected(Message):
    TYPE: ClassVar[str] = "io.certrail.duplicate.detected.v1"
    CHANNEL: ClassVar[str] = "events.issuer"
    SUMMARY: ClassVar[str] = ("An issuance was retried after an uncertain attempt on a dialect without applicationId "
                              "dedupe: emCA may hold an extra certificate for the same CSR. Tracked as unresolved until "
                              "an operator resolves it.")

    certificate_id: CertificateId
    request_id: RequestId
    connector: ConnectorName
    issuance_id: IssuanceId  # emCA's applicationId
    delivered_serial: Serial  # the certificate certrail published (CertificateIssued)
    public_key_sha256: Sha256Hex  # SHA-256 of the CSR's SubjectPublicKeyInfo (DER): the extra one has the same key
    detected_at: AwareDatetime


class DuplicateResolved(Message):
    TYPE: ClassVar[str] = "io.certrail.duplicate.resolved.v1"
    CHANNEL: ClassVar[str] = "events.issuer"
    SUMMARY: ClassVar[str] = ("An operator resolved a possible duplicate: the extra certificate was checked (same public "
                              "key, another serial, chains to the pinned issuing CA) and revoked at emCA as superseded, "
                              "or the operator stated that emCA holds none.")

    certificate_id: CertificateId
    request_id: RequestId
    connector: ConnectorName
    issuance_id: IssuanceId
    delivered_serial: Serial
    resolution: DuplicateResolution
    extra_serial: Serial | None = None  # REVOKED: the extra certificate revoked
    reason: RevocationReason | None = None  # REVOKED: superseded
    already_revoked: bool = False  # REVOKED: emCA said the serial was revoked already
    note: Note | None = None
    actor: Identity
    resolved_at: AwareDatetime


class DuplicateResolutionRefused(Message):
    TYPE: ClassVar[str] = "io.certrail.duplicate.resolution-refused.v1"
    CHANNEL: ClassVar[str] = "events.issuer"
    SUMMARY: ClassVar[str] = ("An operator's resolution of a possible duplicate was refused: the serial given is not "
                              "the extra certificate (error says which check failed), or emCA refused its revocation.")

    certificate_id: CertificateId
    connector: ConnectorName
    issuance_id: IssuanceId
    extra_serial: Serial | None = None
    error: ErrorInfo
    actor: Identity
    refused_at: AwareDatetime


DUPLICATE_EVENT_TYPES: list[type[Message]] = [DuplicateDetected, DuplicateResolved, DuplicateResolutionRefused]
