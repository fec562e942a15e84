"""Private keys are found in every common PEM form and never survive redaction."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from services.common.contracts.redaction import contains_private_key, redact_private_keys


def _pems() -> dict[str, bytes]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    return {
        "pkcs8": ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        "rsa-traditional": rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ),
        "ec-traditional": ec_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ),
        "encrypted-pkcs8": ec_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
        ),
        "openssh": ed_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()),
    }


PEMS = _pems()


def _body_lines(pem: bytes) -> list[bytes]:
    return [line for line in pem.splitlines() if line and not line.startswith(b"-----")]


@pytest.mark.parametrize("kind", sorted(PEMS))
def test_plain_key_is_replaced_by_its_hash(kind: str) -> None:
    pem = PEMS[kind]
    raw = b"prefix " + pem + b" suffix"
    assert contains_private_key(raw)
    redacted, count = redact_private_keys(raw)
    assert count == 1
    assert not contains_private_key(redacted)
    for line in _body_lines(pem):
        assert line not in redacted
    digest = hashlib.sha256(pem.rstrip(b"\n")).hexdigest()
    assert f"sha256:{digest}".encode() in redacted
    assert redacted.startswith(b"prefix ") and redacted.endswith(b" suffix")


@pytest.mark.parametrize("kind", sorted(PEMS))
def test_json_escaped_key_is_removed(kind: str) -> None:
    raw = json.dumps({"csr": PEMS[kind].decode()}).encode()
    redacted, count = redact_private_keys(raw)
    assert count == 1
    for line in _body_lines(PEMS[kind]):
        assert line not in redacted
    json.loads(redacted)  # still JSON


def test_truncated_key_is_removed_to_the_end() -> None:
    pem = PEMS["pkcs8"]
    raw = b'{"x": "' + pem[: len(pem) // 2]
    redacted, count = redact_private_keys(raw)
    assert count == 1
    assert _body_lines(pem)[0] not in redacted


def test_two_keys_both_removed() -> None:
    raw = PEMS["pkcs8"] + b"\n" + PEMS["rsa-traditional"]
    redacted, count = redact_private_keys(raw)
    assert count == 2
    assert not contains_private_key(redacted)


def test_public_material_is_left_alone() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert not contains_private_key(public)
    assert redact_private_keys(public) == (public, 0)
