"""API tokens: format, hashing at rest, authentication, and the role/scope decision table."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from services.common.contracts.errors import ErrorCode
from services.gateway.policy.profile import ProvisioningProfile
from services.gateway.policy.tokens import (
    Action,
    Role,
    StoredToken,
    TokenClaims,
    authenticate_token,
    authorise,
    generate_token,
    hash_token,
    token_id_of,
    verify_token,
    visible_profiles,
)
from services.gateway.policy.violation import PolicyViolation

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def profile(name: str, requesters: list[str]) -> ProvisioningProfile:
    return ProvisioningProfile.model_validate_json(
        json.dumps(
            {
                "name": name,
                "connector": "emca-main",
                "ca_profile": "TLS Server",
                "key_generation": "requester",
                "allowed_requesters": requesters,
                "domain_rules": {"dns_suffixes": ["example.com"]},
                "validity_days": 90,
            }
        )
    )


WEB = profile("web", ["ci-pipeline"])
DB = profile("db", ["dba-bot"])


def test_generated_tokens_are_recognisable_random_and_hashed() -> None:
    first, second = generate_token(), generate_token()
    assert re.fullmatch(r"ctr_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", first.token)
    assert first.token != second.token and first.token_id != second.token_id
    assert first.token_hash == hash_token(first.token) and first.token not in first.token_hash
    assert first.token not in repr(first)
    assert token_id_of(first.token) == first.token_id


def test_verify_token() -> None:
    new = generate_token()
    assert verify_token(new.token, new.token_hash)
    assert not verify_token(new.token[:-1] + ("A" if new.token[-1] != "A" else "B"), new.token_hash)


def stored(role: Role = Role.REQUESTER, **fields: object) -> tuple[str, StoredToken]:
    new = generate_token()
    claims = TokenClaims(token_id=new.token_id, identity="ci-pipeline", role=role)
    return new.token, StoredToken(claims=claims, token_hash=new.token_hash, **fields)  # type: ignore[arg-type]


def test_authenticate_good_token() -> None:
    token, record = stored()
    assert authenticate_token(token, record, NOW) == record.claims


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("malformed", "not a certrail API token"),
        ("unknown", "the bearer token is not valid"),
        ("wrong-secret", "the bearer token is not valid"),
        ("revoked", "was revoked"),
        ("expired", "expired"),
    ],
)
def test_authenticate_refusals(case: str, fragment: str) -> None:
    token, record = stored(
        revoked_at=NOW - timedelta(minutes=1) if case == "revoked" else None,
        expires_at=NOW if case == "expired" else NOW + timedelta(days=1),
    )
    presented = {"malformed": "Bearer abc", "wrong-secret": token[:-2] + ("xx" if not token.endswith("xx") else "yy")}.get(
        case, token
    )
    with pytest.raises(PolicyViolation) as caught:
        authenticate_token(presented, None if case == "unknown" else record, NOW)
    assert caught.value.code is ErrorCode.UNAUTHENTICATED
    assert fragment in caught.value.message
    assert token not in caught.value.message


def claims(role: Role, identity: str = "ci-pipeline", profiles: set[str] | None = None) -> TokenClaims:
    return TokenClaims(
        token_id="0123456789ab", identity=identity, role=role, profiles=frozenset(profiles) if profiles is not None else None
    )


ALLOWED = [
    ("requester issues under a profile listing it", claims(Role.REQUESTER), Action.CERTIFICATE_ISSUE, WEB),
    ("requester renews", claims(Role.REQUESTER), Action.CERTIFICATE_RENEW, WEB),
    ("requester revokes", claims(Role.REQUESTER), Action.CERTIFICATE_REVOKE, WEB),
    ("scoped requester within scope", claims(Role.REQUESTER, profiles={"web"}), Action.CERTIFICATE_ISSUE, WEB),
    ("requester reads a profile", claims(Role.REQUESTER), Action.PROFILE_READ, DB),
    ("admin revokes anything", claims(Role.ADMIN, identity="alice"), Action.CERTIFICATE_REVOKE, DB),
    ("admin writes connectors", claims(Role.ADMIN, identity="alice"), Action.CONNECTOR_WRITE, None),
    ("admin manages tokens", claims(Role.ADMIN, identity="alice"), Action.TOKEN_MANAGE, None),
    ("scoped admin edits its profile", claims(Role.ADMIN, identity="alice", profiles={"web"}), Action.PROFILE_WRITE, WEB),
    ("auditor reads the audit log", claims(Role.AUDITOR, identity="bob"), Action.AUDIT_READ, None),
    ("auditor lists certificates", claims(Role.AUDITOR, identity="bob"), Action.CERTIFICATE_READ, None),
    ("auditor reads connectors", claims(Role.AUDITOR, identity="bob"), Action.CONNECTOR_READ, None),
    ("scoped auditor lists requests", claims(Role.AUDITOR, identity="bob", profiles={"db"}), Action.REQUEST_READ, None),
]


@pytest.mark.parametrize(("case", "token", "action", "on"), ALLOWED, ids=[a[0] for a in ALLOWED])
def test_allowed(case: str, token: TokenClaims, action: Action, on: ProvisioningProfile | None) -> None:
    decision = authorise(token, action, on)
    assert decision.allowed, decision.reason
    decision.raise_if_denied()


DENIED = [
    (
        "auditor cannot issue",
        claims(Role.AUDITOR),
        Action.CERTIFICATE_ISSUE,
        WEB,
        "role auditor may not certificate.issue (allowed roles: requester)",
    ),
    ("admin cannot issue", claims(Role.ADMIN), Action.CERTIFICATE_ISSUE, WEB, "role admin may not certificate.issue"),
    ("auditor cannot revoke", claims(Role.AUDITOR), Action.CERTIFICATE_REVOKE, WEB, "allowed roles: admin, requester"),
    (
        "requester not listed by the profile",
        claims(Role.REQUESTER),
        Action.CERTIFICATE_ISSUE,
        DB,
        "requester 'ci-pipeline' is not allowed to use profile 'db'",
    ),
    (
        "requester outside its scope",
        claims(Role.REQUESTER, identity="dba-bot", profiles={"web"}),
        Action.CERTIFICATE_ISSUE,
        DB,
        "is not scoped to profile 'db'",
    ),
    (
        "scoped reader outside its scope",
        claims(Role.AUDITOR, profiles={"web"}),
        Action.CERTIFICATE_READ,
        DB,
        "is not scoped to profile 'db'",
    ),
    (
        "requester cannot write profiles",
        claims(Role.REQUESTER),
        Action.PROFILE_WRITE,
        WEB,
        "role requester may not profile.write",
    ),
    (
        "requester cannot read connectors",
        claims(Role.REQUESTER),
        Action.CONNECTOR_READ,
        None,
        "role requester may not connector.read",
    ),
    (
        "auditor cannot write connectors",
        claims(Role.AUDITOR),
        Action.CONNECTOR_WRITE,
        None,
        "may not connector.write (allowed roles: admin)",
    ),
    (
        "scoped admin cannot write connectors",
        claims(Role.ADMIN, profiles={"web"}),
        Action.CONNECTOR_WRITE,
        None,
        "needs an unscoped token",
    ),
    (
        "scoped admin cannot manage tokens",
        claims(Role.ADMIN, profiles={"web"}),
        Action.TOKEN_MANAGE,
        None,
        "needs an unscoped token",
    ),
    ("requester cannot read the audit log", claims(Role.REQUESTER), Action.AUDIT_READ, None, "role requester may not audit.read"),
]


@pytest.mark.parametrize(("case", "token", "action", "on", "fragment"), DENIED, ids=[d[0] for d in DENIED])
def test_denied(case: str, token: TokenClaims, action: Action, on: ProvisioningProfile | None, fragment: str) -> None:
    decision = authorise(token, action, on)
    assert not decision.allowed
    assert decision.code is ErrorCode.REQUESTER_NOT_AUTHORISED
    assert fragment in decision.reason
    with pytest.raises(PolicyViolation) as caught:
        decision.raise_if_denied()
    assert caught.value.code is ErrorCode.REQUESTER_NOT_AUTHORISED and fragment in caught.value.message


def test_profile_bound_writes_need_the_profile() -> None:
    with pytest.raises(ValueError, match="certificate.issue is about one profile"):
        authorise(claims(Role.REQUESTER), Action.CERTIFICATE_ISSUE, None)


def test_visible_profiles() -> None:
    assert visible_profiles(claims(Role.AUDITOR)) is None
    assert visible_profiles(claims(Role.AUDITOR, profiles={"web"})) == frozenset({"web"})
