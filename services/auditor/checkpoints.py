"""Signed checkpoints of the chain heads, kept outside the database.

An auditor instance signs only heads it computed itself, from records it read
from Kafka (never heads read back from the database, which whoever can write
the database could have forged), and publishes them to
``certrail.audit.checkpoints`` periodically when a chain moved, and on
shutdown. ``verify`` reads them back from Kafka (`read_checkpoints`) and trusts
those whose key id it pins and whose signature verifies (`check_signature`).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.auditor.kafka_reader import kafka_reader, read_range, topic_partitions
from services.auditor.keys import key_id, public_key_b64, public_key_from_b64
from services.auditor.store import Head
from services.common.consumer import Outbound
from services.common.contracts.audit import AuditCheckpoint, ChainHead, signing_payload
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import DecodeError, decode, make_event
from services.common.contracts.identity import root_message_id
from services.common.contracts.topics import Topics
from services.common.settings import KafkaSettings

log = logging.getLogger(__name__)

ALGORITHM = "ed25519"
#: heads per checkpoint message (a head is ~150 bytes of JSON; records stay far below 256 KiB)
MAX_HEADS_PER_MESSAGE = 1000


def sign_checkpoints(
    key: Ed25519PrivateKey, *, auditor: str, group_id: str, heads: Iterable[Head], signed_at: datetime
) -> list[AuditCheckpoint]:
    """Signed checkpoints over ``heads`` (several when there are more than fit in one message)."""
    ordered = sorted((h for h in heads if h.offset >= 0), key=lambda h: (h.topic, h.partition))
    public = key.public_key()
    result = []
    for start in range(0, len(ordered), MAX_HEADS_PER_MESSAGE):
        unsigned = AuditCheckpoint(
            auditor=auditor,
            signed_at=signed_at,
            heads=[ChainHead(topic=h.topic, partition=h.partition, offset=h.offset, hash=h.row_hash)
                   for h in ordered[start : start + MAX_HEADS_PER_MESSAGE]],
            key_id=key_id(public),
            algorithm=ALGORITHM,
            signature="",
            public_key=public_key_b64(public),
            group_id=group_id,
        )
        signature = base64.b64encode(key.sign(signing_payload(unsigned))).decode("ascii")
        result.append(unsigned.model_copy(update={"signature": signature}))
    return result


class Trust(StrEnum):
    TRUSTED = "trusted"
    UNKNOWN_KEY = "unknown_key"  # signed by a key the verifier does not pin: ignored
    BAD_SIGNATURE = "bad_signature"  # claims a pinned key but does not verify: forged or corrupted


def check_signature(checkpoint: AuditCheckpoint, trusted_key_ids: set[str]) -> Trust:
    if checkpoint.key_id not in trusted_key_ids:
        return Trust.UNKNOWN_KEY
    if checkpoint.algorithm != ALGORITHM or checkpoint.public_key is None:
        return Trust.BAD_SIGNATURE
    try:
        public = public_key_from_b64(checkpoint.public_key)
        if key_id(public) != checkpoint.key_id:
            return Trust.BAD_SIGNATURE
        public.verify(base64.b64decode(checkpoint.signature), signing_payload(checkpoint))
    except (InvalidSignature, ValueError):
        return Trust.BAD_SIGNATURE
    return Trust.TRUSTED


def checkpoint_outbound(checkpoint: AuditCheckpoint, topics: Topics, index: int = 0) -> Outbound:
    stamp = checkpoint.signed_at.isoformat()
    event = make_event(
        checkpoint,
        id=root_message_id(f"/certrail/auditor/{checkpoint.auditor}", f"{stamp}#{index}", AuditCheckpoint.TYPE),
        source=f"/certrail/auditor/{checkpoint.auditor}",
        time=checkpoint.signed_at,
    )
    return Outbound(topic=topics.audit_checkpoints, event=event, key=checkpoint.auditor)


PublishFn = Callable[[Sequence[Outbound]], Awaitable[None]]


class Checkpointer:
    """Keeps the heads this instance wrote and publishes signed checkpoints of them."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        *,
        auditor: str,
        group_id: str,
        topics: Topics,
        publish: PublishFn,
        clock: Callable[[], datetime],
    ) -> None:
        self._key = key
        self._auditor = auditor
        self._group_id = group_id
        self._topics = topics
        self._publish = publish
        self._clock = clock
        self._heads: dict[tuple[str, int], Head] = {}
        self._published: dict[tuple[str, int], Head] = {}
        self.key_id = key_id(key.public_key())

    def advanced(self, heads: Iterable[Head]) -> None:
        """Record heads a committed batch wrote."""
        for head in heads:
            self._heads[(head.topic, head.partition)] = head

    def pending(self) -> bool:
        """True when a chain other than the checkpoint topic's own moved since the last checkpoint
        (checkpointing the checkpoint topic alone would publish forever)."""
        return any(
            self._published.get(k) != h for k, h in self._heads.items() if k[0] != self._topics.audit_checkpoints
        )

    async def publish(self, final: bool = False) -> int:
        """Sign and publish the heads when a chain moved; ``final`` (on shutdown):
        when any chain moved, the checkpoint topic's own included. Returns the messages sent."""
        moved = self._heads != self._published if final else self.pending()
        if not self._heads or not moved:
            return 0
        snapshot = dict(self._heads)
        checkpoints = sign_checkpoints(
            self._key, auditor=self._auditor, group_id=self._group_id, heads=snapshot.values(), signed_at=self._clock()
        )
        await self._publish([checkpoint_outbound(c, self._topics, i) for i, c in enumerate(checkpoints)])
        self._published = snapshot
        log.info("published a checkpoint of %d chain heads (key id %s)", len(snapshot), self.key_id)
        return len(checkpoints)


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A checkpoint as read back from Kafka, with where it was."""

    partition: int
    offset: int
    checkpoint: AuditCheckpoint


@dataclass(frozen=True, slots=True)
class UnreadableCheckpoint:
    partition: int
    offset: int
    reason: str


async def read_checkpoints(
    settings: KafkaSettings, topics: Topics
) -> tuple[list[StoredCheckpoint], list[UnreadableCheckpoint]]:
    """Every checkpoint Kafka retains on the checkpoint topic (and the records there that are not one)."""
    good: list[StoredCheckpoint] = []
    bad: list[UnreadableCheckpoint] = []
    partitions = await topic_partitions(settings, names=[topics.audit_checkpoints])
    if not partitions:
        return good, bad
    async with kafka_reader(settings) as consumer:
        begin = await consumer.beginning_offsets(partitions)
        end = await consumer.end_offsets(partitions)
        async for batch in read_range(consumer, {tp: (begin[tp], end[tp]) for tp in partitions}):
            for record in batch:
                try:
                    data = decode(record.value, CATALOG).data
                except DecodeError as exc:
                    bad.append(UnreadableCheckpoint(record.partition, record.offset, f"{exc.code}: {exc.reason}"))
                    continue
                if isinstance(data, AuditCheckpoint):
                    good.append(StoredCheckpoint(record.partition, record.offset, data))
                else:
                    bad.append(UnreadableCheckpoint(record.partition, record.offset, f"not a checkpoint: {data.TYPE}"))
    return good, bad
