"""The gateway's SQL state: provisioning profiles, API tokens, requester keys, the request
dedupe table (with the exact records published for each request id) and managed certificates.
Each function takes a Session; callers own the transaction (services/common/db.py)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine, bindparam, delete, func, select, union
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.common.connectors.secretbox import SecretBox
from services.common.contracts.fields import RequestKind
from services.common.db import core, read_only
from services.common.db_schema import (
    GatewayCertificate,
    GatewayIssuedSerial,
    GatewayProfile,
    GatewayRequest,
    GatewayRequesterKey,
    GatewayRequestStatus,
    GatewayToken,
)
from services.common.runtime.prepared import PreparedRow, prepared
from services.gateway.policy.profile import ProvisioningProfile
from services.gateway.policy.request_auth import RequesterKey
from services.gateway.policy.tokens import Role, StoredToken, TokenClaims

# -- profiles ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredProfile:
    profile: ProvisioningProfile
    revision: int
    created_at: datetime
    updated_at: datetime

    def describe(self) -> dict[str, Any]:
        return {**self.profile.model_dump(mode="json"), "revision": self.revision,
                "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat()}


def _profile(row: GatewayProfile) -> StoredProfile:
    return StoredProfile(ProvisioningProfile.model_validate_json(row.spec), row.revision, row.created_at, row.updated_at)


def get_profile(session: Session, name: str) -> StoredProfile | None:
    row = session.get(GatewayProfile, name)
    return None if row is None else _profile(row)


def list_profiles(session: Session) -> list[StoredProfile]:
    return [_profile(row) for row in session.scalars(select(GatewayProfile).order_by(GatewayProfile.name))]


def put_profile(session: Session, profile: ProvisioningProfile, now: datetime) -> StoredProfile:
    """Create or replace (revision + 1)."""
    row = session.get(GatewayProfile, profile.name)
    spec = profile.model_dump_json()
    if row is None:
        row = GatewayProfile(name=profile.name, connector=profile.connector, spec=spec, revision=1, created_at=now, updated_at=now)
        session.add(row)
    else:
        row.connector, row.spec, row.revision, row.updated_at = profile.connector, spec, row.revision + 1, now
    session.flush()
    return _profile(row)


def delete_profile(session: Session, name: str) -> bool:
    return session.execute(delete(GatewayProfile).where(GatewayProfile.name == name)).rowcount > 0  # type: ignore[attr-defined]


def profiles_using_connector(session: Session, connector: str) -> list[str]:
    return list(session.scalars(select(GatewayProfile.name).where(GatewayProfile.connector == connector)))


def live_certificates_of_connector(session: Session, connector: str, now: datetime, examples: int = 5) -> tuple[int, list[str]]:
    """Certificates the gateway manages through ``connector`` that are live: a current serial (the gateway's own
    projection of the issuer's events) not yet expired, or an issue or renew request accepted and still waiting for
    its outcome (no outcome folded yet, or waiting for an approval at emCA). The count and the first ids."""
    serials, certificates = GatewayIssuedSerial.__table__, GatewayCertificate.__table__
    requests, outcomes = GatewayRequest.__table__, GatewayRequestStatus.__table__
    issued = (select(serials.c.certificate_id).where(serials.c.connector == connector, serials.c.status == "active",
                                                    serials.c.not_after.is_(None) | (serials.c.not_after > now)))
    waiting = (select(requests.c.certificate_id)
               .join(certificates, certificates.c.certificate_id == requests.c.certificate_id)
               .outerjoin(outcomes, outcomes.c.request_id == requests.c.request_id)
               .where(certificates.c.connector == connector, requests.c.status == "accepted",
                      requests.c.kind.in_((RequestKind.ISSUE.value, RequestKind.RENEW.value)),
                      outcomes.c.request_id.is_(None) | (outcomes.c.state == "pending_approval")))
    live = union(issued, waiting).subquery()
    count = int(session.scalar(select(func.count()).select_from(live)) or 0)
    ids = list(session.scalars(select(live.c.certificate_id).order_by(live.c.certificate_id).limit(examples))) if count else []
    return count, ids


def certificates_of_profile(session: Session, profile: str) -> int:
    return int(session.scalar(select(func.count()).select_from(GatewayCertificate).where(GatewayCertificate.profile == profile)) or 0)


# -- tokens -----------------------------------------------------------------------------------------


def _claims(row: GatewayToken) -> TokenClaims:
    profiles = frozenset(json.loads(row.profiles)) if row.profiles is not None else None
    return TokenClaims(token_id=row.token_id, identity=row.identity, role=Role(row.role), profiles=profiles)


def get_token(session: Session, token_id: str) -> StoredToken | None:
    row = session.get(GatewayToken, token_id)
    if row is None:
        return None
    return StoredToken(claims=_claims(row), token_hash=row.token_hash, expires_at=row.expires_at, revoked_at=row.revoked_at)


def add_token(session: Session, *, token_id: str, token_hash: str, identity: str, role: Role, profiles: Sequence[str] | None,
              description: str | None, created_by: str, now: datetime, expires_at: datetime | None) -> None:
    session.add(GatewayToken(
        token_id=token_id, token_hash=token_hash, identity=identity, role=role.value,
        profiles=json.dumps(sorted(profiles)) if profiles is not None else None, description=description,
        created_by=created_by, created_at=now, expires_at=expires_at, revoked_at=None,
    ))
    session.flush()


def revoke_token(session: Session, token_id: str, now: datetime) -> bool:
    row = session.get(GatewayToken, token_id)
    if row is None:
        return False
    if row.revoked_at is None:
        row.revoked_at = now
    return True


def list_tokens(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(select(GatewayToken).order_by(GatewayToken.created_at))
    return [{"token_id": r.token_id, "identity": r.identity, "role": r.role,
             "profiles": json.loads(r.profiles) if r.profiles is not None else None, "description": r.description,
             "created_by": r.created_by, "created_at": r.created_at.isoformat(),
             "expires_at": r.expires_at.isoformat() if r.expires_at else None,
             "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None} for r in rows]


# -- requester keys -----------------------------------------------------------------------------------


def add_requester_key(session: Session, box: SecretBox, *, requester: str, key_id: str, secret: bytes | None,
                      public_key_pem: str | None, now: datetime) -> None:
    # validated by constructing the policy object first (sizes, key types)
    _requester_key(requester, key_id, secret, public_key_pem)
    session.merge(GatewayRequesterKey(
        requester=requester, key_id=key_id, secret=box.encrypt(secret) if secret is not None else None,
        secrets_key_id=box.current_key_id if secret is not None else None, public_key_pem=public_key_pem,
        created_at=now, revoked_at=None,
    ))
    session.flush()


def revoke_requester_key(session: Session, requester: str, key_id: str, now: datetime) -> bool:
    row = session.get(GatewayRequesterKey, (requester, key_id))
    if row is None:
        return False
    row.revoked_at = row.revoked_at or now
    return True


def _requester_key(requester: str, key_id: str, secret: bytes | None, public_key_pem: str | None) -> RequesterKey:
    if public_key_pem is not None:
        public = serialization.load_pem_public_key(public_key_pem.encode())
        return RequesterKey(requester=requester, key_id=key_id, public_key=public)  # type: ignore[arg-type]
    return RequesterKey(requester=requester, key_id=key_id, secret=secret)


_REQUESTER_KEY = (select(GatewayRequesterKey.secret, GatewayRequesterKey.public_key_pem, GatewayRequesterKey.revoked_at)
                  .where(GatewayRequesterKey.requester == bindparam("requester"),
                         GatewayRequesterKey.key_id == bindparam("key_id")))


class SqlRequesterKeys:
    """`RequesterKeys` over ``gateway_requester_keys`` (revoked keys are unknown).

    Every lookup reads the row (a key revoked a moment ago is unknown at once), in a read-only transaction of its
    own (on SQLite it takes no write turn from the gateway's writers); what is built from it (the secret decrypted,
    the public key parsed) is kept for the same stored value only, so a replaced or rotated key is never served
    from memory."""

    def __init__(self, engine: Engine, box: SecretBox, *, built: int = 1024) -> None:
        self._engine = read_only(engine)
        self._box = box
        self._build = functools.lru_cache(maxsize=built)(self._build_key)

    def get(self, requester: str, key_id: str) -> RequesterKey | None:
        with self._engine.connect() as connection, connection.begin():
            row = prepared(connection).execute(_REQUESTER_KEY, {"requester": requester, "key_id": key_id}).first()
        if row is None or row.revoked_at is not None:
            return None
        return self._build(requester, key_id, row.secret, row.public_key_pem)

    def _build_key(self, requester: str, key_id: str, token: bytes | None, public_key_pem: str | None) -> RequesterKey:
        secret = self._box.decrypt(token) if token is not None else None
        return _requester_key(requester, key_id, secret, public_key_pem)


# -- requests (dedupe) ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredAnswer:
    request_id: str
    content_hash: str
    requester: str
    kind: str
    certificate_id: str | None
    status: str
    answer: dict[str, Any]
    outbound: list[dict[str, Any]]  # {topic, key, value}
    created_at: datetime


_REQUESTS = GatewayRequest.__table__
#: prebuilt: every request is looked up (dedupe) and stored, on the path of every certificate
_GET_REQUEST = select(_REQUESTS).where(_REQUESTS.c.request_id == bindparam("request_id"))
_ADD_REQUEST = _REQUESTS.insert()


def get_request(session: Session, request_id: str) -> StoredAnswer | None:
    row = core(session).execute(_GET_REQUEST, {"request_id": request_id}).first()
    if row is None:
        return None
    return StoredAnswer(row.request_id, row.content_hash, row.requester, row.kind, row.certificate_id, row.status,
                        json.loads(row.answer), json.loads(row.outbound), row.created_at)


def add_request(session: Session, answer: StoredAnswer) -> None:
    """One INSERT, executed at once (a second request under the same id in the same transaction sees it, and a
    duplicate fails here, not at the commit)."""
    core(session).execute(_ADD_REQUEST, {
        "request_id": answer.request_id, "content_hash": answer.content_hash, "requester": answer.requester,
        "kind": answer.kind, "certificate_id": answer.certificate_id, "status": answer.status,
        "answer": json.dumps(answer.answer), "outbound": json.dumps(answer.outbound), "created_at": answer.created_at})


def requests_of_certificate(session: Session, certificate_id: str) -> list[StoredAnswer]:
    rows = session.scalars(select(GatewayRequest).where(GatewayRequest.certificate_id == certificate_id)
                           .order_by(GatewayRequest.created_at))
    return [StoredAnswer(r.request_id, r.content_hash, r.requester, r.kind, r.certificate_id, r.status,
                         json.loads(r.answer), json.loads(r.outbound), r.created_at) for r in rows]


# -- managed certificates ----------------------------------------------------------------------------------


_CERTIFICATES = GatewayCertificate.__table__
_GET_CERTIFICATE = select(_CERTIFICATES).where(_CERTIFICATES.c.certificate_id == bindparam("certificate_id"))


def get_certificate(session: Session, certificate_id: str) -> PreparedRow | None:
    """The managed certificate's row (its columns as attributes: profile, connector, requester, sans, ...)."""
    return core(session).execute(_GET_CERTIFICATE, {"certificate_id": certificate_id}).first()


def next_revision(session: Session, *, certificate_id: str, profile: str, connector: str, requester: str,
                  key_generation: str, sans: Sequence[str], now: datetime) -> int:
    """Record a new issuance of the certificate and return its revision (1 for a new certificate): one
    INSERT ... ON CONFLICT DO UPDATE ... RETURNING (the connector and, when given, the SANs as last requested)."""
    statement = _revision_statement(session.get_bind().dialect.name, bool(sans))
    return int(core(session).execute(statement, {
        "certificate_id": certificate_id, "profile": profile, "connector": connector, "requester": requester,
        "key_generation": key_generation, "revision": 1, "sans": json.dumps(list(sans)), "created_at": now,
        "updated_at": now}).scalar_one())


def ensure_certificate(session: Session, *, certificate_id: str, profile: str, connector: str, requester: str,
                       key_generation: str, sans: Sequence[str], now: datetime) -> None:
    """Record a managed certificate without an issuance yet (revision 0: the deployer bot makes its key first)."""
    core(session).execute(_ensure_statement(session.get_bind().dialect.name), {
        "certificate_id": certificate_id, "profile": profile, "connector": connector, "requester": requester,
        "key_generation": key_generation, "revision": 0, "sans": json.dumps(list(sans)), "created_at": now,
        "updated_at": now})


def _dialect_insert(dialect: str) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(_CERTIFICATES)
    if dialect == "sqlite":
        return sqlite.insert(_CERTIFICATES)
    raise NotImplementedError(f"managed certificates: unsupported database {dialect!r}")


@functools.cache
def _revision_statement(dialect: str, with_sans: bool) -> Any:
    statement = _dialect_insert(dialect)
    values: dict[str, Any] = {"revision": _CERTIFICATES.c.revision + 1, "connector": statement.excluded.connector,
                              "updated_at": statement.excluded.updated_at}
    if with_sans:
        values["sans"] = statement.excluded.sans
    return statement.on_conflict_do_update(index_elements=["certificate_id"], set_=values).returning(
        _CERTIFICATES.c.revision)


@functools.cache
def _ensure_statement(dialect: str) -> Any:
    return _dialect_insert(dialect).on_conflict_do_nothing(index_elements=["certificate_id"])
