"""Field types shared by the message models."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.common.contracts.errors import ErrorCode

MAX_CSR_CHARS = 16 * 1024
MAX_CERT_CHARS = 16 * 1024
MAX_CHAIN_CERTS = 8
MAX_SANS = 100

CsrPem = Annotated[
    str,
    StringConstraints(
        max_length=MAX_CSR_CHARS,
        pattern=r"^\s*-----BEGIN (NEW )?CERTIFICATE REQUEST-----[A-Za-z0-9+/=\s]+-----END (NEW )?CERTIFICATE REQUEST-----\s*$",
    ),
]
CertificatePem = Annotated[
    str,
    StringConstraints(
        max_length=MAX_CERT_CHARS,
        pattern=r"^\s*-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----\s*$",
    ),
]
#: a subjectAltName as ``dns:name``, ``ip:address``, ``email:addr`` or ``uri:value``
SubjectAltName = Annotated[str, StringConstraints(pattern=r"^(dns|ip|email|uri):[^\s]{1,253}$")]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=256)]
HumanMessage = Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class RevocationReason(StrEnum):
    """RFC 5280 CRLReason names (certificateHold is a suspension, not a revocation)."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    CA_COMPROMISE = "cACompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"
    PRIVILEGE_WITHDRAWN = "privilegeWithdrawn"
    AA_COMPROMISE = "aACompromise"


class KeyAlgorithm(StrEnum):
    RSA_2048 = "RSA-2048"
    RSA_3072 = "RSA-3072"
    RSA_4096 = "RSA-4096"
    EC_P256 = "EC-P256"
    EC_P384 = "EC-P384"


class KeyGeneration(StrEnum):
    """Who holds the private key: the requester (sends a CSR) or certrail's
    deployer bot (generates the key beside the target)."""

    REQUESTER = "requester"
    BOT = "bot"


class RequestKind(StrEnum):
    ISSUE = "issue"
    RENEW = "renew"
    REVOKE = "revoke"


class Part(BaseModel):
    """A structured part of a message (not a message of its own)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ErrorInfo(Part):
    """A failure: a stable code and a message for humans."""

    code: ErrorCode
    message: HumanMessage


class RequestAuth(Part):
    """How a request on Kafka proves who sent it: an HMAC-SHA256 with the
    requester's key over the canonical JSON of the request's data without
    ``auth``, or a compact JWS over the same bytes."""

    scheme: Annotated[str, StringConstraints(pattern=r"^(hmac-sha256|jws)$")]
    key_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    signature: Annotated[str, StringConstraints(min_length=16, max_length=4096, pattern=r"^[A-Za-z0-9_.=+/-]+$")]


SanList = Annotated[list[SubjectAltName], Field(max_length=MAX_SANS)]
ChainPem = Annotated[list[CertificatePem], Field(max_length=MAX_CHAIN_CERTS)]
