"""The per-partition hash chain of the audit log.

Each stored row's hash is

    content_hash = SHA-256( canonical_content(row) )
    row_hash     = SHA-256( prev_hash || int(prev_offset) || content_hash )

where ``prev_hash`` is the (32-byte) hash of the previous row of the same
(topic, partition) chain (`GENESIS`, 32 zero bytes, for the first),
``prev_offset`` that row's offset (absent for the first), and
``canonical_content`` an unambiguous encoding of what Kafka delivered: the
coordinates, the timestamp, the key, the value and the headers as stored
(private-key blocks replaced by their hash), and the redaction facts. The
content hash does not depend on the chain, so it can be computed before the
write transaction (and in another process).

The encoding is a sequence of fields, each either ``0x00`` (absent, None) or
``0x01`` followed by

- for an integer: its value as 8 bytes, big-endian two's complement;
- for bytes: their length as such an integer, then the bytes (strings are
  their UTF-8 bytes),

in this order: the version tag ``certrail.audit.chain.v1`` (bytes), topic,
partition, offset, timestamp_ms, timestamp_type, key, value, the number of
headers, each header's name and value, private_keys_removed, original_sha256
(its 64 hex characters), original_size. ``int(prev_offset)`` in the row hash
is an integer field of the same encoding. This is documented here and in
docs/audit.md so that anyone can recompute a chain from an export.

Derived columns (event id, type, subject, ...) are not hashed: they are a
function of the value, and ``certrail audit verify`` re-derives them.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import NamedTuple

VERSION_TAG = b"certrail.audit.chain.v1"
GENESIS = "0" * 64
"""The ``prev_hash`` (hex) of the first row of a chain."""

_ABSENT = b"\x00"
_PRESENT = b"\x01"
_Q = struct.Struct(">q").pack
_TAG = _PRESENT + _Q(len(VERSION_TAG)) + VERSION_TAG


class ChainContent(NamedTuple):
    """What a row's content hash covers."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    timestamp_type: int | None
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    private_keys_removed: int
    original_sha256: str | None
    original_size: int | None


def _bytes(data: bytes | None) -> bytes:
    return _ABSENT if data is None else _PRESENT + _Q(len(data)) + data


def _int(value: int | None) -> bytes:
    return _ABSENT if value is None else _PRESENT + _Q(value)


def canonical_content(content: ChainContent) -> bytes:
    """The unambiguous byte encoding of ``content`` (see the module docstring)."""
    topic = content.topic.encode("utf-8")
    parts = [
        _TAG,
        _PRESENT + _Q(len(topic)) + topic,
        _int(content.partition),
        _int(content.offset),
        _int(content.timestamp_ms),
        _int(content.timestamp_type),
        _bytes(content.key),
        _bytes(content.value),
        _int(len(content.headers)),
    ]
    for name, value in content.headers:
        parts.append(_bytes(name.encode("utf-8")))
        parts.append(_bytes(value))
    parts.append(_int(content.private_keys_removed))
    parts.append(_bytes(content.original_sha256.encode("ascii") if content.original_sha256 is not None else None))
    parts.append(_int(content.original_size))
    return b"".join(parts)


def content_hash(content: ChainContent) -> bytes:
    """SHA-256 of the canonical content (32 bytes)."""
    return hashlib.sha256(canonical_content(content)).digest()


def row_hash(prev_hash: str, prev_offset: int | None, content_digest: bytes) -> str:
    """The chain hash (hex) of a row after the row with hash ``prev_hash`` (hex) at ``prev_offset``."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + _int(prev_offset) + content_digest).hexdigest()
