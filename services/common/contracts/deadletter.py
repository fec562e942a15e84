"""The dead-letter record: what a consumer could not decode or validate, with
the reason, where it came from, and the original bytes (private keys
removed)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from services.common.contracts.envelope import Message
from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import HumanMessage, Part, Sha256Hex

Base64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=400_000)]


class SourceRecord(Part):
    topic: Annotated[str, Field(min_length=1, max_length=249)]
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]
    timestamp_ms: int | None = None
    key: Annotated[str, Field(max_length=1024)] | None = None  # the record key, UTF-8 with replacement


class DeadLetter(Message):
    TYPE: ClassVar[str] = "io.certrail.deadletter.v1"
    CHANNEL: ClassVar[str] = "deadletter"
    SUMMARY: ClassVar[str] = "A record a consumer could not decode or validate, with the reason and the original bytes."

    code: ErrorCode
    reason: HumanMessage
    consumer: Annotated[str, Field(min_length=1, max_length=128)]  # the service (consumer group) that refused it
    source: SourceRecord
    original_size: Annotated[int, Field(ge=0)]
    original_sha256: Sha256Hex  # of the bytes as received
    original_b64: Base64  # the bytes as received, with each private-key block replaced by its hash
    private_keys_removed: Annotated[int, Field(ge=0)] = 0
    truncated: bool = False
