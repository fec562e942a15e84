"""The deployer's tables (db_schema.py, migration 0007): targets and bindings,
deployments, bot-held keys. Functions take a Session and return frozen dataclasses.
Secrets and private keys are stored as Fernet tokens under the deployer's key;
they are decrypted only where a target needs them."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.common.connectors.secretbox import SecretBox
from services.common.db import core, transaction_memo
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
    _forget_targets_read(session)
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
    _forget_targets_read(session)
    session.execute(delete(DeployerTargetRow).where(DeployerTargetRow.name == name))


def bind(session: Session, profile: str, target_name: str, now: datetime) -> None:
    get_target(session, target_name)
    _forget_targets_read(session)
    if session.get(DeployerBindingRow, (profile, target_name)) is None:
        session.add(DeployerBindingRow(profile=profile, target_name=target_name, created_at=now))


def unbind(session: Session, profile: str, target_name: str) -> bool:
    _forget_targets_read(session)
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


#: ``session.info`` key of the targets already read in a transaction (`targets_for_profile`)
_TARGETS_READ = "certrail.deployer.targets_for_profile"


def targets_for_profile(session: Session, profile: str, box: SecretBox) -> list[TargetSpec]:
    """The targets bound to ``profile``, secrets decrypted. Read (and decrypted) once per transaction:
    the certificates of one grouped read share it; any change to targets or bindings made through
    this module in the same session forgets it."""
    memo: dict[str, list[TargetSpec]] = transaction_memo(session, _TARGETS_READ)
    if profile not in memo:
        memo[profile] = [get_target(session, target, box) for _, target in bindings(session, profile)]
    return list(memo[profile])


def _forget_targets_read(session: Session) -> None:
    session.info.pop(_TARGETS_READ, None)


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


_DEPLOYMENTS = DeployerDeploymentRow.__table__


def start_attempt(session: Session, *, certificate_id: str, serial: str, target_name: str, target_kind: str, cause_id: str,
                  certificate_pem: str, chain_pem: tuple[str, ...], public_key_sha256: str, now: datetime) -> None:
    """Record one more attempt: the row is created in_progress with one attempt, or its count goes up
    (one statement: INSERT ... ON CONFLICT DO UPDATE)."""
    core(session).execute(_attempt_statement(session.get_bind().dialect.name), {
        "certificate_id": certificate_id, "serial": serial, "target_name": target_name, "target_kind": target_kind,
        "status": "in_progress", "attempts": 1, "cause_id": cause_id, "certificate_pem": certificate_pem,
        "chain_pem": json.dumps(list(chain_pem)), "public_key_sha256": public_key_sha256, "started_at": now})


@functools.cache
def _attempt_statement(dialect: str) -> Any:
    """Built once per dialect (building an upsert costs more than running it)."""
    if dialect == "postgresql":
        statement: Any = postgresql.insert(_DEPLOYMENTS)
    elif dialect == "sqlite":
        statement = sqlite.insert(_DEPLOYMENTS)
    else:
        raise NotImplementedError(f"deployments: unsupported database {dialect!r}")
    return statement.on_conflict_do_update(index_elements=["certificate_id", "serial", "target_name"],
                                           set_={"attempts": _DEPLOYMENTS.c.attempts + 1})


_FINISH = (update(_DEPLOYMENTS)
           .where(_DEPLOYMENTS.c.certificate_id == bindparam("k_certificate_id"), _DEPLOYMENTS.c.serial == bindparam("k_serial"),
                  _DEPLOYMENTS.c.target_name == bindparam("k_target_name"))
           .values(status=bindparam("status"), rolled_back=bindparam("rolled_back"), error_code=bindparam("error_code"),
                   error_message=bindparam("error_message"), outcome=bindparam("outcome"), finished_at=bindparam("finished_at")))


def finish(session: Session, *, certificate_id: str, serial: str, target_name: str, status: str, rolled_back: bool | None,
           error_code: str | None, error_message: str | None, outcome: str, now: datetime) -> None:
    """The outcome of the attempts `start_attempt` recorded (an UPDATE of that row; none: a bug)."""
    result = core(session).execute(_FINISH, {"k_certificate_id": certificate_id, "k_serial": serial, "k_target_name": target_name,
                                       "status": status, "rolled_back": rolled_back, "error_code": error_code,
                                       "error_message": error_message, "outcome": outcome, "finished_at": now})
    if result.rowcount != 1:
        raise AssertionError("finish() after start_attempt()")


_DEPLOYMENT_COLUMNS = (_DEPLOYMENTS.c.certificate_id, _DEPLOYMENTS.c.serial, _DEPLOYMENTS.c.target_name,
                       _DEPLOYMENTS.c.target_kind, _DEPLOYMENTS.c.status, _DEPLOYMENTS.c.attempts, _DEPLOYMENTS.c.rolled_back,
                       _DEPLOYMENTS.c.error_code, _DEPLOYMENTS.c.outcome, _DEPLOYMENTS.c.certificate_pem,
                       _DEPLOYMENTS.c.chain_pem)
_ALL_DEPLOYMENTS = select(*_DEPLOYMENT_COLUMNS).order_by(_DEPLOYMENTS.c.started_at)
_DEPLOYMENTS_OF = _ALL_DEPLOYMENTS.where(_DEPLOYMENTS.c.certificate_id == bindparam("certificate_id"))


def list_deployments(session: Session, certificate_id: str | None = None) -> list[Deployment]:
    """Every deployment (of ``certificate_id``), oldest first (one prepared statement: this is on the
    path of every certificate)."""
    if certificate_id is None:
        rows = core(session).execute(_ALL_DEPLOYMENTS)
    else:
        rows = core(session).execute(_DEPLOYMENTS_OF, {"certificate_id": certificate_id})
    return [Deployment(*row[:10], tuple(json.loads(row[10]))) for row in rows]


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
    encrypted_key: bytes | None = field(repr=False)  # None: destroyed (retention.py), the row is a tombstone
    created_at: datetime | None = None
    superseded_at: datetime | None = None
    retire_reason: str | None = None
    destroyed_at: datetime | None = None


def _bot_key(row: DeployerBotKeyRow) -> BotKey:
    return BotKey(row.cause_id, row.certificate_id, row.profile, row.public_key_sha256, row.key_algorithm, row.csr_pem,
                  row.request_id, row.request_event, row.status, row.serial, row.certificate_pem, row.private_key,
                  row.created_at, row.superseded_at, row.retire_reason, row.destroyed_at)


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
