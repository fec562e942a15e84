"""The auditor's signed checkpoints, published to ``certrail.audit.checkpoints``
(outside the database) so that a rewritten hash chain is detected."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import AwareDatetime, Field

from services.common.contracts.envelope import Message
from services.common.contracts.fields import Part, Sha256Hex


class ChainHead(Part):
    topic: Annotated[str, Field(min_length=1, max_length=249)]
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]  # the last stored offset
    hash: Sha256Hex  # the chain hash of that row


class AuditCheckpoint(Message):
    TYPE: ClassVar[str] = "io.certrail.audit.checkpoint.v1"
    CHANNEL: ClassVar[str] = "audit.checkpoints"
    SUMMARY: ClassVar[str] = "The auditor's signature over the heads of its per-partition hash chains."

    auditor: Annotated[str, Field(min_length=1, max_length=128)]
    signed_at: AwareDatetime
    heads: Annotated[list[ChainHead], Field(max_length=10_000)]
    key_id: Sha256Hex  # SHA-256 of the signing public key (SubjectPublicKeyInfo, DER)
    algorithm: Annotated[str, Field(pattern=r"^(ed25519|ecdsa-p256-sha256)$")]
    signature: Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=1024)]
