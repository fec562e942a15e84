"""ACME orders and authorizations up to "ready" (RFC 8555 7.1.3-7.1.6, 7.4, 7.5; issue 22 slice 2a):

- `parse_new_order`: a newOrder payload's identifiers (dns only, each through challenges.check_identifier;
  wildcards only when dns-01 is offered), notBefore/notAfter refused; refusals per identifier as subproblems;
  ``replaces`` (RFC 9773 5) a well-formed certID, checked by `check_replaces` in create_order's transaction; two
  concurrent newOrders replacing one certificate are decided by the database (a partial unique index, migration
  0024): the loser is answered alreadyReplaced
- `allowed_profiles`: the account's profiles that allow every identifier, read as the gateway's policy reads
  them (the profile exists, lists the account's requester, has the requester hold the key, and its domain
  rules allow the name: services/gateway/policy/domains.py); a name none allows is a rejectedIdentifier
- the transitions, each one transaction with its admin event (changes through the gateway's outbox, actor
  ``acme:<account id>``): `create_order` (AcmeOrderCreated), `start_challenge` (AcmeChallengeStarted),
  `finish_challenge` (AcmeChallengeValidated / AcmeChallengeFailed: the authorization and the orders that wait
  for it follow), `deactivate_authorization` (AcmeAuthorizationDeactivated)
- the JSON objects the door answers (`order_document`, `authz_document`, `challenge_document`)
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.orm import Session

from services.common.contracts.admin import (
    AcmeAuthorizationDeactivated,
    AcmeChallengeFailed,
    AcmeChallengeStarted,
    AcmeChallengeValidated,
    AcmeOrderCreated,
)
from services.common.contracts.fields import KeyGeneration
from services.gateway import store as gateway_store
from services.gateway.acme import orders_store as db
from services.gateway.acme import renewal_info, store
from services.gateway.acme.challenges import DNS01, ChallengePolicy, IdentifierError, check_identifier, offered_challenge_types
from services.gateway.acme.problems import ERROR_PREFIX, AcmeError, AcmeErrorType, malformed, unauthorized
from services.gateway.acme.renewal_info import parse_cert_id
from services.gateway.config.change import Actor, changing
from services.gateway.policy.domains import check_san_allowed
from services.gateway.policy.names import San, SanKind
from services.gateway.policy.violation import PolicyViolation

TOKEN_BYTES = 16  # 128 random bits: 22 base64url characters (RFC 8555 8: at least 128 bits of entropy)


class UrlMaker(Protocol):
    def of(self, path: str) -> str: ...


def new_id() -> str:
    return secrets.token_hex(12)


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def _identifier_problem(kind: str, detail: str, value: Any) -> dict[str, Any]:
    shown = value if isinstance(value, str) and len(value) <= 255 else "?"
    return {"type": ERROR_PREFIX + kind, "detail": detail, "identifier": {"type": "dns", "value": shown}}


def _refuse_identifiers(subproblems: list[dict[str, Any]], detail: str) -> AcmeError:
    kinds = {p["type"].removeprefix(ERROR_PREFIX) for p in subproblems}
    kind = AcmeErrorType(kinds.pop()) if len(kinds) == 1 else AcmeErrorType.MALFORMED
    return AcmeError(kind, detail, subproblems=subproblems)


@dataclass(frozen=True)
class NewOrder:
    identifiers: list[str]  # normalised dns names (a wildcard keeps its "*."), without duplicates, in order
    profile: str | None  # the acme-profiles draft's "profile": one of the account's profiles, or None
    replaces: str | None = None  # RFC 9773 5: the certID of the account's certificate this order replaces


def parse_new_order(payload: dict[str, Any] | None, *, max_identifiers: int, policy: ChallengePolicy) -> NewOrder:
    if payload is None:
        raise malformed("newOrder needs a payload with identifiers")
    for member in ("notBefore", "notAfter"):
        if payload.get(member) is not None:
            raise malformed(f"{member} is not supported: the validity comes from the account's profile")
    profile = payload.get("profile")
    if profile is not None and (not isinstance(profile, str) or len(profile) > 128):
        raise malformed("profile must be the name of one of the account's profiles")
    replaces = payload.get("replaces")
    if replaces is not None:
        if not isinstance(replaces, str):
            raise malformed("replaces must be a certID (RFC 9773 4.1), a string")
        parse_cert_id(replaces)  # malformed unless a well-formed certID
    given = payload.get("identifiers")
    if not isinstance(given, list) or not given:
        raise malformed("identifiers must be a non-empty array")
    if len(given) > max_identifiers:
        raise malformed(f"an order names at most {max_identifiers} identifiers")
    wildcards = DNS01 in offered_challenge_types(policy)
    names: list[str] = []
    subproblems: list[dict[str, Any]] = []
    for item in given:
        if not isinstance(item, dict) or set(item) - {"type", "value"} or not isinstance(item.get("type"), str):
            raise malformed('each identifier is an object {"type": "dns", "value": "<name>"}')
        value = item.get("value")
        if item["type"] != "dns":
            subproblems.append(_identifier_problem(AcmeErrorType.UNSUPPORTED_IDENTIFIER.value,
                                                   "only dns identifiers are supported", value))
            continue
        try:
            name = check_identifier(value, "dns", allow_wildcard=wildcards)
        except IdentifierError as error:
            subproblems.append(_identifier_problem(error.problem.type.value, error.problem.detail, value))
            continue
        if name not in names:
            names.append(name)
    if subproblems:
        raise _refuse_identifiers(subproblems, f"{len(subproblems)} of the order's identifiers cannot be ordered here")
    return NewOrder(names, profile or None, replaces)


def check_replaces(session: Session, account: store.Account, order: NewOrder, now: datetime) -> None:
    """RFC 9773 5: the certificate ``order.replaces`` names is one this door issued to ``account`` and shares an
    identifier with the order (malformed otherwise, the same answer for another account's certificate), and no other
    order that is not invalid replaces it already (alreadyReplaced)."""
    if order.replaces is None:
        return
    found = renewal_info.find(session, parse_cert_id(order.replaces))
    if found is None or found.account_id != account.account_id:
        raise malformed("replaces names no certificate this ACME server issued to this account")
    replaced = db.get_order(session, found.order_id)
    if replaced is None or not set(replaced.identifiers) & set(order.identifiers):
        raise malformed("replaces names a certificate that shares no identifier with this order")
    db.expire_replacing(session, order.replaces, now)  # an expired unfinalized order no longer holds it
    if db.replacing(session, order.replaces, now) is not None:
        raise already_replaced()


def already_replaced() -> AcmeError:
    return AcmeError(AcmeErrorType.ALREADY_REPLACED, "another order replaces this certificate already")


def _profile_refusal(session: Session, account: store.Account, name: str, identifier: str) -> str | None:
    """Why profile ``name`` does not allow ``identifier`` for ``account`` (None: it does)."""
    stored = gateway_store.get_profile(session, name)
    if stored is None:
        return f"profile {name!r} no longer exists"
    profile = stored.profile
    if not profile.allows_requester(account.requester):
        return f"profile {name!r} no longer allows requester {account.requester!r}"
    if profile.key_generation is KeyGeneration.BOT:
        return f"profile {name!r} has its keys made by the deployer bot, and an ACME client sends its own CSR"
    try:
        check_san_allowed(San(SanKind.DNS, identifier), profile.domain_rules, name)
    except PolicyViolation as violation:
        return violation.message
    return None


def allowed_profiles(session: Session, account: store.Account, order: NewOrder) -> list[str]:
    """The account's profiles (or the one the order names) that allow every identifier: rejectedIdentifier,
    with a subproblem per identifier, for names no profile allows; rejectedIdentifier too when each name is
    allowed by some profile but no one profile allows them all (a certificate is issued under one profile)."""
    if order.profile is not None and order.profile not in account.profiles:
        raise malformed(f"profile {order.profile[:80]!r} is not one of this account's profiles")
    candidates = [order.profile] if order.profile is not None else list(account.profiles)
    allowing: dict[str, set[str]] = {}
    subproblems: list[dict[str, Any]] = []
    for identifier in order.identifiers:
        why = {name: _profile_refusal(session, account, name, identifier) for name in candidates}
        allowing[identifier] = {name for name, refusal in why.items() if refusal is None}
        if not allowing[identifier]:
            reasons = "; ".join(r for r in why.values() if r)[:400]
            subproblems.append(_identifier_problem(AcmeErrorType.REJECTED_IDENTIFIER.value,
                                                   f"no profile of this account allows it ({reasons})", identifier))
    if subproblems:
        raise _refuse_identifiers(subproblems, f"{len(subproblems)} of the order's identifiers are not allowed by the "
                                               "account's profiles")
    common = [name for name in candidates if all(name in allowing[i] for i in order.identifiers)]
    if not common:
        raise AcmeError(AcmeErrorType.REJECTED_IDENTIFIER, "each identifier is allowed by one of the account's profiles, "
                        "but no one profile allows them all: order them separately")
    return common


def _about(account: store.Account, **ids: str) -> dict[str, str]:
    return {"requester": account.requester, "account_id": account.account_id, **ids}


@dataclass(frozen=True)
class Created:
    order: db.Order
    new_authz_ids: list[str]


def create_order(actor: Actor, account: store.Account, order: NewOrder, *, policy: ChallengePolicy,
                 order_lifetime: timedelta, reuse: bool, now: datetime) -> Created:
    """The order, its new authorizations (with their challenges: http-01 unless a wildcard, dns-01 when offered)
    and the reused ones, written with AcmeOrderCreated in one transaction."""
    order_id = new_id()
    expires = now + order_lifetime
    with changing(actor, AcmeOrderCreated, _about(account, order_id=order_id)) as pending:
        check_replaces(pending.db, account, order, now)
        profiles = allowed_profiles(pending.db, account, order)
        authz_ids: dict[str, str] = {}
        reused: list[str] = []
        kinds: set[str] = set()
        for identifier in order.identifiers:
            found = db.reusable_authz(pending.db, account.account_id, identifier, expires) if reuse else None
            if found is not None:
                authz_ids[identifier] = found.authz_id
                reused.append(found.authz_id)
                continue
            authz = db.add_authz(pending.db, authz_id=new_id(), account_id=account.account_id, identifier=identifier,
                                 expires_at=expires, now=now)
            for kind in offered_challenge_types(policy, wildcard=authz.wildcard):
                db.add_challenge(pending.db, challenge_id=new_id(), authz_id=authz.authz_id, type=kind, token=new_token(),
                                 now=now)
                kinds.add(kind)
            authz_ids[identifier] = authz.authz_id
        ids = [authz_ids[i] for i in order.identifiers]
        status = db.READY if len(reused) == len(ids) else db.PENDING
        try:
            created = db.add_order(pending.db, order_id=order_id, account_id=account.account_id,
                                   identifiers=order.identifiers, authz_ids=ids, profiles=profiles, status=status,
                                   expires_at=expires, now=now, replaces=order.replaces)
        except db.ReplacedAlready:  # a concurrent newOrder replaced it first (the database's unique index decided)
            raise already_replaced() from None
        pending.change = {"identifiers": order.identifiers, "profiles": profiles, "authorizations": authz_ids,
                          "reused": reused, "challenges": sorted(kinds), "status": status, "expires": expires.isoformat()}
        if order.replaces is not None:
            pending.change["replaces"] = order.replaces
    return Created(created, [i for i in ids if i not in reused])


class NotClaimed(Exception):
    """Another request (or gateway instance) is validating this challenge or another of its authorization."""


def start_challenge(actor: Actor, account: store.Account, challenge: db.Challenge, authz: db.Authorization,
                    now: datetime) -> None:
    """pending -> processing (AcmeChallengeStarted); `NotClaimed` when another request took it first."""
    with changing(actor, AcmeChallengeStarted, _about(account, authorization_id=authz.authz_id,
                                                      challenge_id=challenge.challenge_id)) as pending:
        if not db.claim_challenge(pending.db, challenge, now):
            raise NotClaimed(challenge.challenge_id)
        pending.change = {"type": challenge.type, "identifier": authz.identifier, "status": db.PROCESSING}


def _order_failed(authz: db.Authorization, problem: dict[str, Any]) -> dict[str, Any]:
    return {"type": problem.get("type", ERROR_PREFIX + "unauthorized"), "status": problem.get("status", 403),
            "detail": f"the authorization of {authz.identifier} failed: {str(problem.get('detail', ''))[:300]}"}


def finish_challenge(actor: Actor, account: store.Account, challenge: db.Challenge, authz: db.Authorization, *,
                     problem: dict[str, Any] | None, addresses: list[str], authz_lifetime: timedelta, now: datetime) -> bool:
    """The validation's outcome, in one transaction with its event: valid (the authorization valid for
    ``authz_lifetime``; each order waiting for it ready once all its authorizations are valid) or invalid with
    ``problem`` (the authorization invalid, the orders waiting for it invalid). False when the challenge was not
    processing any more (nothing written)."""
    cls = AcmeChallengeValidated if problem is None else AcmeChallengeFailed
    with changing(actor, cls, _about(account, authorization_id=authz.authz_id,
                                     challenge_id=challenge.challenge_id)) as pending:
        expires = now + authz_lifetime if problem is None else None
        if not db.finish_challenge(pending.db, challenge, error=problem, authz_expires_at=expires, now=now):
            raise NotClaimed(challenge.challenge_id)
        changed: list[str] = []
        for order in db.orders_waiting_for(pending.db, account.account_id, authz.authz_id):
            if problem is not None:
                db.set_order_status(pending.db, order.order_id, db.INVALID, now, _order_failed(authz, problem))
                changed.append(order.order_id)
                continue
            states = db.statuses(pending.db, order.authz_ids)
            if order.status == db.PENDING and all(states[i].status_at(now) == db.VALID for i in order.authz_ids):
                db.set_order_status(pending.db, order.order_id, db.READY, now)
                changed.append(order.order_id)
        pending.change = {"type": challenge.type, "identifier": authz.identifier,
                          "status": db.VALID if problem is None else db.INVALID, "addresses": addresses[:10]}
        if problem is None:
            pending.change["orders_ready"] = changed
        else:
            pending.change["error"] = problem
            pending.change["orders_invalid"] = changed
    return True


def deactivate_authorization(actor: Actor, account: store.Account, authz: db.Authorization, now: datetime) -> None:
    """pending or valid -> deactivated (AcmeAuthorizationDeactivated); the orders waiting for it are invalid.
    malformed when it is neither pending nor valid."""
    with changing(actor, AcmeAuthorizationDeactivated, _about(account, authorization_id=authz.authz_id)) as pending:
        if authz.status_at(now) not in (db.PENDING, db.VALID) or not db.deactivate_authz(pending.db, authz.authz_id, now):
            raise malformed(f"the authorization is {authz.status_at(now)}: only a pending or valid one can be deactivated")
        invalidated = []
        for order in db.orders_waiting_for(pending.db, account.account_id, authz.authz_id):
            db.set_order_status(pending.db, order.order_id, db.INVALID, now, {
                "type": ERROR_PREFIX + AcmeErrorType.UNAUTHORIZED.value, "status": 403,
                "detail": f"the authorization of {authz.identifier} was deactivated"})
            invalidated.append(order.order_id)
        pending.change = {"identifier": authz.identifier, "status": db.DEACTIVATED, "orders_invalid": invalidated}


# -- what the door answers ---------------------------------------------------------------------------------------


def _stamp(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def order_document(urls: UrlMaker, order: db.Order, now: datetime) -> dict[str, Any]:
    document: dict[str, Any] = {
        "status": order.status_at(now), "expires": _stamp(order.expires_at),
        "identifiers": [{"type": "dns", "value": i} for i in order.identifiers],
        "authorizations": [urls.of(f"authz/{a}") for a in order.authz_ids],
        "finalize": urls.of(f"order/{order.order_id}/finalize"),
    }
    if order.error is not None:
        document["error"] = order.error
    if order.replaces is not None:
        document["replaces"] = order.replaces
    if order.status == db.VALID:  # its certificate (certificates.py), downloaded with POST-as-GET
        document["certificate"] = urls.of(f"cert/{order.order_id}")
    return document


def challenge_document(urls: UrlMaker, challenge: db.Challenge) -> dict[str, Any]:
    document: dict[str, Any] = {"type": challenge.type, "url": urls.of(f"chall/{challenge.challenge_id}"),
                                "status": challenge.status, "token": challenge.token}
    if challenge.validated_at is not None:
        document["validated"] = _stamp(challenge.validated_at)
    if challenge.error is not None:
        document["error"] = challenge.error
    return document


def authz_document(urls: UrlMaker, authz: db.Authorization, challenges: list[db.Challenge], now: datetime) -> dict[str, Any]:
    document: dict[str, Any] = {
        "identifier": {"type": "dns", "value": authz.identifier.removeprefix("*.")},
        "status": authz.status_at(now), "expires": _stamp(authz.expires_at),
        "challenges": [challenge_document(urls, c) for c in challenges],
    }
    if authz.wildcard:
        document["wildcard"] = True
    return document


def owned(account: store.Account, thing: db.Order | db.Authorization | None, what: str, ident: str) -> Any:
    """``thing`` when it is the account's; the same unauthorized answer whether it exists or not otherwise."""
    if thing is None or thing.account_id != account.account_id:
        raise unauthorized(f"this account has no {what} {ident[:64]!r}")
    return thing
