"""The ACME door's audited changes, each written in one transaction with its admin event in the gateway's
outbox (services/gateway/config/change.py; decision 0019), published by the door after the commit:

- by an admin (``/v1/acme``, ``certrail acme eab``): EAB key created (AcmeEabKeyCreated; the HMAC key is
  answered once, never in the event: ``hmac_key: ***``), revoked (AcmeEabKeyRevoked); a refusal is recorded
  like every admin refusal;
- by an ACME account (actor ``acme:<account id>``): created with its EAB key, which it binds
  (AcmeAccountCreated), contacts changed (AcmeAccountUpdated), key rolled over (AcmeAccountKeyChanged),
  deactivated (AcmeAccountDeactivated), a certificate's revocation asked with revokeCert and accepted by the intake
  (AcmeCertificateRevoked; actor: the ordering account's, also when the JWS was signed with the certificate's key,
  which ``signed_with`` tells). Only what succeeded is recorded: refusals of the ACME door are answered to an
  unauthenticated client and would let anyone fill the audit log.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from services.common.connectors.secretbox import SecretBox
from services.common.contracts.admin import (
    REDACTED,
    AcmeAccountCreated,
    AcmeAccountDeactivated,
    AcmeAccountKeyChanged,
    AcmeAccountUpdated,
    AcmeCertificateRevoked,
    AcmeEabKeyCreated,
    AcmeEabKeyRevoked,
)
from services.common.contracts.errors import ErrorCode
from services.common.db import read_session
from services.gateway import store as gateway_store
from services.gateway.acme import store
from services.gateway.acme.jws import AccountKey, b64url_encode
from services.gateway.acme.problems import AcmeError, AcmeErrorType, unauthorized
from services.gateway.api_common import Problem
from services.gateway.config.change import Actor, changing

HMAC_KEY_BYTES = 32
REFUSED_KEY_ID = "none"  # the key id of a refused creation's event (no key exists)
EAB_KEY_NOT_FOUND = "ACME_EAB_KEY_NOT_FOUND"
PROFILE_REFUSES_REQUESTER = "PROFILE_REFUSES_REQUESTER"


def new_eab_key_id() -> str:
    return "eab-" + secrets.token_hex(10)


def new_account_id() -> str:
    return secrets.token_hex(12)


def account_actor(engine: Any, account_id: str, clock: Any) -> Actor:
    return Actor(engine, f"acme:{account_id}", clock)


def new_hmac_key() -> bytes:
    """A random EAB HMAC key whose base64url text does not start with "-": pasted after ``--eab-hmac-key`` (certbot) or
    ``--eab.hmac`` (lego) unquoted, such a value is taken for an option and the client refuses the command line. It
    leaves 63/64 of the keys, of 256 random bits."""
    while True:
        key = secrets.token_bytes(HMAC_KEY_BYTES)
        if not b64url_encode(key).startswith("-"):
            return key


def create_eab_key(actor: Actor, box: SecretBox, *, requester: str, profiles: list[str]) -> tuple[store.EabKey, bytes]:
    """A new EAB key for ``requester`` and ``profiles`` (each must exist and allow the requester): the key and its
    HMAC key (to answer once). PROFILE_NOT_FOUND, PROFILE_REFUSES_REQUESTER (422) otherwise."""
    with changing(actor, AcmeEabKeyCreated, {"requester": requester, "eab_key_id": REFUSED_KEY_ID}) as pending:
        pending.change = {"profiles": sorted(profiles), "hmac_key": REDACTED}
        for name in profiles:
            stored = gateway_store.get_profile(pending.db, name)
            if stored is None:
                raise Problem(ErrorCode.PROFILE_NOT_FOUND, f"profile {name!r} does not exist", status=422)
            if not stored.profile.allows_requester(requester):
                raise Problem(PROFILE_REFUSES_REQUESTER, f"profile {name!r} does not list requester {requester!r} in "
                              "allowed_requesters", status=422)
        key_id, hmac_key = new_eab_key_id(), new_hmac_key()
        store.add_eab_key(pending.db, box, key_id=key_id, requester=requester, profiles=profiles, hmac_key=hmac_key,
                          created_by=actor.name, now=actor.clock())
        pending.about["eab_key_id"] = key_id
        created = store.get_eab_key(pending.db, key_id)
    assert created is not None
    return created, hmac_key


def revoke_eab_key(actor: Actor, key_id: str) -> store.EabKey:
    """ACME_EAB_KEY_NOT_FOUND (not recorded: nothing to audit) when no such key exists. An account already
    created with the key stays (deactivating it is its holder's; revoking its orders comes with them)."""
    with read_session(actor.engine) as session:
        known = store.get_eab_key(session, key_id)
    if known is None:
        raise Problem(EAB_KEY_NOT_FOUND, f"no EAB key {key_id[:80]!r}", status=404)
    with changing(actor, AcmeEabKeyRevoked, {"requester": known.requester, "eab_key_id": key_id},
                  unrecorded={EAB_KEY_NOT_FOUND}) as pending:
        if not store.revoke_eab_key(pending.db, key_id, actor.clock()):
            raise Problem(EAB_KEY_NOT_FOUND, f"no EAB key {key_id[:80]!r}", status=404)
        pending.change = {"revoked": True}
        revoked = store.get_eab_key(pending.db, key_id)
    assert revoked is not None
    return revoked


def create_account(actor_of: Any, *, key: AccountKey, contact: list[str], terms_agreed: bool, eab: store.EabKey,
                   now: datetime) -> tuple[store.Account, Actor]:
    """The account of ``key``, bound to ``eab`` (which it uses up) in the same transaction as its event.
    unauthorized when the EAB key was used or revoked meanwhile; a 409 when another request created an
    account for the same key meanwhile. ``actor_of(account_id)``: the account's Actor."""
    account_id = new_account_id()
    actor: Actor = actor_of(account_id)
    try:
        with changing(actor, AcmeAccountCreated, {"requester": eab.requester, "account_id": account_id}) as pending:
            if not store.bind_eab_key(pending.db, eab.key_id, account_id, now):
                raise unauthorized("the External Account Binding key was used or revoked meanwhile")
            account = store.add_account(pending.db, account_id=account_id, jwk=key.public_json(), thumbprint=key.thumbprint,
                                        contact=contact, terms_agreed=terms_agreed, eab=eab, now=now)
            pending.change = {"eab_key_id": eab.key_id, "profiles": eab.profiles, "jwk_thumbprint": key.thumbprint,
                              "contact": contact}
    except IntegrityError:
        raise AcmeError(AcmeErrorType.MALFORMED, "an account for this key was created meanwhile: ask again", status=409) from None
    return account, actor


def _changed(actor: Actor, cls: Any, account: store.Account, change: dict[str, Any], now: datetime,
             **values: Any) -> store.Account:
    try:
        with changing(actor, cls, {"requester": account.requester, "account_id": account.account_id}) as pending:
            changed = store.change_account(pending.db, account.account_id, now, **values)
            if changed is None:
                raise unauthorized("the account is not valid (deactivated meanwhile)")
            pending.change = change
    except IntegrityError:  # another account took the new key meanwhile
        raise AcmeError(AcmeErrorType.MALFORMED, "another account uses this key", status=409) from None
    return changed


def update_contact(actor: Actor, account: store.Account, contact: list[str], now: datetime) -> store.Account:
    return _changed(actor, AcmeAccountUpdated, account, {"contact": contact}, now, contact=contact)


def deactivate(actor: Actor, account: store.Account, now: datetime) -> store.Account:
    return _changed(actor, AcmeAccountDeactivated, account, {"status": store.DEACTIVATED}, now, status=store.DEACTIVATED)


def change_key(actor: Actor, account: store.Account, new: AccountKey, now: datetime) -> store.Account:
    return _changed(actor, AcmeAccountKeyChanged, account,
                    {"old_jwk_thumbprint": account.jwk_thumbprint, "jwk_thumbprint": new.thumbprint}, now,
                    jwk=new.public_json(), thumbprint=new.thumbprint)


def record_revocation(actor: Actor, account: store.Account, order_id: str, change: dict[str, Any]) -> None:
    """AcmeCertificateRevoked (the revocation the intake accepted: certificate id, serial, reason, request id and
    whether the account or the certificate's key signed) in a transaction of its own; the door publishes it after."""
    about = {"requester": account.requester, "account_id": account.account_id, "order_id": order_id}
    with changing(actor, AcmeCertificateRevoked, about) as pending:
        pending.change = change
