"""The ACME door's SQL state: EAB keys (``gateway_acme_eab_keys``) and accounts (``gateway_acme_accounts``).
Each function takes a Session; callers own the transaction. The HMAC key of an EAB key is stored sealed
(the gateway's secret box) and leaves this module only through `eab_hmac_key`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.common.connectors.secretbox import SecretBox
from services.common.db_schema import GatewayAcmeAccount, GatewayAcmeEabKey

VALID = "valid"
DEACTIVATED = "deactivated"


@dataclass(frozen=True)
class EabKey:
    key_id: str
    requester: str
    profiles: list[str]
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    account_id: str | None
    bound_at: datetime | None

    def describe(self) -> dict[str, Any]:
        state = "revoked" if self.revoked_at else "used" if self.account_id else "unused"
        return {"key_id": self.key_id, "requester": self.requester, "profiles": self.profiles, "state": state,
                "created_by": self.created_by, "created_at": self.created_at.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
                "account_id": self.account_id, "bound_at": self.bound_at.isoformat() if self.bound_at else None}


def _eab(row: GatewayAcmeEabKey) -> EabKey:
    return EabKey(row.key_id, row.requester, json.loads(row.profiles), row.created_by, row.created_at, row.revoked_at,
                  row.account_id, row.bound_at)


def add_eab_key(session: Session, box: SecretBox, *, key_id: str, requester: str, profiles: list[str], hmac_key: bytes,
                created_by: str, now: datetime) -> None:
    session.add(GatewayAcmeEabKey(key_id=key_id, requester=requester, profiles=json.dumps(sorted(profiles)),
                                  hmac_key=box.encrypt(hmac_key), secrets_key_id=box.current_key_id, created_by=created_by,
                                  created_at=now, revoked_at=None, account_id=None, bound_at=None))
    session.flush()


def get_eab_key(session: Session, key_id: str) -> EabKey | None:
    row = session.get(GatewayAcmeEabKey, key_id)
    return None if row is None else _eab(row)


def eab_hmac_key(session: Session, box: SecretBox, key_id: str) -> bytes | None:
    row = session.get(GatewayAcmeEabKey, key_id)
    return None if row is None else box.decrypt(row.hmac_key)


def list_eab_keys(session: Session) -> list[EabKey]:
    return [_eab(r) for r in session.scalars(select(GatewayAcmeEabKey).order_by(GatewayAcmeEabKey.created_at,
                                                                                 GatewayAcmeEabKey.key_id))]


def revoke_eab_key(session: Session, key_id: str, now: datetime) -> bool:
    row = session.get(GatewayAcmeEabKey, key_id)
    if row is None:
        return False
    row.revoked_at = row.revoked_at or now
    return True


def bind_eab_key(session: Session, key_id: str, account_id: str, now: datetime) -> bool:
    """Bind an unused, unrevoked key to ``account_id``: one UPDATE decides, so two accounts racing for the
    same key cannot both have it."""
    result = session.execute(update(GatewayAcmeEabKey)
                             .where(GatewayAcmeEabKey.key_id == key_id, GatewayAcmeEabKey.account_id.is_(None),
                                    GatewayAcmeEabKey.revoked_at.is_(None))
                             .values(account_id=account_id, bound_at=now))
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


# -- accounts ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    account_id: str
    jwk: dict[str, Any]
    jwk_thumbprint: str
    status: str
    contact: list[str]
    terms_agreed: bool
    requester: str
    profiles: list[str]
    eab_key_id: str
    created_at: datetime
    updated_at: datetime

    def describe(self) -> dict[str, Any]:
        """For the admin API and the CLI (the public key's thumbprint, not the key)."""
        return {"account_id": self.account_id, "status": self.status, "requester": self.requester,
                "profiles": self.profiles, "contact": self.contact, "eab_key_id": self.eab_key_id,
                "jwk_thumbprint": self.jwk_thumbprint, "created_at": self.created_at.isoformat(),
                "updated_at": self.updated_at.isoformat()}


def _account(row: GatewayAcmeAccount) -> Account:
    return Account(row.account_id, json.loads(row.jwk), row.jwk_thumbprint, row.status, json.loads(row.contact),
                   row.terms_agreed, row.requester, json.loads(row.profiles), row.eab_key_id, row.created_at, row.updated_at)


def get_account(session: Session, account_id: str) -> Account | None:
    row = session.get(GatewayAcmeAccount, account_id)
    return None if row is None else _account(row)


def account_by_thumbprint(session: Session, thumbprint: str) -> Account | None:
    row = session.scalars(select(GatewayAcmeAccount).where(GatewayAcmeAccount.jwk_thumbprint == thumbprint)).first()
    return None if row is None else _account(row)


def list_accounts(session: Session) -> list[Account]:
    return [_account(r) for r in session.scalars(select(GatewayAcmeAccount).order_by(GatewayAcmeAccount.created_at,
                                                                                      GatewayAcmeAccount.account_id))]


def add_account(session: Session, *, account_id: str, jwk: dict[str, Any], thumbprint: str, contact: list[str],
                terms_agreed: bool, eab: EabKey, now: datetime) -> Account:
    row = GatewayAcmeAccount(account_id=account_id, jwk_thumbprint=thumbprint, jwk=json.dumps(jwk, sort_keys=True),
                             status=VALID, contact=json.dumps(contact), terms_agreed=terms_agreed, requester=eab.requester,
                             profiles=json.dumps(eab.profiles), eab_key_id=eab.key_id, created_at=now, updated_at=now)
    session.add(row)
    session.flush()
    return _account(row)


def change_account(session: Session, account_id: str, now: datetime, *, status: str | None = None,
                   contact: list[str] | None = None, jwk: dict[str, Any] | None = None,
                   thumbprint: str | None = None) -> Account | None:
    """Change a valid account (None when it is not, or no longer, valid)."""
    row = session.get(GatewayAcmeAccount, account_id)
    if row is None or row.status != VALID:
        return None
    if status is not None:
        row.status = status
    if contact is not None:
        row.contact = json.dumps(contact)
    if jwk is not None and thumbprint is not None:
        row.jwk, row.jwk_thumbprint = json.dumps(jwk, sort_keys=True), thumbprint
    row.updated_at = now
    session.flush()
    return _account(row)
