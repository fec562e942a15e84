"""SQL access to the connector table (``emca_connectors``). Functions take a Session opened with
``write_session`` / ``read_session`` and return plain frozen dataclasses.

Secrets are one Fernet token per row over ``{"connector": name, ...secrets}`` (JSON): binding
the name inside the ciphertext means a token copied into another row does not decrypt as that
row's secrets. Plaintext secrets exist only in memory, in `ConnectorSecrets` (SecretStr).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime

from pydantic import SecretBytes, SecretStr
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.common.connectors.models import (
    SECRET_FIELDS,
    Connector,
    ConnectorSecrets,
    ConnectorSpec,
    ConnectorStatus,
    EmcaVersion,
    LastTest,
)
from services.common.connectors.secretbox import SecretBox, SecretBoxError
from services.common.db_schema import EmcaConnectorRow
from services.common.emca.types import EmcaEndpoint

__all__ = [
    "Pin",
    "RotationReport",
    "delete_connector",
    "endpoint_for",
    "get_connector",
    "insert_connector",
    "list_connectors",
    "load_secrets",
    "rotate_secrets",
    "set_status",
    "spec_of",
    "update_connector",
]


@dataclass(frozen=True)
class Pin:
    """The issuing CA certificate a connector is pinned to, and its chain (issuing CA first)."""

    sha256: str
    chain_pem: tuple[str, ...]


@dataclass(frozen=True)
class RotationReport:
    rotated: tuple[str, ...]
    already_current: tuple[str, ...]
    failed: dict[str, str]  # connector -> why (no configured key opens it)


_PEM_END = "-----END CERTIFICATE-----"


def _join_pem(chain: tuple[str, ...]) -> str:
    return "".join(pem.strip() + "\n" for pem in chain)


def _split_pem(text: str) -> tuple[str, ...]:
    return tuple(part.strip() + "\n" + _PEM_END + "\n" for part in text.split(_PEM_END) if part.strip())


def encrypt_secrets(box: SecretBox, name: str, secrets: ConnectorSecrets) -> bytes:
    values: dict[str, str] = {"connector": name}
    for field_name in SECRET_FIELDS:
        value = getattr(secrets, field_name)
        if isinstance(value, SecretBytes):
            values[field_name] = base64.b64encode(value.get_secret_value()).decode("ascii")
        elif isinstance(value, SecretStr):
            values[field_name] = value.get_secret_value()
    return box.encrypt(json.dumps(values, separators=(",", ":")).encode("utf-8"))


def decrypt_secrets(box: SecretBox, name: str, token: bytes) -> ConnectorSecrets:
    values = json.loads(box.decrypt(token))
    if values.pop("connector", None) != name:
        raise SecretBoxError(f"the stored secrets do not belong to connector {name!r}")
    if "pfx" in values:
        values["pfx"] = base64.b64decode(values["pfx"])
    return ConnectorSecrets.model_validate(values)


def _to_connector(row: EmcaConnectorRow) -> Connector:
    last = None
    if row.last_test_ok is not None and row.last_tested_at is not None:
        last = LastTest(ok=row.last_test_ok, tested_at=row.last_tested_at, code=row.last_test_code, message=row.last_test_message or "")
    return Connector(
        name=row.name,
        version=EmcaVersion(row.version),
        base_url=row.base_url,
        username=row.username,
        issuing_ca=row.issuing_ca,
        subscriber_id=row.subscriber_id,
        default_profile=row.default_profile,
        concurrency=row.concurrency,
        status=ConnectorStatus(row.status),
        status_reason=row.status_reason,
        last_test=last,
        pinned_ca_sha256=row.pinned_ca_sha256,
        pinned_chain_pem=_split_pem(row.pinned_chain_pem),
        ca_bundle_pem=row.ca_bundle_pem,
        secret_fields=tuple(f for f in row.secret_fields.split(",") if f),
        secrets_key_id=row.secrets_key_id,
        revision=row.revision,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _apply(row: EmcaConnectorRow, spec: ConnectorSpec, box: SecretBox, pin: Pin, last_test: LastTest) -> None:
    row.version = spec.version.value
    row.base_url = spec.base_url
    row.username = spec.username
    row.issuing_ca = spec.issuing_ca
    row.subscriber_id = spec.subscriber_id
    row.default_profile = spec.default_profile
    row.concurrency = spec.concurrency
    row.ca_bundle_pem = spec.ca_bundle_pem
    row.pinned_ca_sha256 = pin.sha256
    row.pinned_chain_pem = _join_pem(pin.chain_pem)
    row.secrets = encrypt_secrets(box, spec.name, spec.secrets)
    row.secrets_key_id = box.current_key_id
    row.secret_fields = ",".join(spec.secrets.present())
    row.last_test_ok, row.last_test_code = last_test.ok, last_test.code
    row.last_test_message, row.last_tested_at = last_test.message[:2000], last_test.tested_at


def insert_connector(
    session: Session, spec: ConnectorSpec, *, box: SecretBox, pin: Pin, last_test: LastTest, now: datetime
) -> Connector:
    """Store a validated connector as enabled (raises IntegrityError if the name exists)."""
    row = EmcaConnectorRow(name=spec.name, status=ConnectorStatus.ENABLED.value, status_reason=None, revision=1,
                           created_at=now, updated_at=now)
    _apply(row, spec, box, pin, last_test)
    session.add(row)
    session.flush()
    return _to_connector(row)


def update_connector(
    session: Session, spec: ConnectorSpec, *, box: SecretBox, pin: Pin, last_test: LastTest, now: datetime,
    expected_revision: int, status: ConnectorStatus,
) -> Connector | None:
    """Replace a connector's fields (after validation); None when it is gone or changed since
    ``expected_revision`` was read (the caller re-reads and retries or refuses)."""
    row = session.get(EmcaConnectorRow, spec.name, with_for_update=True)
    if row is None or row.revision != expected_revision:
        return None
    _apply(row, spec, box, pin, last_test)
    row.status, row.status_reason = status.value, None
    row.revision += 1
    row.updated_at = now
    session.flush()
    return _to_connector(row)


def get_connector(session: Session, name: str) -> Connector | None:
    row = session.get(EmcaConnectorRow, name)
    return None if row is None else _to_connector(row)


def list_connectors(session: Session) -> list[Connector]:
    return [_to_connector(row) for row in session.scalars(select(EmcaConnectorRow).order_by(EmcaConnectorRow.name))]


def load_secrets(session: Session, name: str, box: SecretBox) -> ConnectorSecrets | None:
    """The decrypted secrets (raises SecretBoxError when no configured key opens them)."""
    token = session.scalar(select(EmcaConnectorRow.secrets).where(EmcaConnectorRow.name == name))
    return None if token is None else decrypt_secrets(box, name, token)


def set_status(
    session: Session, name: str, status: ConnectorStatus, reason: str | None, *, now: datetime, last_test: LastTest | None = None
) -> Connector | None:
    """Set the status (and the last test result, when given); None when there is no such connector."""
    row = session.get(EmcaConnectorRow, name, with_for_update=True)
    if row is None:
        return None
    if row.status != status.value or row.status_reason != reason:
        row.revision += 1
    row.status, row.status_reason = status.value, (reason[:2000] if reason else None)
    if last_test is not None:
        row.last_test_ok, row.last_test_code = last_test.ok, last_test.code
        row.last_test_message, row.last_tested_at = last_test.message[:2000], last_test.tested_at
    row.updated_at = now
    session.flush()
    return _to_connector(row)


def delete_connector(session: Session, name: str) -> bool:
    return session.execute(delete(EmcaConnectorRow).where(EmcaConnectorRow.name == name)).rowcount > 0  # type: ignore[attr-defined]


def rotate_secrets(session: Session, box: SecretBox) -> RotationReport:
    """Re-encrypt every row not yet under the current key (in the caller's transaction)."""
    rotated: list[str] = []
    current: list[str] = []
    failed: dict[str, str] = {}
    for row in session.scalars(select(EmcaConnectorRow).order_by(EmcaConnectorRow.name).with_for_update()):
        if row.secrets_key_id == box.current_key_id:
            current.append(row.name)
            continue
        try:
            row.secrets = box.rotate(row.secrets)
        except SecretBoxError as exc:
            failed[row.name] = str(exc)
            continue
        row.secrets_key_id = box.current_key_id
        rotated.append(row.name)
    session.flush()
    return RotationReport(tuple(rotated), tuple(current), failed)


def spec_of(connector: Connector, secrets: ConnectorSecrets) -> ConnectorSpec:
    """The spec a stored connector was created from (the starting point of an edit)."""
    return ConnectorSpec(
        name=connector.name,
        version=connector.version,
        base_url=connector.base_url,
        username=connector.username,
        issuing_ca=connector.issuing_ca,
        subscriber_id=connector.subscriber_id,
        default_profile=connector.default_profile,
        concurrency=connector.concurrency,
        ca_bundle_pem=connector.ca_bundle_pem,
        secrets=secrets,
    )


def endpoint_for(spec: ConnectorSpec) -> EmcaEndpoint:
    """How the emCA client reaches the connector's emCA (holds plaintext secrets: keep it in memory)."""
    s = spec.secrets
    return EmcaEndpoint(
        version=spec.version,
        base_url=spec.base_url,
        username=spec.username,
        password=s.password.get_secret_value(),
        ca_bundle_pem=spec.ca_bundle_pem,
        client_id=s.client_id.get_secret_value() if s.client_id else None,
        aes_key=s.aes_key.get_secret_value() if s.aes_key else None,
        pfx=s.pfx.get_secret_value() if s.pfx else None,
        pfx_password=s.pfx_password.get_secret_value() if s.pfx_password else None,
    )
