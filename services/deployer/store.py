"""The deployer's tables (db_schema.py, migration 0007): targets and bindings,
deployments, bot-held keys. Functions take a Session and return frozen dataclasses.
Secrets and private keys are stored as Fernet tokens under the deployer's key;
they are decrypted only where a target needs them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.common.connectors.secretbox import SecretBox
from services.common.db_schema import DeployerBindingRow, DeployerBotKeyRow, DeployerDeploymentRow, DeployerTargetRow
from services.deployer.targets.config import CONFIG_MODELS, TargetKind, validate_secrets

#: the kinds a target can be added as (all of TargetKind today)
IMPLEMENTED_KINDS = frozenset({TargetKind.FILE, TargetKind.NGINX, TargetKind.WEBHOOK, TargetKind.SSH})
TARGET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class TargetNotFound(LookupError):
    pass


@dataclass(frozen=True)
class TargetSpec:
    """A target as stored: kind, validated config, and (decrypted only on request) secrets."""

    name: str
    kind: TargetKind
    config: Any
    secret_names: tuple[str, ...] = ()
    secrets: dict[str, str] = field(default_factory=dict, repr=False)


def parse_config(kind: TargetKind, config: dict[str, Any]) -> Any:
    return CONFIG_MODELS[kind].model_validate(config)


def add_target(session: Session, box: SecretBox, name: str, kind: TargetKind, config: dict[str, Any],
               secrets: dict[str, str], now: datetime, *, replace: bool = False) -> TargetSpec:
    """Validate and store a target (ValueError / pydantic ValidationError when invalid)."""
    if not re.fullmatch(TARGET_NAME_PATTERN, name):
        raise ValueError(f"target name {name!r} must match {TARGET_NAME_PATTERN}")
    if kind not in IMPLEMENTED_KINDS:
        raise ValueError(f"{kind} targets are not implemented yet (available: {', '.join(sorted(IMPLEMENTED_KINDS))})")
    parsed = parse_config(kind, config)
    validate_secrets(kind, secrets)
    row = session.get(DeployerTargetRow, name)
    if row is not None and not replace:
        raise ValueError(f"target {name!r} exists (remove it first, or replace it)")
    token = box.encrypt(json.dumps(secrets).encode()) if secrets else None
    if row is None:
        row = DeployerTargetRow(name=name, created_at=now)
        session.add(row)
    row.kind = kind.value
    row.config = parsed.model_dump_json()
    row.secrets = token
    row.secrets_key_id = box.current_key_id if token else None
    row.updated_at = now
    return TargetSpec(name, kind, parsed, tuple(sorted(secrets)))


def _spec(row: DeployerTargetRow, box: SecretBox | None) -> TargetSpec:
    kind = TargetKind(row.kind)
    secrets: dict[str, str] = {}
    if row.secrets is not None and box is not None:
        secrets = json.loads(box.decrypt(row.secrets))
    names = tuple(sorted(secrets)) if secrets else (() if row.secrets is None else ("(encrypted)",))
    return TargetSpec(row.name, kind, parse_config(kind, json.loads(row.config)), names, secrets)


def get_target(session: Session, name: str, box: SecretBox | None = None) -> TargetSpec:
    row = session.get(DeployerTargetRow, name)
    if row is None:
        raise TargetNotFound(f"no deployment target named {name!r}")
    return _spec(row, box)


def list_targets(session: Session) -> list[TargetSpec]:
    return [_spec(row, None) for row in session.scalars(select(DeployerTargetRow).order_by(DeployerTargetRow.name))]


def remove_target(session: Session, name: str) -> None:
    if session.get(DeployerTargetRow, name) is None:
        raise TargetNotFound(f"no deployment target named {name!r}")
    bound = session.scalars(select(DeployerBindingRow.profile).where(DeployerBindingRow.target_name == name)).all()
    if bound:
        raise ValueError(f"target {name!r} is bound to profile(s) {', '.join(sorted(bound))}: unbind it first")
    session.execute(delete(DeployerTargetRow).where(DeployerTargetRow.name == name))


def bind(session: Session, profile: str, target_name: str, now: datetime) -> None:
    get_target(session, target_name)
    if session.get(DeployerBindingRow, (profile, target_name)) is None:
        session.add(DeployerBindingRow(profile=profile, target_name=target_name, created_at=now))


def unbind(session: Session, profile: str, target_name: str) -> bool:
    result = session.execute(
        delete(DeployerBindingRow).where(DeployerBindingRow.profile == profile, DeployerBindingRow.target_name == target_name)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def bindings(session: Session, profile: str | None = None) -> list[tuple[str, str]]:
    query = select(DeployerBindingRow.profile, DeployerBindingRow.target_name).order_by(
        DeployerBindingRow.profile, DeployerBindingRow.target_name
    )
    if profile is not None:
        query = query.where(DeployerBindingRow.profile == profile)
    return [(p, t) for p, t in session.execute(query)]


def targets_for_profile(session: Session, profile: str, box: SecretBox) -> list[TargetSpec]:
    return [get_target(session, target, box) for _, target in bindings(session, profile)]


# -- deployments -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    certificate_id: str
    serial: str
    target_name: str
    target_kind: str
    status: str
    attempts: int
    rolled_back: bool | None
    error_code: str | None
    outcome: str | None
    certificate_pem: str
    chain_pem: tuple[str, ...]


def _deployment(row: DeployerDeploymentRow) -> Deployment:
    return Deployment(row.certificate_id, row.serial, row.target_name, row.target_kind, row.status, row.attempts,
                      row.rolled_back, row.error_code, row.outcome, row.certificate_pem, tuple(json.loads(row.chain_pem)))


def get_deployment(session: Session, certificate_id: str, serial: str, target_name: str) -> Deployment | None:
    row = session.get(DeployerDeploymentRow, (certificate_id, serial, target_name))
    return _deployment(row) if row is not None else None


def start_attempt(session: Session, *, certificate_id: str, serial: str, target_name: str, target_kind: str, cause_id: str,
                  certificate_pem: str, chain_pem: tuple[str, ...], public_key_sha256: str, now: datetime) -> int:
    """Record one more attempt (creating the row); returns the attempt number."""
    row = session.get(DeployerDeploymentRow, (certificate_id, serial, target_name))
    if row is None:
        row = DeployerDeploymentRow(
            certificate_id=certificate_id, serial=serial, target_name=target_name, target_kind=target_kind, status="in_progress",
            attempts=0, cause_id=cause_id, certificate_pem=certificate_pem, chain_pem=json.dumps(list(chain_pem)),
            public_key_sha256=public_key_sha256, started_at=now,
        )
        session.add(row)
    row.attempts += 1
    return row.attempts


def finish(session: Session, *, certificate_id: str, serial: str, target_name: str, status: str, rolled_back: bool | None,
           error_code: str | None, error_message: str | None, outcome: str, now: datetime) -> None:
    row = session.get(DeployerDeploymentRow, (certificate_id, serial, target_name))
    assert row is not None, "finish() after start_attempt()"
    row.status = status
    row.rolled_back = rolled_back
    row.error_code = error_code
    row.error_message = error_message
    row.outcome = outcome
    row.finished_at = now


def list_deployments(session: Session, certificate_id: str | None = None) -> list[Deployment]:
    query = select(DeployerDeploymentRow).order_by(DeployerDeploymentRow.started_at)
    if certificate_id is not None:
        query = query.where(DeployerDeploymentRow.certificate_id == certificate_id)
    return [_deployment(row) for row in session.scalars(query)]


# -- bot-held keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BotKey:
    cause_id: str
    certificate_id: str
    profile: str
    public_key_sha256: str
    key_algorithm: str
    csr_pem: str
    request_id: str
    request_event: str
    status: str
    serial: str | None
    certificate_pem: str | None
    encrypted_key: bytes = field(repr=False)


def _bot_key(row: DeployerBotKeyRow) -> BotKey:
    return BotKey(row.cause_id, row.certificate_id, row.profile, row.public_key_sha256, row.key_algorithm, row.csr_pem,
                  row.request_id, row.request_event, row.status, row.serial, row.certificate_pem, row.private_key)


def bot_key_by_cause(session: Session, cause_id: str) -> BotKey | None:
    row = session.get(DeployerBotKeyRow, cause_id)
    return _bot_key(row) if row is not None else None


def bot_key_by_public_key(session: Session, certificate_id: str, public_key_sha256: str) -> BotKey | None:
    row = session.scalars(select(DeployerBotKeyRow).where(
        DeployerBotKeyRow.certificate_id == certificate_id, DeployerBotKeyRow.public_key_sha256 == public_key_sha256)).first()
    return _bot_key(row) if row is not None else None


def bot_key_by_serial(session: Session, certificate_id: str, serial: str) -> BotKey | None:
    row = session.scalars(select(DeployerBotKeyRow).where(
        DeployerBotKeyRow.certificate_id == certificate_id, DeployerBotKeyRow.serial == serial)).first()
    return _bot_key(row) if row is not None else None


def has_bot_keys(session: Session, certificate_id: str) -> bool:
    return session.scalars(select(DeployerBotKeyRow.cause_id).where(DeployerBotKeyRow.certificate_id == certificate_id)).first() \
        is not None


def add_bot_key(session: Session, *, cause_id: str, certificate_id: str, profile: str, public_key_sha256: str,
                key_algorithm: str, encrypted_key: bytes, key_id: str, csr_pem: str, request_id: str, request_event: str,
                replaces_serial: str | None, now: datetime) -> None:
    session.add(DeployerBotKeyRow(
        cause_id=cause_id, certificate_id=certificate_id, profile=profile, public_key_sha256=public_key_sha256,
        key_algorithm=key_algorithm, private_key=encrypted_key, private_key_key_id=key_id, csr_pem=csr_pem,
        request_id=request_id, request_event=request_event, status="requested", replaces_serial=replaces_serial, created_at=now,
    ))


def mark_issued(session: Session, cause_id: str, serial: str, certificate_pem: str, now: datetime) -> None:
    row = session.get(DeployerBotKeyRow, cause_id)
    assert row is not None
    if row.serial is None:
        row.status = "issued"
        row.serial = serial
        row.certificate_pem = certificate_pem
        row.issued_at = now
