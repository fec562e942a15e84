"""The ACME door's orders, authorizations and challenges in SQL (``gateway_acme_orders``,
``gateway_acme_authorizations``, ``gateway_acme_challenges``; migration 0021). Each function takes a Session;
callers own the transaction. The state changes that two gateway instances could race for are conditional
UPDATEs whose row count decides (`claim_challenge`, `finish_challenge`); one live order per replaced certificate is
the database's rule (a partial unique index, migration 0024: `add_order` raises `ReplacedAlready`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.common.db_schema import GatewayAcmeAuthorization, GatewayAcmeChallenge, GatewayAcmeOrder

PENDING = "pending"
READY = "ready"
PROCESSING = "processing"
VALID = "valid"
INVALID = "invalid"
DEACTIVATED = "deactivated"
EXPIRED = "expired"
#: the partial unique index that keeps one live order per replaced certificate (migration 0024), as each database
#: names it in its error: PostgreSQL the index, SQLite the column
_REPLACES_LIVE = ("ux_gateway_acme_orders_replaces_live", "gateway_acme_orders.replaces")


class ReplacedAlready(Exception):
    """The database refused a second live order replacing the same certificate (``ux_gateway_acme_orders_replaces_live``,
    migration 0024): another newOrder won the race the application's check could not see."""


@dataclass(frozen=True)
class Order:
    order_id: str
    account_id: str
    status: str  # as stored: pending | ready | processing | valid | invalid
    identifiers: list[str]
    authz_ids: list[str]
    profiles: list[str]
    error: dict[str, Any] | None
    expires_at: datetime
    created_at: datetime
    replaces: str | None = None  # RFC 9773 5: the certID of the certificate it replaces

    def status_at(self, now: datetime) -> str:
        """RFC 8555 7.1.6: an order that expires before it is finalized is invalid."""
        return INVALID if self.status in (PENDING, READY) and self.expires_at <= now else self.status


@dataclass(frozen=True)
class Authorization:
    authz_id: str
    account_id: str
    identifier: str  # the dns name; a wildcard keeps its "*."
    status: str  # as stored: pending | valid | invalid | deactivated
    validating: str | None
    expires_at: datetime
    created_at: datetime

    @property
    def wildcard(self) -> bool:
        return self.identifier.startswith("*.")

    def status_at(self, now: datetime) -> str:
        """RFC 8555 7.1.6: a pending or valid authorization past its expiry is expired."""
        return EXPIRED if self.status in (PENDING, VALID) and self.expires_at <= now else self.status


@dataclass(frozen=True)
class Challenge:
    challenge_id: str
    authz_id: str
    type: str
    token: str
    status: str  # pending | processing | valid | invalid
    validated_at: datetime | None
    error: dict[str, Any] | None


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _order(row: GatewayAcmeOrder) -> Order:
    return Order(row.order_id, row.account_id, row.status, json.loads(row.identifiers), json.loads(row.authz_ids),
                 json.loads(row.profiles), _loads(row.error), row.expires_at, row.created_at, row.replaces)


def _authz(row: GatewayAcmeAuthorization) -> Authorization:
    return Authorization(row.authz_id, row.account_id, row.identifier, row.status, row.validating, row.expires_at,
                         row.created_at)


def _challenge(row: GatewayAcmeChallenge) -> Challenge:
    return Challenge(row.challenge_id, row.authz_id, row.type, row.token, row.status, row.validated_at, _loads(row.error))


# -- reads -------------------------------------------------------------------------------------------------------


def get_order(session: Session, order_id: str) -> Order | None:
    row = session.get(GatewayAcmeOrder, order_id)
    return None if row is None else _order(row)


def get_authz(session: Session, authz_id: str) -> Authorization | None:
    row = session.get(GatewayAcmeAuthorization, authz_id)
    return None if row is None else _authz(row)


def get_challenge(session: Session, challenge_id: str) -> Challenge | None:
    row = session.get(GatewayAcmeChallenge, challenge_id)
    return None if row is None else _challenge(row)


def challenges_of(session: Session, authz_id: str) -> list[Challenge]:
    rows = session.scalars(select(GatewayAcmeChallenge).where(GatewayAcmeChallenge.authz_id == authz_id))
    return sorted((_challenge(r) for r in rows), key=lambda c: (c.type != "http-01", c.type))


def reusable_authz(session: Session, account_id: str, identifier: str, valid_until: datetime) -> Authorization | None:
    """The account's valid authorization for ``identifier`` that is still valid at ``valid_until``."""
    row = session.scalars(select(GatewayAcmeAuthorization)
                          .where(GatewayAcmeAuthorization.account_id == account_id,
                                 GatewayAcmeAuthorization.identifier == identifier,
                                 GatewayAcmeAuthorization.status == VALID,
                                 GatewayAcmeAuthorization.expires_at > valid_until)
                          .order_by(GatewayAcmeAuthorization.expires_at.desc())).first()
    return None if row is None else _authz(row)


def orders_waiting_for(session: Session, account_id: str, authz_id: str) -> list[Order]:
    """The account's pending orders that name ``authz_id`` (an account has few pending orders at once)."""
    rows = session.scalars(select(GatewayAcmeOrder).where(GatewayAcmeOrder.account_id == account_id,
                                                          GatewayAcmeOrder.status.in_((PENDING, READY))))
    return [o for o in map(_order, rows) if authz_id in o.authz_ids]


def statuses(session: Session, authz_ids: list[str]) -> dict[str, Authorization]:
    rows = session.scalars(select(GatewayAcmeAuthorization).where(GatewayAcmeAuthorization.authz_id.in_(authz_ids)))
    return {r.authz_id: _authz(r) for r in rows}


# -- writes ------------------------------------------------------------------------------------------------------


def add_order(session: Session, *, order_id: str, account_id: str, identifiers: list[str], authz_ids: list[str],
              profiles: list[str], status: str, expires_at: datetime, now: datetime, replaces: str | None = None) -> Order:
    row = GatewayAcmeOrder(order_id=order_id, account_id=account_id, status=status, identifiers=json.dumps(identifiers),
                           authz_ids=json.dumps(authz_ids), profiles=json.dumps(profiles), error=None, expires_at=expires_at,
                           created_at=now, updated_at=now, replaces=replaces)
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:  # the transaction is lost either way: the caller's rolls back
        if replaces is not None and any(name in str(exc.orig) for name in _REPLACES_LIVE):
            raise ReplacedAlready(replaces) from None
        raise
    return _order(row)


def add_authz(session: Session, *, authz_id: str, account_id: str, identifier: str, expires_at: datetime,
              now: datetime) -> Authorization:
    row = GatewayAcmeAuthorization(authz_id=authz_id, account_id=account_id, identifier=identifier, status=PENDING,
                                   validating=None, expires_at=expires_at, created_at=now, updated_at=now)
    session.add(row)
    session.flush()
    return _authz(row)


def add_challenge(session: Session, *, challenge_id: str, authz_id: str, type: str, token: str, now: datetime) -> Challenge:
    row = GatewayAcmeChallenge(challenge_id=challenge_id, authz_id=authz_id, type=type, token=token, status=PENDING,
                               validated_at=None, error=None, created_at=now, updated_at=now)
    session.add(row)
    session.flush()
    return _challenge(row)


def _count(result: Any) -> int:
    return int(result.rowcount)


def claim_challenge(session: Session, challenge: Challenge, now: datetime) -> bool:
    """pending -> processing, for one caller only: the challenge's own UPDATE decides between two requests for
    it, the authorization's (``validating`` unset, still pending and unexpired) between two of its challenges.
    False (and the caller rolls back) when either was taken."""
    took = session.execute(update(GatewayAcmeChallenge)
                           .where(GatewayAcmeChallenge.challenge_id == challenge.challenge_id,
                                  GatewayAcmeChallenge.status == PENDING)
                           .values(status=PROCESSING, updated_at=now))
    if _count(took) != 1:
        return False
    held = session.execute(update(GatewayAcmeAuthorization)
                           .where(GatewayAcmeAuthorization.authz_id == challenge.authz_id,
                                  GatewayAcmeAuthorization.status == PENDING,
                                  GatewayAcmeAuthorization.validating.is_(None),
                                  GatewayAcmeAuthorization.expires_at > now)
                           .values(validating=challenge.challenge_id, updated_at=now))
    return _count(held) == 1


def finish_challenge(session: Session, challenge: Challenge, *, error: dict[str, Any] | None, authz_expires_at: datetime | None,
                     now: datetime) -> bool:
    """processing -> valid (``error`` None; the authorization valid until ``authz_expires_at``) or invalid (the
    authorization invalid). False when the challenge was not processing any more."""
    status = VALID if error is None else INVALID
    done = session.execute(update(GatewayAcmeChallenge)
                           .where(GatewayAcmeChallenge.challenge_id == challenge.challenge_id,
                                  GatewayAcmeChallenge.status == PROCESSING)
                           .values(status=status, error=None if error is None else json.dumps(error),
                                   validated_at=now if error is None else None, updated_at=now))
    if _count(done) != 1:
        return False
    values: dict[str, Any] = {"status": status, "validating": None, "updated_at": now}
    if authz_expires_at is not None:
        values["expires_at"] = authz_expires_at
    session.execute(update(GatewayAcmeAuthorization)
                    .where(GatewayAcmeAuthorization.authz_id == challenge.authz_id,
                           GatewayAcmeAuthorization.validating == challenge.challenge_id)
                    .values(**values))
    return True


def deactivate_authz(session: Session, authz_id: str, now: datetime) -> bool:
    """pending or valid -> deactivated (RFC 8555 7.5.2); False when it was neither."""
    done = session.execute(update(GatewayAcmeAuthorization)
                           .where(GatewayAcmeAuthorization.authz_id == authz_id,
                                  GatewayAcmeAuthorization.status.in_((PENDING, VALID)))
                           .values(status=DEACTIVATED, validating=None, updated_at=now))
    return _count(done) == 1


def set_order_status(session: Session, order_id: str, status: str, now: datetime, error: dict[str, Any] | None = None) -> None:
    session.execute(update(GatewayAcmeOrder).where(GatewayAcmeOrder.order_id == order_id)
                    .values(status=status, error=None if error is None else json.dumps(error), updated_at=now))


def move_order(session: Session, order_id: str, before: str, after: str, now: datetime,
               error: dict[str, Any] | None = None) -> bool:
    """``before`` -> ``after``, for one caller only (the row count decides); False when it was not ``before``."""
    done = session.execute(update(GatewayAcmeOrder)
                           .where(GatewayAcmeOrder.order_id == order_id, GatewayAcmeOrder.status == before)
                           .values(status=after, error=None if error is None else json.dumps(error), updated_at=now))
    return _count(done) == 1


def expire_replacing(session: Session, cert_id: str, now: datetime) -> int:
    """Store as invalid the orders replacing ``cert_id`` that expired unfinalized (they read invalid already, RFC 8555
    7.1.6), so that the unique index of live replacing orders (migration 0024) lets a new order replace it; how many."""
    done = session.execute(update(GatewayAcmeOrder)
                           .where(GatewayAcmeOrder.replaces == cert_id, GatewayAcmeOrder.status.in_((PENDING, READY)),
                                  GatewayAcmeOrder.expires_at <= now)
                           .values(status=INVALID, updated_at=now))
    return _count(done)


def replacing(session: Session, cert_id: str, now: datetime) -> Order | None:
    """An order that replaces the certificate of ``cert_id`` (RFC 9773 5) and is not invalid (nor expired unfinalized)."""
    rows = session.scalars(select(GatewayAcmeOrder).where(GatewayAcmeOrder.replaces == cert_id,
                                                          GatewayAcmeOrder.status != INVALID))
    return next((order for order in map(_order, rows) if order.status_at(now) != INVALID), None)


def orders_of(session: Session, account_id: str, limit: int) -> list[Order]:
    """The account's newest orders first, at most ``limit``."""
    rows = session.scalars(select(GatewayAcmeOrder).where(GatewayAcmeOrder.account_id == account_id)
                           .order_by(GatewayAcmeOrder.created_at.desc(), GatewayAcmeOrder.order_id).limit(limit))
    return [_order(r) for r in rows]


def recent_orders(session: Session, limit: int) -> list[Order]:
    """Every account's newest orders first, at most ``limit`` (the admin API and the console)."""
    rows = session.scalars(select(GatewayAcmeOrder).order_by(GatewayAcmeOrder.created_at.desc(), GatewayAcmeOrder.order_id)
                           .limit(limit))
    return [_order(r) for r in rows]


def stale_challenges(session: Session, before: datetime, limit: int) -> list[Challenge]:
    """Challenges still processing that were claimed before ``before`` (their validation was abandoned: the
    gateway validating them stopped), the oldest first."""
    rows = session.scalars(select(GatewayAcmeChallenge)
                           .where(GatewayAcmeChallenge.status == PROCESSING, GatewayAcmeChallenge.updated_at < before)
                           .order_by(GatewayAcmeChallenge.updated_at).limit(limit))
    return [_challenge(r) for r in rows]
