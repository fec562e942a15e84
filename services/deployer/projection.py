"""The deployer's own projection of what other services decided (migration 0008), read before
it installs or provisions anything (docs/decisions/0011-deployer-trusts-nothing.md):

- connector -> pinned issuing CA SHA-256 (ConnectorCreated: the pin taken at creation, never
  replaced by another ConnectorCreated; ConnectorUpdated carrying ``pinned_ca_sha256``: a
  deliberate re-pin; ConnectorDeleted: forgotten);
- profile -> key generation, on_revocation and on_external_revocation (ProfileCreated / ProfileUpdated /
  ProfileDeleted);
- certificate ids the gateway accepted an issue or renew request for (RequestAccepted), each with
  the key hash of the CSR its latest accepted request carried (None: no CSR, or a record from
  before RequestAccepted had the field).

Functions take a Session; only the deployer writes these tables."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.common.db import core, transaction_memo
from services.common.db_schema import (
    DeployerAcceptedCertificateRow,
    DeployerBotKeyRow,
    DeployerConnectorPinRow,
    DeployerProfileKindRow,
)
from services.deployer.trust import Expectation

#: ``session.info`` key of the pins already read in a transaction
_PIN = select(DeployerConnectorPinRow.__table__.c.pinned_ca_sha256).where(
    DeployerConnectorPinRow.__table__.c.connector == bindparam("connector"))
_PINS_READ = "certrail.deployer.connector_pin"


def connector_pin(session: Session, connector: str) -> str | None:
    """The connector's pinned issuing CA; read once per transaction (a grouped read of many
    certificates of one connector asks once), forgotten when this module changes a pin."""
    memo: dict[str, str | None] = transaction_memo(session, _PINS_READ)
    if connector not in memo:
        memo[connector] = core(session).execute(_PIN, {"connector": connector}).scalar()
    return memo[connector]


def set_pin(session: Session, connector: str, sha256: str, event_id: str, now: datetime, *, replace: bool) -> bool:
    """Record ``connector``'s pin; with ``replace`` False an existing pin stays. True when stored."""
    session.info.pop(_PINS_READ, None)
    row = session.get(DeployerConnectorPinRow, connector)
    if row is None:
        session.add(DeployerConnectorPinRow(connector=connector, pinned_ca_sha256=sha256.lower(), event_id=event_id,
                                            updated_at=now))
        return True
    if not replace:
        return False
    row.pinned_ca_sha256, row.event_id, row.updated_at = sha256.lower(), event_id, now
    return True


def forget_pin(session: Session, connector: str) -> None:
    session.info.pop(_PINS_READ, None)
    session.execute(delete(DeployerConnectorPinRow).where(DeployerConnectorPinRow.connector == connector))


def profile_key_generation(session: Session, profile: str) -> str | None:
    row = session.get(DeployerProfileKindRow, profile)
    return row.key_generation if row is not None else None


def set_profile_kind(session: Session, profile: str, key_generation: str, event_id: str, now: datetime) -> None:
    row = session.get(DeployerProfileKindRow, profile)
    if row is None:
        session.add(DeployerProfileKindRow(profile=profile, key_generation=key_generation, event_id=event_id, updated_at=now))
    else:
        row.key_generation, row.event_id, row.updated_at = key_generation, event_id, now


def profile_on_revocation(session: Session, profile: str) -> str | None:
    """The profile's on_revocation as last announced (None: never said, or the profile is unknown here)."""
    row = session.get(DeployerProfileKindRow, profile)
    return row.on_revocation if row is not None else None


def profile_on_external_revocation(session: Session, profile: str) -> str | None:
    """The profile's on_external_revocation as last announced (None: never said, or the profile is unknown here)."""
    row = session.get(DeployerProfileKindRow, profile)
    return row.on_external_revocation if row is not None else None


def set_revocation_policy(session: Session, profile: str, event_id: str, now: datetime, *,
                          on_revocation: str | None = None, on_external_revocation: str | None = None) -> bool:
    """Record what the profile says of revoked certificates (migrations 0018 and 0026; None: not said in this event,
    the earlier value stands); False when the profile is unknown here (its ProfileCreated, which carries
    key_generation, has not been seen)."""
    row = session.get(DeployerProfileKindRow, profile)
    if row is None:
        return False
    if on_revocation is not None:
        row.on_revocation = on_revocation
    if on_external_revocation is not None:
        row.on_external_revocation = on_external_revocation
    row.event_id, row.updated_at = event_id, now
    return True


def forget_profile(session: Session, profile: str) -> None:
    session.execute(delete(DeployerProfileKindRow).where(DeployerProfileKindRow.profile == profile))


@dataclass(frozen=True)
class Accepted:
    """The latest accepted issue or renew request of a certificate id."""

    request_id: str
    public_key_sha256: str | None  # its CSR's key; None: it carried no CSR, or predates the field


def record_accepted(session: Session, *, certificate_id: str, request_id: str, profile: str | None, connector: str | None,
                    now: datetime, public_key_sha256: str | None = None) -> None:
    """The newest accepted request replaces the previous one, its key expectation included (a
    renewal with a new CSR expects the new key; one without a hash expects none). One statement
    (INSERT ... ON CONFLICT DO UPDATE), on the path of every certificate."""
    key = public_key_sha256.lower() if public_key_sha256 is not None else None
    core(session).execute(_accepted_upsert(session.get_bind().dialect.name), {
        "certificate_id": certificate_id, "request_id": request_id, "profile": profile, "connector": connector,
        "accepted_at": now, "public_key_sha256": key})


@functools.cache
def _accepted_upsert(dialect: str) -> Any:
    table = DeployerAcceptedCertificateRow.__table__
    if dialect == "postgresql":
        statement: Any = postgresql.insert(table)
    elif dialect == "sqlite":
        statement = sqlite.insert(table)
    else:
        raise NotImplementedError(f"accepted certificates: unsupported database {dialect!r}")
    return statement.on_conflict_do_update(
        index_elements=["certificate_id"],
        set_={name: statement.excluded[name] for name in ("request_id", "profile", "connector", "accepted_at",
                                                          "public_key_sha256")})


_ACCEPTED_TABLE = DeployerAcceptedCertificateRow.__table__
_ACCEPTED = (select(_ACCEPTED_TABLE.c.request_id, _ACCEPTED_TABLE.c.public_key_sha256)
             .where(_ACCEPTED_TABLE.c.certificate_id == bindparam("certificate_id")))


def accepted(session: Session, certificate_id: str) -> Accepted | None:
    row = core(session).execute(_ACCEPTED, {"certificate_id": certificate_id}).first()
    return None if row is None else Accepted(row.request_id, row.public_key_sha256)


def is_accepted(session: Session, certificate_id: str) -> bool:
    return accepted(session, certificate_id) is not None


def expectation(session: Session, certificate_id: str, connector: str) -> Expectation:
    """What the deployer expects of a certificate ``certificate_id`` announced for ``connector``."""
    latest = accepted(session, certificate_id)
    return Expectation(pinned_ca_sha256=connector_pin(session, connector), accepted=latest is not None,
                       bot_key_hashes=bot_key_hashes(session, certificate_id),
                       accepted_key_sha256=None if latest is None else latest.public_key_sha256,
                       accepted_request_id=None if latest is None else latest.request_id)


def bot_key_hashes(session: Session, certificate_id: str) -> frozenset[str]:
    """The public-key hashes of every key this deployer generated for ``certificate_id``."""
    return frozenset(core(session).execute(_BOT_KEY_HASHES, {"certificate_id": certificate_id}).scalars())


_BOT_KEY_HASHES = select(DeployerBotKeyRow.__table__.c.public_key_sha256).where(
    DeployerBotKeyRow.__table__.c.certificate_id == bindparam("certificate_id"))
