"""The auditor's checkpoint signing key (Ed25519).

The private key lives in one PEM file (PKCS#8; encrypted when a passphrase is
set), created on first start with mode 0600 in a 0700 directory, next to its
public key (``<name>.pub.pem``). It is never logged: only its ``key_id``, the
SHA-256 of the public key's SubjectPublicKeyInfo (DER), is. Several auditor
instances may share the file or have one each; ``certrail audit verify``
trusts the key ids it is given (by default the local key's).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import SecretStr

log = logging.getLogger(__name__)


class SigningKeyError(RuntimeError):
    """The signing key file exists but cannot be used (wrong passphrase, not Ed25519, ...)."""


def spki_der(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public_key: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the public key's SubjectPublicKeyInfo, DER."""
    return hashlib.sha256(spki_der(public_key)).hexdigest()


def public_key_b64(public_key: Ed25519PublicKey) -> str:
    return base64.b64encode(spki_der(public_key)).decode("ascii")


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def public_key_path(private_key_path: Path) -> Path:
    return private_key_path.with_name(private_key_path.name.removesuffix(".pem") + ".pub.pem")


def load_public_key_file(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (SubjectPublicKeyInfo) or a private key file."""
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        raise SigningKeyError(f"{path} holds a private key; give its public key ({public_key_path(path).name})")
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} is not an Ed25519 public key")
    return key


def _load(path: Path, passphrase: SecretStr | None) -> Ed25519PrivateKey:
    password = passphrase.get_secret_value().encode() if passphrase is not None else None
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=password)
    except (ValueError, TypeError) as exc:
        # the message of cryptography's errors never contains key material
        raise SigningKeyError(f"cannot load the checkpoint signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"the checkpoint signing key {path} is not an Ed25519 key")
    return key


def load_or_create_signing_key(path: Path, passphrase: SecretStr | None = None) -> Ed25519PrivateKey:
    """The signing key at ``path``, generated (and its public key written) if missing."""
    if path.exists():
        return _load(path, passphrase)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.get_secret_value().encode())
        if passphrase is not None
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    # Written to a private temporary file, then linked into place: the key file
    # appears complete or not at all, and of two instances starting together
    # exactly one key wins (the other loads it).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        return _load(path, passphrase)
    finally:
        tmp.unlink(missing_ok=True)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_key_path(path).write_bytes(public_pem)
    log.info("created the checkpoint signing key %s (key id %s)", path, key_id(key.public_key()))
    return key


def local_key_id(private_key_path: Path, passphrase: SecretStr | None = None) -> str | None:
    """The key id of the local auditor's key (from its public key file, else the
    private key), or None when there is no key yet."""
    public_path = public_key_path(private_key_path)
    if public_path.exists():
        return key_id(load_public_key_file(public_path))
    if private_key_path.exists():
        return key_id(_load(private_key_path, passphrase).public_key())
    return None
