"""What the deployer believes before it installs or provisions anything (services/deployer/trust.py,
handlers/projection.py; docs/decisions/0011-deployer-trusts-nothing.md): a table of named
certificates against `check_issued`, and the projection it keeps of connector pins, profile key
kinds and accepted certificate ids (with the key of the latest accepted CSR), fed by
certrail.events.gateway records."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry

from services.common.certificate_trust import spki_der
from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.consumer import InvalidMessage
from services.common.contracts.admin import (
    AdminOutcome,
    ConnectorCreated,
    ConnectorDeleted,
    ConnectorUpdated,
    ProfileCreated,
    ProfileDeleted,
    ProfileUpdated,
)
from services.common.contracts.commands import ProvisionCertificate
from services.common.contracts.envelope import Envelope, Message, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateIssued, RequestAccepted
from services.common.contracts.fields import KeyAlgorithm, RequestKind
from services.common.contracts.identity import issuance_id
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session, write_session
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.deployer import projection, store
from services.deployer.context import DeployerContext
from services.deployer.handlers.bot import on_provision
from services.deployer.handlers.projection import on_connector_event, on_profile_event, on_request_accepted
from services.deployer.metrics import DeployerMetrics
from services.deployer.targets.base import public_key_sha256
from services.deployer.trust import Expectation, Refused, check_issued
from services.gateway import store as gateway_store
from tests.deployer_support import MiniCA
from tests.gateway_fixtures import seed
from tests.unit.examples import NOW

OURS, OTHER, EVIL = MiniCA(), MiniCA(), MiniCA()  # the connector's CA, another connector's CA, an attacker's CA
BOT_KEY = ec.generate_private_key(ec.SECP256R1())
HELD_KEY, RENEWED_KEY = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())  # requester-held


def _key_hash(key: ec.EllipticCurvePrivateKey) -> str:
    return hashlib.sha256(spki_der(key.public_key())).hexdigest()


def _pin(ca: MiniCA) -> str:
    return ca.issuing.fingerprint(hashes.SHA256()).hex()


def _issued(ca: MiniCA, *, key: ec.EllipticCurvePrivateKey | None = None, chain: tuple[str, ...] | None = None,
            **lies: str) -> CertificateIssued:
    certificate, _ = ca.leaf(["www.unit.test"], key)
    cert = x509.load_pem_x509_certificate(certificate.encode())
    values: dict[str, object] = dict(
        issuance_id=issuance_id("web-1", 1), certificate_id="web-1", request_id="req-1", connector="sim", profile="web",
        serial=format(cert.serial_number, "x"), certificate=certificate, chain=list(chain or ca.chain),
        subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(), sans=["dns:www.unit.test"],
        not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc, public_key_sha256=public_key_sha256(cert))
    values.update(lies)
    return CertificateIssued.model_validate(values)


def _bot_hash() -> frozenset[str]:
    certificate, _ = OURS.leaf(["www.unit.test"], BOT_KEY)
    return frozenset({public_key_sha256(x509.load_pem_x509_certificate(certificate.encode()))})


@dataclass(frozen=True)
class Case:
    issued: Callable[[], CertificateIssued]
    expected: Callable[[], Expectation]
    code: ErrorCode | None  # None: installed


ACCEPTED = lambda: Expectation(pinned_ca_sha256=_pin(OURS), accepted=True)  # noqa: E731
CSR_ACCEPTED = lambda: Expectation(_pin(OURS), accepted=True, accepted_key_sha256=_key_hash(HELD_KEY),  # noqa: E731
                                   accepted_request_id="req-1")
CASES = {
    # an accepted request from before RequestAccepted carried the CSR's key hash: no key expected
    "valid-requester-held": Case(lambda: _issued(OURS), ACCEPTED, None),
    "requester-held-key-of-the-accepted-csr": Case(lambda: _issued(OURS, key=HELD_KEY), CSR_ACCEPTED, None),
    "requester-held-another-key-than-the-accepted-csrs": Case(lambda: _issued(OURS), CSR_ACCEPTED,
                                                              ErrorCode.CERTIFICATE_MISMATCH),
    "requester-held-the-accepted-csrs-key-from-another-ca": Case(lambda: _issued(EVIL, key=HELD_KEY), CSR_ACCEPTED,
                                                                 ErrorCode.CERTIFICATE_UNTRUSTED),
    # a bot-held certificate is held against the keys the deployer made, whichever CSR was accepted last
    "bot-held-an-earlier-generated-key": Case(lambda: _issued(OURS, key=BOT_KEY), lambda: Expectation(
        _pin(OURS), accepted=True, bot_key_hashes=_bot_hash(), accepted_key_sha256=_key_hash(HELD_KEY)), None),
    "valid-bot-held": Case(lambda: _issued(OURS, key=BOT_KEY),
                           lambda: Expectation(_pin(OURS), accepted=False, bot_key_hashes=_bot_hash()), None),
    "evil-ca": Case(lambda: _issued(EVIL), ACCEPTED, ErrorCode.CERTIFICATE_UNTRUSTED),
    "evil-leaf-behind-the-pinned-chain": Case(lambda: _issued(EVIL, chain=OURS.chain), ACCEPTED,
                                              ErrorCode.CERTIFICATE_UNTRUSTED),
    "chain-to-another-connectors-ca": Case(lambda: _issued(OTHER), ACCEPTED, ErrorCode.CERTIFICATE_UNTRUSTED),
    "no-pin-known-for-the-connector": Case(lambda: _issued(OURS), lambda: Expectation(None, accepted=True),
                                           ErrorCode.CERTIFICATE_UNTRUSTED),
    "right-ca-wrong-key": Case(lambda: _issued(OURS),
                               lambda: Expectation(_pin(OURS), accepted=True, bot_key_hashes=_bot_hash()),
                               ErrorCode.CERTIFICATE_MISMATCH),
    "announced-key-is-not-the-certificates": Case(lambda: _issued(OURS, public_key_sha256="ab" * 32), ACCEPTED,
                                                  ErrorCode.CERTIFICATE_MISMATCH),
    "announced-serial-is-not-the-certificates": Case(lambda: _issued(OURS, serial="1234"), ACCEPTED,
                                                     ErrorCode.CERTIFICATE_MISMATCH),
    "unknown-certificate-id": Case(lambda: _issued(OURS), lambda: Expectation(_pin(OURS), accepted=False),
                                   ErrorCode.CERTIFICATE_NOT_REQUESTED),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_check_issued(case: Case) -> None:
    issued = case.issued()
    if case.code is None:
        check_issued(issued, case.expected())
        return
    with pytest.raises(Refused) as refused:
        check_issued(issued, case.expected())
    assert refused.value.code is case.code
    assert "BEGIN" not in refused.value.message  # names and hashes, never a PEM


# -- the projection, fed by certrail.events.gateway ----------------------------------------------------------------


@pytest.fixture
def ctx(tmp_path: Path) -> DeployerContext:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    upgrade(db)
    return DeployerContext(engine=make_engine(db), box=SecretBox([generate_key()]), topics=Topics("certrail"),
                           metrics=DeployerMetrics(CollectorRegistry()), requester="certrail-deployer",
                           request_key_id="deployer-1", request_key=b"k" * 32, clock=lambda: NOW)


def _envelope(data: Message) -> Envelope:
    return make_event(data, id=str(uuid.uuid4()), source="/test/gateway", time=NOW)


def _pin_of(ctx: DeployerContext, connector: str) -> str | None:
    with ctx.read() as session:
        return projection.connector_pin(session, connector)


async def test_a_connector_pin_is_taken_at_creation_moved_only_by_a_re_pin_and_forgotten_on_delete(
        ctx: DeployerContext) -> None:
    def admin(cls: type[Message], pin: str | None, outcome: AdminOutcome = AdminOutcome.SUCCEEDED) -> Envelope:
        change = {"pinned_ca_sha256": pin} if pin else {"base_url": "https://emca.test"}
        return _envelope(cls.model_validate({"actor": "admin", "outcome": outcome, "connector": "sim", "change": change}))

    assert await on_connector_event(ctx, admin(ConnectorCreated, _pin(OURS), AdminOutcome.REFUSED)) == []
    assert _pin_of(ctx, "sim") is None  # a refused creation pins nothing
    await on_connector_event(ctx, admin(ConnectorCreated, _pin(OURS)))
    await on_connector_event(ctx, admin(ConnectorCreated, _pin(EVIL)))  # a second creation never moves the pin
    await on_connector_event(ctx, admin(ConnectorUpdated, None))  # an edit that kept the pin
    assert _pin_of(ctx, "sim") == _pin(OURS)
    await on_connector_event(ctx, admin(ConnectorUpdated, _pin(OTHER)))  # a re-pin
    assert _pin_of(ctx, "sim") == _pin(OTHER)
    with pytest.raises(InvalidMessage):
        await on_connector_event(ctx, admin(ConnectorUpdated, "not-a-sha256"))
    await on_connector_event(ctx, admin(ConnectorDeleted, None))
    assert _pin_of(ctx, "sim") is None


async def test_accepted_issue_and_renew_requests_are_remembered_revocations_are_not(ctx: DeployerContext) -> None:
    for kind, certificate_id in ((RequestKind.ISSUE, "a-1"), (RequestKind.RENEW, "a-2"), (RequestKind.REVOKE, "a-3")):
        accepted = RequestAccepted(request_id=f"r-{certificate_id}", requester="ci", kind=kind, certificate_id=certificate_id,
                                   profile="web", connector="sim")
        assert await on_request_accepted(ctx, _envelope(accepted)) == []
    with ctx.read() as session:
        assert [projection.is_accepted(session, c) for c in ("a-1", "a-2", "a-3")] == [True, True, False]


async def test_the_latest_accepted_csr_sets_the_expected_key_a_renewal_with_a_new_csr_replaces_it(
        ctx: DeployerContext) -> None:
    with ctx.write() as session:
        projection.set_pin(session, "sim", _pin(OURS), "seed", NOW, replace=False)

    async def accept(kind: RequestKind, request_id: str, key: ec.EllipticCurvePrivateKey | None) -> Expectation:
        await on_request_accepted(ctx, _envelope(RequestAccepted(
            request_id=request_id, requester="ci", kind=kind, certificate_id="web-1", profile="web", connector="sim",
            issuance_id=issuance_id("web-1", 1), public_key_sha256=None if key is None else _key_hash(key))))
        with ctx.read() as session:
            return projection.expectation(session, "web-1", "sim")

    first, renewed = _issued(OURS, key=HELD_KEY), _issued(OURS, key=RENEWED_KEY)
    expected = await accept(RequestKind.ISSUE, "req-1", HELD_KEY)
    assert (expected.accepted_key_sha256, expected.accepted_request_id) == (_key_hash(HELD_KEY), "req-1")
    check_issued(first, expected)
    with pytest.raises(Refused) as refused:
        check_issued(renewed, expected)
    assert refused.value.code is ErrorCode.CERTIFICATE_MISMATCH and "req-1" in refused.value.message

    expected = await accept(RequestKind.RENEW, "req-2", RENEWED_KEY)  # a renewal with a new CSR: only the new key
    check_issued(renewed, expected)
    with pytest.raises(Refused) as refused:
        check_issued(first, expected)
    assert refused.value.code is ErrorCode.CERTIFICATE_MISMATCH
    assert _key_hash(RENEWED_KEY) in refused.value.message and "req-2" in refused.value.message

    await on_request_accepted(ctx, _envelope(RequestAccepted(  # a revocation changes no expectation
        request_id="req-3", requester="ci", kind=RequestKind.REVOKE, certificate_id="web-1", profile="web", connector="sim",
        public_key_sha256=_key_hash(HELD_KEY))))
    with ctx.read() as session:
        assert projection.expectation(session, "web-1", "sim").accepted_key_sha256 == _key_hash(RENEWED_KEY)
    # a request accepted without the hash (a gateway from before the field): no key is expected, as before
    expected = await accept(RequestKind.RENEW, "req-4", None)
    assert expected.accepted and expected.accepted_key_sha256 is None
    check_issued(first, expected)


def _provision(profile: str) -> Envelope:
    return _envelope(ProvisionCertificate(certificate_id=f"{profile}-1", request_id="p-1", profile=profile, connector="sim",
                                          key_algorithm=KeyAlgorithm.EC_P256, sans=["dns:bot.unit.test"]))


async def test_the_deployer_makes_no_key_for_a_profile_it_knows_is_requester_held(ctx: DeployerContext) -> None:
    def profile_event(cls: type[Message], name: str, kind: str | None) -> Envelope:
        change = {"key_generation": kind} if kind else {"validity_days": 30}
        return _envelope(cls.model_validate({"actor": "admin", "outcome": AdminOutcome.SUCCEEDED, "profile": name, "change": change}))

    await on_profile_event(ctx, profile_event(ProfileCreated, "held", "requester"))
    await on_profile_event(ctx, profile_event(ProfileCreated, "bots", "bot"))
    await on_profile_event(ctx, profile_event(ProfileUpdated, "bots", None))  # kept its key generation
    with pytest.raises(InvalidMessage) as refused:
        await on_provision(ctx, _provision("held"))
    assert refused.value.code is ErrorCode.REQUESTER_NOT_AUTHORISED
    assert [(s.labels, s.value) for m in ctx.metrics.refusals.collect() for s in m.samples if s.name.endswith("_total")] == [
        ({"code": "REQUESTER_NOT_AUTHORISED"}, 1.0)]
    (request,) = await on_provision(ctx, _provision("bots"))
    assert request.topic == "certrail.requests"
    # a profile the deployer has not heard of is served: the gateway refuses the deployer outside bot-key profiles
    (unknown,) = await on_provision(ctx, _provision("unheard"))
    assert unknown.topic == "certrail.requests"
    await on_profile_event(ctx, profile_event(ProfileUpdated, "bots", "requester"))
    with pytest.raises(InvalidMessage):
        await on_provision(ctx, _provision("bots"))
    await on_profile_event(ctx, profile_event(ProfileDeleted, "held", None))
    with ctx.read() as session:
        assert projection.profile_key_generation(session, "held") is None
        assert not store.has_bot_keys(session, "held-1")  # no key was made for the refused provision


def test_migration_0008_fills_the_projection_once_from_what_exists(tmp_path: Path) -> None:
    """An upgraded installation keeps deploying what it already knew: pins, profile kinds and
    managed certificate ids are copied when the tables are created."""
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(db, "0007")
    engine = make_engine(db)
    try:
        seed(engine)  # connectors emca and off (pin "0" * 64), profiles web (requester), bots (bot), offline
        with write_session(engine) as session:
            gateway_store.ensure_certificate(session, certificate_id="known-1", profile="bots", connector="emca",
                                             requester="ops", key_generation="bot", sans=["dns:a.example.com"], now=NOW)
        upgrade(db)
        with read_session(engine) as session:
            assert projection.connector_pin(session, "emca") == "0" * 64
            assert [projection.profile_key_generation(session, p) for p in ("web", "bots", "nope")] == ["requester", "bot", None]
            assert projection.is_accepted(session, "known-1") and not projection.is_accepted(session, "unknown-1")
            # migration 0009 fills in no key: a certificate accepted before the field expects none
            assert projection.accepted(session, "known-1") == projection.Accepted("migration-0008", None)
    finally:
        engine.dispose()
