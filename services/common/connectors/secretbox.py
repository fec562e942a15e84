"""Connector secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) under keys from settings, with rotation.

Keys come from ``CERTRAIL_SECRETS_KEYS`` (comma-separated Fernet keys, the first is the
current one) or, when that is unset, from the key file ``CERTRAIL_SECRETS_KEYS_FILE``
(default ``var/secrets.keys``, one key per line, first = current), which the embedded run
creates on first use (mode 0600). Only the gateway/CLI (writers) and the issuer (the one
reader that needs the plaintext) hold them.

Rotation: put a new key first (``certrail connectors generate-key``), keep the old ones
after it, run ``certrail connectors rotate-secrets`` (every row is re-encrypted under the
first key), then drop the old keys. Each row records the id of the key it is encrypted
under (`key_id`: the first 16 hex characters of SHA-256 over the key), so rotation knows
what is left to do and an operator can see when an old key is no longer needed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["SecretBox", "SecretBoxError", "SecretsSettings", "generate_key", "key_id", "load_secret_box"]


class SecretsSettings(BaseSettings):
    """Where the connector-secret keys come from (env prefix ``CERTRAIL_SECRETS_``)."""

    model_config = SettingsConfigDict(env_prefix="CERTRAIL_SECRETS_", extra="forbid")

    keys: SecretStr | None = Field(default=None, description="Comma-separated Fernet keys; the first encrypts.")
    keys_file: Path = Field(default=Path("var/secrets.keys"), description="Used when `keys` is unset; one key per line.")


class SecretBoxError(RuntimeError):
    """No key, a malformed key, or a ciphertext that none of the keys opens."""


def generate_key() -> str:
    """A new random Fernet key (URL-safe base64 of 32 bytes)."""
    return Fernet.generate_key().decode("ascii")


def key_id(key: str | bytes) -> str:
    raw = key.encode("ascii") if isinstance(key, str) else key
    return hashlib.sha256(raw.strip()).hexdigest()[:16]


class SecretBox:
    """Encrypts under the first key, decrypts under any. Never shows a key."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        cleaned = [k.strip() for k in keys if k and k.strip()]
        if not cleaned:
            raise SecretBoxError("no secrets key configured: set CERTRAIL_SECRETS_KEYS (see `certrail connectors generate-key`)")
        try:
            self._fernets = [Fernet(k) for k in cleaned]
        except (ValueError, TypeError):
            raise SecretBoxError("a secrets key is not a Fernet key (URL-safe base64 of 32 bytes)") from None
        self._multi = MultiFernet(self._fernets)
        self.key_ids: tuple[str, ...] = tuple(key_id(k) for k in cleaned)

    @property
    def current_key_id(self) -> str:
        return self.key_ids[0]

    def __repr__(self) -> str:
        return f"SecretBox(keys={len(self.key_ids)}, current={self.current_key_id})"

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._multi.encrypt(plaintext)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._multi.decrypt(token)
        except InvalidToken:
            raise SecretBoxError(
                f"none of the {len(self.key_ids)} configured secrets keys opens this ciphertext (a key was removed too early?)"
            ) from None

    def rotate(self, token: bytes) -> bytes:
        """The same plaintext, re-encrypted under the current (first) key."""
        try:
            return self._multi.rotate(token)
        except InvalidToken:
            raise SecretBoxError("none of the configured secrets keys opens this ciphertext") from None


def _read_keys_file(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines() if not line.strip().startswith("#")]
    return [key.strip() for line in lines for key in line.split(",") if key.strip()]


def load_secret_box(settings: SecretsSettings, *, create: bool = False) -> SecretBox:
    """The box from ``settings.keys``, else from the key file (created with one new key when
    ``create`` is set and it does not exist: the embedded run's default)."""
    if settings.keys is not None and settings.keys.get_secret_value().strip():
        return SecretBox(settings.keys.get_secret_value().split(","))
    path = settings.keys_file
    if not path.exists():
        if not create:
            raise SecretBoxError(f"no secrets key: set CERTRAIL_SECRETS_KEYS or create {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write("# certrail connector-secret keys, one per line; the first encrypts\n" + generate_key() + "\n")
        try:
            os.link(temporary, path)  # atomic: whoever links first wins, the others read theirs
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return SecretBox(_read_keys_file(path))
