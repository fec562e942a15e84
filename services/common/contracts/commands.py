"""Commands (imperative): published by the gateway (and the deployer's bot
renewals) to ``certrail.commands.<connector>`` for the issuer, and
``certrail.provisioning`` for the deployer."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import AwareDatetime, Field

from services.common.contracts.envelope import Message
from services.common.contracts.fields import CsrPem, KeyAlgorithm, RevocationReason, SanList, ShortText
from services.common.contracts.identity import (
    CertificateId,
    ConnectorName,
    IssuanceId,
    ProfileName,
    RequestId,
    Serial,
)

Revision = Annotated[int, Field(ge=1)]
ValidityDays = Annotated[int, Field(ge=1, le=36135)]


class IssueCertificate(Message):
    TYPE: ClassVar[str] = "io.certrail.command.issue_certificate.v1"
    CHANNEL: ClassVar[str] = "commands"
    SUMMARY: ClassVar[str] = "Submit a CSR to emCA for a new certificate."

    issuance_id: IssuanceId  # emCA's applicationId
    certificate_id: CertificateId
    revision: Revision
    request_id: RequestId
    connector: ConnectorName
    profile: ProfileName  # certrail's provisioning profile
    ca_profile: ShortText  # emCA's certificate profile name
    csr: CsrPem
    sans: SanList
    validity_days: ValidityDays | None = None
    deadline: AwareDatetime | None = None


class RenewCertificate(Message):
    TYPE: ClassVar[str] = "io.certrail.command.renew_certificate.v1"
    CHANNEL: ClassVar[str] = "commands"
    SUMMARY: ClassVar[str] = "Submit a new CSR to emCA to renew a managed certificate (always with a CSR)."

    issuance_id: IssuanceId
    certificate_id: CertificateId
    revision: Revision
    request_id: RequestId
    connector: ConnectorName
    profile: ProfileName
    ca_profile: ShortText
    csr: CsrPem
    sans: SanList
    replaces_serial: Serial
    validity_days: ValidityDays | None = None
    deadline: AwareDatetime | None = None


class RevokeCertificate(Message):
    TYPE: ClassVar[str] = "io.certrail.command.revoke_certificate.v1"
    CHANNEL: ClassVar[str] = "commands"
    SUMMARY: ClassVar[str] = "Revoke an issued certificate at emCA with an RFC 5280 reason."

    certificate_id: CertificateId
    serial: Serial
    request_id: RequestId
    connector: ConnectorName
    reason: RevocationReason
    replace: bool = False


class ProvisionCertificate(Message):
    TYPE: ClassVar[str] = "io.certrail.command.provision_certificate.v1"
    CHANNEL: ClassVar[str] = "provisioning"
    SUMMARY: ClassVar[str] = "The deployer bot generates a key, stores it and requests a certificate for it."

    certificate_id: CertificateId
    request_id: RequestId
    profile: ProfileName
    connector: ConnectorName
    key_algorithm: KeyAlgorithm
    common_name: ShortText | None = None
    sans: SanList
    replaces_serial: Serial | None = None
    deadline: AwareDatetime | None = None


COMMAND_TYPES: list[type[Message]] = [IssueCertificate, RenewCertificate, RevokeCertificate, ProvisionCertificate]
