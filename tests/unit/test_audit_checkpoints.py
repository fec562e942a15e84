"""Signed checkpoints and the signing key: what a verifier trusts, what it
rejects, and that the key stays private (file mode, never logged)."""

from __future__ import annotations

import logging
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from services.auditor.checkpoints import (
    MAX_HEADS_PER_MESSAGE,
    Checkpointer,
    Trust,
    check_signature,
    checkpoint_outbound,
    sign_checkpoints,
)
from services.auditor.keys import (
    SigningKeyError,
    key_id,
    load_or_create_signing_key,
    load_public_key_file,
    local_key_id,
    public_key_path,
)
from services.auditor.store import Head
from services.common.consumer import Outbound
from services.common.contracts.audit import AuditCheckpoint, ChainHead
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import decode
from services.common.contracts.topics import Topics

NOW = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
HEADS = [Head("certrail.events", 0, 41, "aa" * 32), Head("certrail.requests", 1, 7, "bb" * 32)]


def _sign(key: Ed25519PrivateKey, heads: list[Head] = HEADS) -> AuditCheckpoint:
    (checkpoint,) = sign_checkpoints(key, auditor="auditor-1", group_id="certrail-auditor", heads=heads, signed_at=NOW)
    return checkpoint


def test_a_signed_checkpoint_verifies_with_its_pinned_key_and_survives_kafka() -> None:
    key = Ed25519PrivateKey.generate()
    checkpoint = _sign(key)
    assert check_signature(checkpoint, {key_id(key.public_key())}) is Trust.TRUSTED
    outbound = checkpoint_outbound(checkpoint, Topics("certrail"))
    assert outbound.topic == "certrail.audit.checkpoints"
    decoded = decode(outbound.value(), CATALOG).data  # the record as verify reads it back
    assert isinstance(decoded, AuditCheckpoint) and decoded == checkpoint
    assert check_signature(decoded, {key_id(key.public_key())}) is Trust.TRUSTED


def test_a_changed_head_or_time_breaks_the_signature() -> None:
    key = Ed25519PrivateKey.generate()
    trusted = {key_id(key.public_key())}
    checkpoint = _sign(key)
    forged_head = checkpoint.model_copy(
        update={"heads": [ChainHead(topic="certrail.events", partition=0, offset=41, hash="cc" * 32), checkpoint.heads[1]]}
    )
    assert check_signature(forged_head, trusted) is Trust.BAD_SIGNATURE
    later = checkpoint.model_copy(update={"signed_at": datetime(2026, 1, 15, 10, 0, 1, tzinfo=UTC)})
    assert check_signature(later, trusted) is Trust.BAD_SIGNATURE


def test_keys_the_verifier_does_not_pin_are_ignored_and_cannot_be_borrowed() -> None:
    ours, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    assert check_signature(_sign(theirs), {key_id(ours.public_key())}) is Trust.UNKNOWN_KEY
    # an attacker claiming our key id but signing with (and shipping) their own key
    forged = _sign(theirs).model_copy(update={"key_id": key_id(ours.public_key())})
    assert check_signature(forged, {key_id(ours.public_key())}) is Trust.BAD_SIGNATURE


def test_many_heads_are_split_into_several_signed_messages() -> None:
    key = Ed25519PrivateKey.generate()
    heads = [Head("certrail.events", p, p, "ab" * 32) for p in range(MAX_HEADS_PER_MESSAGE + 5)]
    checkpoints = sign_checkpoints(key, auditor="a", group_id="g", heads=heads, signed_at=NOW)
    assert [len(c.heads) for c in checkpoints] == [MAX_HEADS_PER_MESSAGE, 5]
    for checkpoint in checkpoints:
        assert check_signature(checkpoint, {key_id(key.public_key())}) is Trust.TRUSTED
        assert len(checkpoint_outbound(checkpoint, Topics("certrail")).value()) < 256 * 1024


async def test_checkpointer_publishes_when_a_chain_moved_not_for_its_own_topic() -> None:
    sent: list[Outbound] = []

    async def publish(messages: list[Outbound]) -> None:  # type: ignore[override]
        sent.extend(messages)

    topics = Topics("certrail")
    checkpointer = Checkpointer(
        Ed25519PrivateKey.generate(), auditor="a", group_id="g", topics=topics, publish=publish, clock=lambda: NOW
    )
    assert await checkpointer.publish() == 0  # nothing written yet
    checkpointer.advanced(HEADS)
    assert await checkpointer.publish() == 1
    assert await checkpointer.publish() == 0  # nothing moved since
    checkpointer.advanced([Head(topics.audit_checkpoints, 0, 3, "dd" * 32)])
    assert await checkpointer.publish() == 0  # only its own topic moved: not worth a checkpoint...
    assert await checkpointer.publish(final=True) == 1  # ...except the last one, on shutdown
    assert {(h.topic, h.offset) for h in decode(sent[-1].value(), CATALOG).data.heads} == {  # type: ignore[attr-defined]
        ("certrail.events", 41), ("certrail.requests", 7), (topics.audit_checkpoints, 3)
    }


def test_the_key_file_is_created_private_and_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys" / "checkpoint.pem"
    with caplog.at_level(logging.DEBUG):
        key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert key_id(load_or_create_signing_key(path).public_key()) == key_id(key.public_key())
    assert key_id(load_public_key_file(public_key_path(path))) == key_id(key.public_key())
    assert local_key_id(path) == key_id(key.public_key())
    logged = caplog.text
    assert "PRIVATE KEY" not in logged and path.read_text().splitlines()[1] not in logged
    assert key_id(key.public_key()) in logged  # only the key id is logged


def test_an_encrypted_key_needs_its_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pem"
    key = load_or_create_signing_key(path, SecretStr("correct horse"))
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert key_id(load_or_create_signing_key(path, SecretStr("correct horse")).public_key()) == key_id(key.public_key())
    with pytest.raises(SigningKeyError) as info:
        load_or_create_signing_key(path, SecretStr("wrong"))
    assert "correct horse" not in str(info.value)


def test_a_public_key_file_must_not_hold_a_private_key(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pem"
    load_or_create_signing_key(path)
    with pytest.raises(SigningKeyError, match="private key"):
        load_public_key_file(path)
