"""Requests from upstream systems, published to ``certrail.requests`` (or made
through the gateway's HTTP API, which builds the same models)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AwareDatetime

from services.common.contracts.envelope import Message
from services.common.contracts.fields import CsrPem, RequestAuth, RevocationReason, SanList
from services.common.contracts.identity import CertificateId, Identity, ProfileName, RequestId, Serial


class IssueRequested(Message):
    TYPE: ClassVar[str] = "io.certrail.request.issue.v1"
    CHANNEL: ClassVar[str] = "requests"
    SUMMARY: ClassVar[str] = "A requester asks for a new certificate under a provisioning profile."

    request_id: RequestId
    requester: Identity
    profile: ProfileName
    certificate_id: CertificateId
    csr: CsrPem | None = None  # absent for profiles whose keys the deployer bot generates
    sans: SanList | None = None  # what the requester expects; checked against the CSR
    deadline: AwareDatetime | None = None
    auth: RequestAuth | None = None  # required on Kafka, absent on HTTP (the token authenticates)


class RenewRequested(Message):
    TYPE: ClassVar[str] = "io.certrail.request.renew.v1"
    CHANNEL: ClassVar[str] = "requests"
    SUMMARY: ClassVar[str] = "A requester asks to renew a managed certificate with a new CSR."

    request_id: RequestId
    requester: Identity
    certificate_id: CertificateId
    csr: CsrPem | None = None
    replaces_serial: Serial | None = None
    deadline: AwareDatetime | None = None
    auth: RequestAuth | None = None


class RevokeRequested(Message):
    TYPE: ClassVar[str] = "io.certrail.request.revoke.v1"
    CHANNEL: ClassVar[str] = "requests"
    SUMMARY: ClassVar[str] = "A requester asks to revoke a certificate (by certificate id or serial)."

    request_id: RequestId
    requester: Identity
    certificate_id: CertificateId | None = None
    serial: Serial | None = None
    reason: RevocationReason
    replace: bool = False
    auth: RequestAuth | None = None


REQUEST_TYPES: list[type[Message]] = [IssueRequested, RenewRequested, RevokeRequested]
