"""The auditor's signed checkpoints, published to ``certrail.audit.checkpoints``
(outside the database) so that a rewritten hash chain is detected.

The signature (Ed25519) is over `signing_payload`: the line
``certrail.audit.checkpoint.v1`` and a newline, then the JSON object of every
field except ``signature`` with sorted keys, no whitespace, ASCII only,
``signed_at`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC, microseconds) and the
heads sorted by topic and partition. A verifier trusts a checkpoint when
``key_id`` (SHA-256 of the signing key's SubjectPublicKeyInfo, DER) is one it
pins, ``public_key`` hashes to it, and the signature verifies.
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Annotated, ClassVar

from pydantic import AwareDatetime, Field

from services.common.contracts.envelope import Message
from services.common.contracts.fields import Part, Sha256Hex

SIGNING_CONTEXT = b"certrail.audit.checkpoint.v1\n"


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
    public_key: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9+/]*={0,2}$",
            max_length=1024,
            description="The signing public key (SubjectPublicKeyInfo, DER, base64); "
            "trusted only when its SHA-256 is a key_id the verifier pins.",
        ),
    ] | None = None
    group_id: Annotated[
        str, Field(min_length=1, max_length=200, description="The auditor's Kafka consumer group.")
    ] | None = None


def signing_payload(checkpoint: AuditCheckpoint) -> bytes:
    """The bytes the checkpoint's signature covers (see the module docstring)."""
    body = {
        "auditor": checkpoint.auditor,
        "signed_at": checkpoint.signed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "heads": [
            {"topic": h.topic, "partition": h.partition, "offset": h.offset, "hash": h.hash}
            for h in sorted(checkpoint.heads, key=lambda h: (h.topic, h.partition))
        ],
        "key_id": checkpoint.key_id,
        "algorithm": checkpoint.algorithm,
        "public_key": checkpoint.public_key,
        "group_id": checkpoint.group_id,
    }
    return SIGNING_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
