"""The local broker's side of certrail's Kafka principals (docs/decisions/0012): their
passwords in the data dir, the broker's authentication settings, and client settings/env
for one principal. `services.common.kafka_local` uses it; nothing here starts anything.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Final

from pydantic import SecretStr

from services.common.kafka_acls import ALL_PRINCIPALS, BROKER, SCRAM_MECHANISM, SUPER_USERS
from services.common.settings import KafkaSettings

AUTHORIZER_CLASS: Final = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
_SCRAM_MODULE: Final = "org.apache.kafka.common.security.scram.ScramLoginModule"
_PLAIN_MODULE: Final = "org.apache.kafka.common.security.plain.PlainLoginModule"


def load_or_create_passwords(path: Path) -> dict[str, str]:
    """{principal: password} kept in ``path`` (0600): random, created once; a missing principal is added."""
    stored: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    if set(ALL_PRINCIPALS) <= set(stored):
        return stored
    passwords = {**{name: secrets.token_urlsafe(24) for name in ALL_PRINCIPALS}, **stored}
    write_private(path, json.dumps(passwords, indent=1) + "\n")
    return passwords


def scram_format_args(passwords: dict[str, str]) -> list[str]:
    """``kafka-storage format`` arguments that create every principal's SCRAM-SHA-512 user."""
    return [
        arg
        for name, password in passwords.items()
        for arg in ("--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]")
    ]


def authentication_lines(broker_password: str) -> list[str]:
    """server.properties lines of the authenticated broker: SCRAM on the client listener (named
    SASL_PLAINTEXT, also inter-broker), PLAIN on the controller listener, the StandardAuthorizer."""
    return [
        f"sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISM}",
        "sasl.mechanism.controller.protocol=PLAIN",
        f"listener.name.sasl_plaintext.sasl.enabled.mechanisms={SCRAM_MECHANISM}",
        f"listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={_SCRAM_MODULE} required "
        f'username="{BROKER}" password="{broker_password}";',
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.controller.plain.sasl.jaas.config={_PLAIN_MODULE} required "
        f'username="{BROKER}" password="{broker_password}" user_{BROKER}="{broker_password}";',
        f"authorizer.class.name={AUTHORIZER_CLASS}",
        f"super.users={';'.join(f'User:{name}' for name in SUPER_USERS)}",
        "allow.everyone.if.no.acl.found=false",
    ]


def sasl_ssl_lines(keystore: Path) -> list[str]:
    """The SASL_SSL listener of the authenticated broker: the same SCRAM principals over TLS."""
    prefix = "listener.name.sasl_ssl."
    return [
        f"{prefix}ssl.keystore.type=PEM",
        f"{prefix}ssl.keystore.location={keystore}",
        f"{prefix}ssl.client.auth=none",
        f"{prefix}sasl.enabled.mechanisms={SCRAM_MECHANISM}",
        f"{prefix}scram-sha-512.sasl.jaas.config={_SCRAM_MODULE} required;",
    ]


def client_env(bootstrap_servers: str, principal: str, password: str | None) -> dict[str, str]:
    """``CERTRAIL_KAFKA_*`` of a client acting as ``principal`` (``password`` None: an open PLAINTEXT broker)."""
    env = {"CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers}
    if password is None:
        return {**env, "CERTRAIL_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    return {
        **env,
        "CERTRAIL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "CERTRAIL_KAFKA_SASL_MECHANISM": SCRAM_MECHANISM,
        "CERTRAIL_KAFKA_SASL_USERNAME": principal,
        "CERTRAIL_KAFKA_SASL_PASSWORD": password,
    }


def client_settings(bootstrap_servers: str, principal: str, password: str | None, topic_prefix: str) -> KafkaSettings:
    """The same as `client_env`, as settings with every security field explicit (nothing from the environment)."""
    sasl = password is not None
    return KafkaSettings(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=topic_prefix,
        security_protocol="SASL_PLAINTEXT" if sasl else "PLAINTEXT",
        sasl_mechanism=SCRAM_MECHANISM if sasl else None,
        sasl_username=principal if sasl else None,
        sasl_password=SecretStr(password) if password is not None else None,
        ssl_cafile=None,
        ssl_certfile=None,
        ssl_keyfile=None,
    )


def write_env_file(path: Path, principal: str, env: dict[str, str]) -> None:
    lines = [f"# certrail's Kafka principal {principal!r} for the CLI: set -a; . {path}; set +a"]
    lines += [f"{key}={value}" for key, value in env.items()]
    write_private(path, "\n".join(lines) + "\n")


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds a password or a key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
