"""A revoked certificate removed from its targets (issue 20, decision 0028): when the certificate's
profile says ``on_revocation: remove`` and the revocation asked for no replacement, the deployer takes the
revoked serial off every target that serves it and records the outcome per target as
`CertificateUndeployed` on ``certrail.events.deployer``, keyed by the certificate id and caused by the
CertificateRevoked. The same for a serial revoked at the CA directly (RevokedOutOfBand, decision 0030) unless the
profile's ``on_external_revocation`` asks for a replacement: then no ``request_id``. It names targets and outcomes
only: never key material."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AwareDatetime, Field

from services.common.contracts.envelope import Message
from services.common.contracts.events import TargetRef
from services.common.contracts.fields import ErrorInfo, Part, RevocationReason
from services.common.contracts.identity import CertificateId, ProfileName, RequestId, Serial


class OnRevocation(StrEnum):
    """A provisioning profile's ``on_revocation``: what happens to a revoked certificate on its targets when
    the revocation asks for no replacement."""

    KEEP = "keep"  # left installed (the behaviour before the setting existed; the default)
    REMOVE = "remove"  # removed from every target that serves the revoked serial


class ExternalRevocation(StrEnum):
    """A provisioning profile's ``on_external_revocation``: what the gateway does when a certificate of the profile
    is found revoked at the CA outside certrail (RevokedOutOfBand; docs/decisions/0030)."""

    NOTIFY = "notify"  # nothing but the event and the inventory state: an operator decides
    REPLACE = "replace"  # a RenewalDue at once, as the scheduler's: bot keys renewed by the deployer, else the requester's


class UndeployOutcome(StrEnum):
    REMOVED = "removed"  # the target served the serial; its files (and key) are gone and the service was reloaded
    NOT_SERVING = "not_serving"  # the target serves another serial (a newer one) or nothing: left untouched
    NOT_REMOVABLE = "not_removable"  # the kind cannot take a certificate back (a webhook receiver)
    FAILED = "failed"  # removing it failed (error says why); what the target served before is put back


class TargetUndeployment(Part):
    """What became of the revoked serial on one target that had it deployed."""

    target: TargetRef
    outcome: UndeployOutcome
    error: ErrorInfo | None = None


class CertificateUndeployed(Message):
    TYPE: ClassVar[str] = "io.certrail.certificate.undeployed.v1"
    CHANNEL: ClassVar[str] = "events.deployer"
    SUMMARY: ClassVar[str] = ("The deployer removed a revoked certificate from the targets serving it (profile "
                              "on_revocation: remove, no replacement requested; also for a revocation made at the CA "
                              "directly, then without request_id); one outcome per target.")

    certificate_id: CertificateId
    serial: Serial  # the revoked serial
    request_id: RequestId | None = None  # the revocation's request; None: revoked at the CA directly (RevokedOutOfBand)
    profile: ProfileName
    reason: RevocationReason
    targets: Annotated[list[TargetUndeployment], Field(max_length=64)] = Field(default_factory=list)
    undeployed_at: AwareDatetime


UNDEPLOY_EVENT_TYPES: list[type[Message]] = [CertificateUndeployed]
