"""The local broker's principal passwords and the client settings built from them."""

from __future__ import annotations

import json
from pathlib import Path

from services.common.kafka_acls import ALL_PRINCIPALS
from services.common.kafka_principals import (
    authentication_lines,
    client_env,
    client_settings,
    load_or_create_passwords,
    scram_format_args,
)


def test_passwords_are_random_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "kafka" / "principals.json"
    first = load_or_create_passwords(path)
    assert set(first) == set(ALL_PRINCIPALS) and len(set(first.values())) == len(first)
    assert path.stat().st_mode & 0o077 == 0
    assert load_or_create_passwords(path) == first
    assert load_or_create_passwords(tmp_path / "other.json") != first


def test_a_missing_principal_is_added_and_the_others_kept(tmp_path: Path) -> None:
    path = tmp_path / "principals.json"
    path.write_text(json.dumps({"broker": "kept"}))
    passwords = load_or_create_passwords(path)
    assert passwords["broker"] == "kept" and set(passwords) == set(ALL_PRINCIPALS)


def test_client_env_and_settings_agree() -> None:
    env = client_env("127.0.0.1:1", "issuer", "pw")
    assert env["CERTRAIL_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert env["CERTRAIL_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512" and env["CERTRAIL_KAFKA_SASL_USERNAME"] == "issuer"
    settings = client_settings("127.0.0.1:1", "issuer", "pw", "certrail")
    assert settings.sasl_password is not None and settings.sasl_password.get_secret_value() == "pw"
    assert "pw" not in repr(settings)
    assert client_env("127.0.0.1:1", "issuer", None) == {"CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
                                                         "CERTRAIL_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    assert client_settings("127.0.0.1:1", "issuer", None, "certrail").sasl_username is None


def test_broker_lines_deny_by_default_and_name_the_super_users() -> None:
    lines = authentication_lines("secret")
    assert "allow.everyone.if.no.acl.found=false" in lines
    assert "super.users=User:broker;User:admin" in lines
    assert "sasl.mechanism.controller.protocol=PLAIN" in lines
    assert scram_format_args({"a": "x"}) == ["--add-scram", "SCRAM-SHA-512=[name=a,password=x]"]
