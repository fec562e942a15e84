"""EAB HMAC keys never start with "-" in base64url (services/gateway/acme/changes.new_hmac_key): certbot's
``--eab-hmac-key -abc...`` is refused as a missing argument ("expected one argument"), which a CI run hit."""

from __future__ import annotations

import secrets

import pytest

from services.gateway.acme import changes
from services.gateway.acme.jws import b64url_encode


def test_a_key_whose_text_starts_with_a_dash_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    dash = b"\xf8" + bytes(changes.HMAC_KEY_BYTES - 1)  # base64url "-A..."
    fine = bytes(range(changes.HMAC_KEY_BYTES))
    assert b64url_encode(dash).startswith("-") and not b64url_encode(fine).startswith("-")
    drawn = iter([dash, dash, fine])
    monkeypatch.setattr(secrets, "token_bytes", lambda n: next(drawn))
    assert changes.new_hmac_key() == fine


def test_keys_are_random_full_length_and_never_start_with_a_dash() -> None:
    keys = [changes.new_hmac_key() for _ in range(2000)]
    assert len(set(keys)) == len(keys) and {len(k) for k in keys} == {changes.HMAC_KEY_BYTES}
    assert not any(b64url_encode(k).startswith("-") for k in keys)
