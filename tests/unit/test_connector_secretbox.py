"""Connector secrets at rest: Fernet under keys from settings, rotation, and plaintext never stored."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretBytes, SecretStr

from services.common.connectors.models import ConnectorSecrets
from services.common.connectors.secretbox import SecretBox, SecretBoxError, SecretsSettings, generate_key, key_id, load_secret_box
from services.issuer.registry.repository import decrypt_secrets, encrypt_secrets

PASSWORD, CLIENT_ID, PFX = "pa55-w0rd-plaintext", "client-id-plaintext", b"\x30\x82PFX-BYTES-plaintext"


def secrets() -> ConnectorSecrets:
    return ConnectorSecrets(password=SecretStr(PASSWORD), client_id=SecretStr(CLIENT_ID))


def test_round_trip_and_the_ciphertext_holds_no_plaintext() -> None:
    box = SecretBox([generate_key()])
    token = box.encrypt(PASSWORD.encode())
    assert PASSWORD.encode() not in token and box.decrypt(token) == PASSWORD.encode()
    assert box.encrypt(PASSWORD.encode()) != token  # a fresh IV every time

    legacy = ConnectorSecrets(password=SecretStr(PASSWORD), aes_key=SecretStr("k" * 44), pfx=SecretBytes(PFX),
                              pfx_password=SecretStr("pfx-pass-plaintext"))
    stored = encrypt_secrets(box, "c1", legacy)
    for plaintext in (PASSWORD.encode(), PFX, b"pfx-pass-plaintext", b"k" * 44):
        assert plaintext not in stored
    assert decrypt_secrets(box, "c1", stored) == legacy


def test_secrets_are_bound_to_their_connector() -> None:
    box = SecretBox([generate_key()])
    stored = encrypt_secrets(box, "c1", secrets())
    with pytest.raises(SecretBoxError, match="do not belong"):
        decrypt_secrets(box, "c2", stored)


def test_rotation_re_encrypts_under_the_new_first_key() -> None:
    old, new = generate_key(), generate_key()
    token = SecretBox([old]).encrypt(b"secret")
    both = SecretBox([new, old])
    assert both.current_key_id == key_id(new) and both.decrypt(token) == b"secret"  # old tokens still open
    rotated = both.rotate(token)
    assert SecretBox([new]).decrypt(rotated) == b"secret"
    with pytest.raises(SecretBoxError):
        SecretBox([old]).decrypt(rotated)
    with pytest.raises(SecretBoxError):
        SecretBox([generate_key()]).rotate(token)


@pytest.mark.parametrize(
    ("keys", "message"),
    [([], "no secrets key"), (["not-a-key"], "not a Fernet key"), (["  ", ""], "no secrets key")],
    ids=["none", "malformed", "blank"],
)
def test_bad_keys_are_refused(keys: list[str], message: str) -> None:
    with pytest.raises(SecretBoxError, match=message):
        SecretBox(keys)


def test_repr_shows_no_key_and_secrets_are_redacted() -> None:
    key = generate_key()
    box = SecretBox([key])
    assert key not in repr(box) and key_id(key) in repr(box)
    shown = repr(secrets()) + str(secrets()) + secrets().model_dump_json()
    assert PASSWORD not in shown and CLIENT_ID not in shown


def test_settings_keys_come_first_then_the_key_file(tmp_path: Path) -> None:
    first, second = generate_key(), generate_key()
    box = load_secret_box(SecretsSettings(keys=SecretStr(f"{first}, {second}"), keys_file=tmp_path / "unused"))
    assert box.key_ids == (key_id(first), key_id(second))
    path = tmp_path / "var" / "secrets.keys"
    with pytest.raises(SecretBoxError, match="no secrets key"):
        load_secret_box(SecretsSettings(keys=None, keys_file=path))
    created = load_secret_box(SecretsSettings(keys=None, keys_file=path), create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_secret_box(SecretsSettings(keys=None, keys_file=path), create=True)
    assert again.key_ids == created.key_ids  # created once, then reused
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
