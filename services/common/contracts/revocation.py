"""Events of the issuer's revocation confirmation (issue 20, decision 0025): after emCA accepts a
revocation, the issuer reads the CRL at the certificate's own distribution point (signature checked
against the connector's pinned issuing CA) until the serial is listed with the requested reason.

Both are caused by the CertificateRevoked they confirm (``causationid`` is its id) and published to
``certrail.events.issuer`` keyed by the certificate id."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AwareDatetime, Field

from services.common.contracts.envelope import Message
from services.common.contracts.fields import ErrorInfo, RevocationReason
from services.common.contracts.identity import CertificateId, ConnectorName, RequestId, Serial

#: a CRLNumber in decimal: RFC 5280 allows up to 20 octets, more than a JSON number holds exactly
CrlNumber = Annotated[str, Field(pattern=r"^[0-9]{1,49}$")]
DistributionPoint = Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^[hH][tT][tT][pP][sS]?://\S+$")]


class UnconfirmedCause(StrEnum):
    """Why a revocation was not confirmed within the issuer's deadline (the last thing seen)."""

    NOT_LISTED = "not_listed"  # the CRL was read and verified, the serial is not on it
    REASON_MISMATCH = "reason_mismatch"  # the serial is listed with another reason than the one requested
    CRL_UNAVAILABLE = "crl_unavailable"  # the distribution point could not be read (error says why)
    CRL_UNTRUSTED = "crl_untrusted"  # a CRL was read but is not signed by the pinned issuing CA (error says why)
    NO_DISTRIBUTION_POINT = "no_distribution_point"  # the certificate names no HTTP(S) CRL distribution point
    CERTIFICATE_UNKNOWN = "certificate_unknown"  # neither the issuer's records nor emCA gave the certificate


class RevocationConfirmed(Message):
    TYPE: ClassVar[str] = "io.certrail.revocation.confirmed.v1"
    CHANNEL: ClassVar[str] = "events.issuer"
    SUMMARY: ClassVar[str] = ("The issuing CA's CRL, signed by the pinned issuing CA, lists the revoked serial with the "
                              "requested reason.")

    certificate_id: CertificateId
    serial: Serial
    request_id: RequestId
    connector: ConnectorName
    reason: RevocationReason
    distribution_point: DistributionPoint
    crl_number: CrlNumber | None = None  # None: the CRL carries no CRLNumber extension
    crl_this_update: AwareDatetime
    revoked_at_ca: AwareDatetime  # the CRL entry's revocationDate
    confirmed_at: AwareDatetime


class RevocationUnconfirmed(Message):
    TYPE: ClassVar[str] = "io.certrail.revocation.unconfirmed.v1"
    CHANNEL: ClassVar[str] = "events.issuer"
    SUMMARY: ClassVar[str] = ("emCA accepted a revocation but its CRL did not list the serial with the requested reason "
                              "within the issuer's deadline (CERTRAIL_ISSUER_REVOCATION_CONFIRM_TIMEOUT_S).")

    certificate_id: CertificateId
    serial: Serial
    request_id: RequestId
    connector: ConnectorName
    reason: RevocationReason
    cause: UnconfirmedCause
    distribution_point: DistributionPoint | None = None
    crl_number: CrlNumber | None = None  # of the last CRL that verified, if any
    crl_this_update: AwareDatetime | None = None
    #: REASON_MISMATCH: the CRL entry's reason as RFC 5280 names it (may be certificateHold, outside RevocationReason)
    listed_reason: Annotated[str, Field(pattern=r"^[A-Za-z]{1,32}$")] | None = None
    error: ErrorInfo | None = None  # CRL_UNAVAILABLE / CRL_UNTRUSTED: the last failure
    checks: Annotated[int, Field(ge=0)]  # CRLs read for it
    deadline: AwareDatetime
    given_up_at: AwareDatetime


class RevokedOutOfBand(Message):
    TYPE: ClassVar[str] = "io.certrail.revocation.out-of-band.v1"
    CHANNEL: ClassVar[str] = "events.issuer"
    SUMMARY: ClassVar[str] = ("A live serial certrail issued is on its CA's CRL (signed by the pinned issuing CA) though "
                              "certrail never asked to revoke it: revoked at the CA directly (decision 0030). Once per serial.")

    certificate_id: CertificateId
    serial: Serial
    connector: ConnectorName
    #: the CRL entry's reason as RFC 5280 names it (no reasonCode: unspecified; may be certificateHold)
    reason: Annotated[str, Field(pattern=r"^[A-Za-z]{1,32}$")]
    revoked_at_ca: AwareDatetime  # the CRL entry's revocationDate
    crl_number: CrlNumber | None = None  # None: the CRL carries no CRLNumber extension
    distribution_point: DistributionPoint
    detected_at: AwareDatetime


REVOCATION_EVENT_TYPES: list[type[Message]] = [RevocationConfirmed, RevocationUnconfirmed, RevokedOutOfBand]
