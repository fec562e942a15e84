"""The audit log's hash chain: the documented encoding, its unambiguity, and
fixed vectors (a change to the encoding changes every stored chain, so it must
be deliberate: a new version tag)."""

from __future__ import annotations

import hashlib
import struct

import pytest

from services.auditor.chain import GENESIS, ChainContent, canonical_content, content_hash, row_hash

CONTENT = ChainContent(
    topic="certrail.events",
    partition=3,
    offset=41,
    timestamp_ms=1767225600000,
    timestamp_type=0,
    key=b"cert-1",
    value=b'{"a":1}',
    headers=(("content-type", b"application/cloudevents+json"),),
    private_keys_removed=0,
    original_sha256=None,
    original_size=None,
)


def _by_the_spec(c: ChainContent) -> bytes:
    """The encoding as docs/audit.md describes it, written out independently."""

    def integer(value: int | None) -> bytes:
        return b"\x00" if value is None else b"\x01" + struct.pack(">q", value)

    def data(value: bytes | None) -> bytes:
        return b"\x00" if value is None else b"\x01" + struct.pack(">q", len(value)) + value

    out = data(b"certrail.audit.chain.v1") + data(c.topic.encode()) + integer(c.partition) + integer(c.offset)
    out += integer(c.timestamp_ms) + integer(c.timestamp_type) + data(c.key) + data(c.value) + integer(len(c.headers))
    for name, value in c.headers:
        out += data(name.encode()) + data(value)
    out += integer(c.private_keys_removed)
    out += data(c.original_sha256.encode() if c.original_sha256 else None) + integer(c.original_size)
    return out


def test_encoding_is_the_documented_one() -> None:
    assert canonical_content(CONTENT) == _by_the_spec(CONTENT)
    redacted = CONTENT._replace(private_keys_removed=1, original_sha256="ab" * 32, original_size=1234)
    assert canonical_content(redacted) == _by_the_spec(redacted)


def test_fixed_vectors() -> None:
    digest = content_hash(CONTENT)
    assert digest.hex() == "03f980aeb6c96a8b2236c816a57acdbbcc64cae9f11676d4e9f280275ecf1207"
    first = row_hash(GENESIS, None, digest)
    assert first == "f3f7ffcf882c3c4782a293257cd7f59d9f056e50a218c08e24fe39d7c5b7ab4d"
    assert row_hash(first, 41, digest) == "6116d4aaa83bda09e8b856e23ba653aa8259d950ecce8f23d54b146df2b6d90f"
    # the row hash is SHA-256(prev_hash || int(prev_offset) || content_hash)
    assert first == hashlib.sha256(bytes(32) + b"\x00" + digest).hexdigest()


@pytest.mark.parametrize(
    ("name", "other"),
    [
        ("key/value boundary", CONTENT._replace(key=b"cert-1{", value=b'"a":1}')),
        ("absent vs empty key", CONTENT._replace(key=None)),
        ("empty key", CONTENT._replace(key=b"")),
        ("tombstone", CONTENT._replace(value=None)),
        ("offset", CONTENT._replace(offset=42)),
        ("partition", CONTENT._replace(partition=4)),
        ("topic", CONTENT._replace(topic="certrail.event")),
        ("timestamp", CONTENT._replace(timestamp_ms=1767225600001)),
        ("timestamp type", CONTENT._replace(timestamp_type=1)),
        ("no headers", CONTENT._replace(headers=())),
        ("header name/value boundary", CONTENT._replace(headers=(("content-typea", b"pplication/cloudevents+json"),))),
        ("redaction count", CONTENT._replace(private_keys_removed=1)),
    ],
)
def test_every_field_and_boundary_changes_the_hash(name: str, other: ChainContent) -> None:
    assert content_hash(other) != content_hash(CONTENT), name


def test_row_hash_covers_the_previous_row() -> None:
    digest = content_hash(CONTENT)
    assert row_hash(GENESIS, None, digest) != row_hash(GENESIS, 40, digest)
    assert row_hash("11" * 32, 40, digest) != row_hash("12" * 32, 40, digest)
