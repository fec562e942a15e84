"""The deployer's own projection of what other services decided (migration 0008), read before
it installs or provisions anything (docs/decisions/0011-deployer-trusts-nothing.md):

- connector -> pinned issuing CA SHA-256 (ConnectorCreated: the pin taken at creation, never
  replaced by another ConnectorCreated; ConnectorUpdated carrying ``pinned_ca_sha256``: a
  deliberate re-pin; ConnectorDeleted: forgotten);
- profile -> key generation (ProfileCreated / ProfileUpdated / ProfileDeleted);
- certificate ids the gateway accepted an issue or renew request for (RequestAccepted).

Functions take a Session; only the deployer writes these tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.common.db_schema import (
    DeployerAcceptedCertificateRow,
    DeployerBotKeyRow,
    DeployerConnectorPinRow,
    DeployerProfileKindRow,
)


def connector_pin(session: Session, connector: str) -> str | None:
    row = session.get(DeployerConnectorPinRow, connector)
    return row.pinned_ca_sha256 if row is not None else None


def set_pin(session: Session, connector: str, sha256: str, event_id: str, now: datetime, *, replace: bool) -> bool:
    """Record ``connector``'s pin; with ``replace`` False an existing pin stays. True when stored."""
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


def forget_profile(session: Session, profile: str) -> None:
    session.execute(delete(DeployerProfileKindRow).where(DeployerProfileKindRow.profile == profile))


def record_accepted(session: Session, *, certificate_id: str, request_id: str, profile: str | None, connector: str | None,
                    now: datetime) -> None:
    row = session.get(DeployerAcceptedCertificateRow, certificate_id)
    if row is None:
        session.add(DeployerAcceptedCertificateRow(certificate_id=certificate_id, request_id=request_id, profile=profile,
                                                   connector=connector, accepted_at=now))
    else:
        row.request_id, row.profile, row.connector, row.accepted_at = request_id, profile, connector, now


def is_accepted(session: Session, certificate_id: str) -> bool:
    return session.get(DeployerAcceptedCertificateRow, certificate_id) is not None


def bot_key_hashes(session: Session, certificate_id: str) -> frozenset[str]:
    """The public-key hashes of every key this deployer generated for ``certificate_id``."""
    return frozenset(session.scalars(select(DeployerBotKeyRow.public_key_sha256).where(
        DeployerBotKeyRow.certificate_id == certificate_id)))
