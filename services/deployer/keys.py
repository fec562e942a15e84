"""The deployer's own secrets: the Fernet box that encrypts bot-held private keys and
target secrets (CERTRAIL_DEPLOYER_KEYS or var/deployer.keys: only deployers hold it), and
the HMAC key that signs the deployer's requests (CERTRAIL_DEPLOYER_REQUEST_KEY or
var/deployer-request.key)."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from services.common.connectors.secretbox import SecretBox, SecretBoxError, SecretsSettings, load_secret_box
from services.deployer.settings import DeployerSettings


def deployer_box(settings: DeployerSettings, *, create: bool = True) -> SecretBox:
    try:
        return load_secret_box(SecretsSettings(keys=settings.keys, keys_file=settings.keys_file), create=create)
    except SecretBoxError as exc:
        raise SecretBoxError(f"deployer keys: {exc} (for the deployer: CERTRAIL_DEPLOYER_KEYS or {settings.keys_file})") from None


def _create_private_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    try:
        os.link(temporary, path)  # whoever links first wins
    except FileExistsError:
        pass
    finally:
        temporary.unlink()


def request_signing_key(settings: DeployerSettings, *, create: bool = True) -> bytes:
    """The HMAC key of the deployer's requests (its UTF-8 bytes; at least 32)."""
    if settings.request_key is not None:
        key = settings.request_key.get_secret_value().strip().encode()
    else:
        path = settings.request_key_file
        if not path.exists():
            if not create:
                raise FileNotFoundError(f"no request key: set CERTRAIL_DEPLOYER_REQUEST_KEY or create {path}")
            _create_private_file(path, base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=") + "\n")
        key = path.read_text().strip().encode()
    if len(key) < 32:
        raise ValueError("the deployer's request key needs at least 32 bytes")
    return key
