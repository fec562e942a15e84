"""The gateway's one validation path (services/gateway/intake.py) on a real SQLite database:
signed Kafka requests and token-authenticated HTTP requests become commands and
RequestAccepted, or RequestRejected with a stable code; dedupe by request id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import Engine

from services.common.certificate_trust import public_key_sha256
from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import IssueCertificate, ProvisionCertificate, RenewCertificate, RevokeCertificate
from services.common.contracts.envelope import decode
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import RequestAccepted, RequestRejected
from services.common.contracts.fields import KeyAlgorithm, RevocationReason
from services.common.contracts.identity import issuance_id
from services.common.contracts.requests import IssueRequested, RenewRequested, RevokeRequested
from services.common.contracts.signing import signed
from services.common.db import make_engine, write_session
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway import issued, store
from services.gateway.intake import Intake, Outcome, stored_records
from services.gateway.policy.tokens import Role, TokenClaims
from services.gateway.store import SqlRequesterKeys
from tests.deployer_support import MiniCA
from tests.gateway_fixtures import BOX, HMAC_KEY, NOW, TOPICS, _csr, _profile, seed


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'gw.db'}")
    upgrade(db)
    engine = make_engine(db)
    seed(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def intake(engine: Engine) -> Intake:
    return Intake(engine=engine, topics=TOPICS, keys=SqlRequesterKeys(engine, BOX), clock=lambda: NOW)


def _events(outcome: Outcome) -> list[tuple[str, object]]:
    return [(topic, decode(value, CATALOG).data) for topic, _, value in stored_records(outcome.outbound)]


def _issue(request_id: str = "req-1", certificate_id: str = "cert-1", **overrides: object) -> IssueRequested:
    values: dict[str, object] = dict(request_id=request_id, requester="ci-pipeline", profile="web",
                                     certificate_id=certificate_id, csr=_csr(), sans=["dns:www.example.com"])
    values.update(overrides)
    return signed(IssueRequested.model_validate(values), "k1", HMAC_KEY)


async def test_a_signed_kafka_request_becomes_a_command_and_request_accepted(intake: Intake) -> None:
    request = _issue()
    outcome = await intake.from_kafka("ev-1", request, None)
    assert outcome.answer.status == "accepted" and outcome.answer.issuance_id == issuance_id("cert-1", 1)
    (topic, command), (events_topic, accepted) = _events(outcome)
    assert topic == TOPICS.commands("emca") and isinstance(command, IssueCertificate)
    assert command.sans == ["dns:www.example.com"] and command.ca_profile == "TLS Server" and command.validity_days == 90
    assert events_topic == TOPICS.gateway_events and isinstance(accepted, RequestAccepted)
    assert accepted.command_id == outcome.answer.command_id and accepted.requester == "ci-pipeline"


async def test_the_raw_data_object_is_what_the_signature_covers(intake: Intake) -> None:
    request = _issue()
    raw = json.dumps({"data": request.model_dump(mode="json", exclude_none=True)}).encode()
    assert (await intake.from_kafka("ev-raw", request, raw)).answer.status == "accepted"
    tampered = json.loads(raw)
    tampered["data"]["certificate_id"] = "cert-other"
    outcome = await intake.from_kafka("ev-raw2", _issue("req-2"), json.dumps(tampered).encode())
    assert outcome.answer.error == {"code": "REQUEST_SIGNATURE_INVALID", "message": outcome.answer.error["message"]}  # type: ignore[index]


@pytest.mark.parametrize(
    ("case", "make", "code"),
    [
        ("wrong key", lambda: signed(_issue().model_copy(update={"auth": None}), "k1", b"z" * 32), ErrorCode.REQUEST_SIGNATURE_INVALID),
        ("unknown key id", lambda: signed(_issue().model_copy(update={"auth": None}), "nope", HMAC_KEY), ErrorCode.UNAUTHENTICATED),
        ("no signature", lambda: _issue().model_copy(update={"auth": None}), ErrorCode.UNAUTHENTICATED),
        ("unknown profile", lambda: _issue(profile="nope"), ErrorCode.PROFILE_NOT_FOUND),
        ("requester not allowed", lambda: signed(IssueRequested(
            request_id="r", requester="ops", profile="web", certificate_id="c", csr=_csr(), sans=["dns:www.example.com"]),
            "k1", HMAC_KEY), ErrorCode.REQUESTER_NOT_AUTHORISED),
        ("forbidden SAN", lambda: _issue(csr=_csr("www.evil.test"), sans=["dns:www.evil.test"]), ErrorCode.SAN_NOT_ALLOWED),
        ("weak key", lambda: _issue(csr=_csr(key=rsa.generate_private_key(65537, 1024))), ErrorCode.KEY_POLICY_VIOLATION),
        ("disabled connector", lambda: _issue(profile="offline"), ErrorCode.CONNECTOR_DISABLED),
        ("missing CSR", lambda: _issue(csr=None), ErrorCode.CSR_INVALID),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
async def test_rejections_have_stable_codes(intake: Intake, case: str, make, code: ErrorCode) -> None:  # type: ignore[no-untyped-def]
    outcome = await intake.from_kafka(f"ev-{case}", make(), None)
    assert outcome.answer.status == "rejected" and outcome.answer.error["code"] == code.value  # type: ignore[index]
    ((topic, rejected),) = _events(outcome)
    assert topic == TOPICS.gateway_events and isinstance(rejected, RequestRejected) and rejected.error.code is code


async def test_unauthenticated_requests_do_not_claim_the_request_id(intake: Intake) -> None:
    forged = signed(_issue().model_copy(update={"auth": None}), "k1", b"z" * 32)
    assert (await intake.from_kafka("ev-f", forged, None)).answer.status == "rejected"
    genuine = await intake.from_kafka("ev-g", _issue(), None)
    assert genuine.answer.status == "accepted"


async def test_dedupe_same_answer_same_records_and_conflict(intake: Intake) -> None:
    request = _issue()
    first = await intake.from_kafka("ev-1", request, None)
    again = await intake.from_kafka("ev-1", request, None)
    assert again.answer.replayed and again.answer.as_dict() == first.answer.as_dict()
    assert stored_records(again.outbound) == stored_records(first.outbound)  # byte for byte
    conflict = await intake.from_kafka("ev-3", _issue(csr=_csr()), None)
    assert conflict.answer.error["code"] == ErrorCode.DUPLICATE_REQUEST_CONFLICT.value  # type: ignore[index]


async def test_bot_profiles_provision_and_accept_the_deployers_csr_only(intake: Intake, engine: Engine) -> None:
    ops = signed(IssueRequested(request_id="b1", requester="ops", profile="bots", certificate_id="bot-1",
                                sans=["dns:api.example.com"]), "k1", HMAC_KEY)
    outcome = await intake.from_kafka("ev-b1", ops, None)
    (topic, command), _ = _events(outcome)
    assert topic == TOPICS.provisioning and isinstance(command, ProvisionCertificate)
    assert command.key_algorithm is KeyAlgorithm.EC_P256 and command.sans == ["dns:api.example.com"]
    with_csr = signed(IssueRequested(request_id="b2", requester="ops", profile="bots", certificate_id="bot-1",
                                     csr=_csr("api.example.com"), sans=["dns:api.example.com"]), "k1", HMAC_KEY)
    refused = await intake.from_kafka("ev-b2", with_csr, None)
    assert refused.answer.error["code"] == ErrorCode.CSR_INVALID.value  # type: ignore[index]
    with write_session(engine) as session:
        store.add_requester_key(session, BOX, requester="certrail-deployer", key_id="d1", secret=HMAC_KEY,
                                public_key_pem=None, now=NOW)
    bot_csr = signed(IssueRequested(request_id="b3", requester="certrail-deployer", profile="bots", certificate_id="bot-1",
                                    csr=_csr("api.example.com"), sans=["dns:api.example.com"]), "d1", HMAC_KEY)
    accepted = await intake.from_kafka("ev-b3", bot_csr, None)
    (topic, command), _ = _events(accepted)
    assert topic == TOPICS.commands("emca") and isinstance(command, IssueCertificate) and command.revision == 1


def _accepted(outcome: Outcome) -> RequestAccepted:
    (accepted,) = [data for _, data in _events(outcome) if isinstance(data, RequestAccepted)]
    return accepted


def _certificate_key_hash(key: ec.EllipticCurvePrivateKey) -> str:
    """What the deployer computes for a certificate carrying ``key`` (certificate_trust.public_key_sha256)."""
    certificate, _ = MiniCA().leaf(["www.example.com"], key)
    return public_key_sha256(x509.load_pem_x509_certificate(certificate.encode()))


async def test_request_accepted_carries_the_csrs_key_hash_the_deployer_will_expect(intake: Intake, engine: Engine) -> None:
    held, renewed_key, bot_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    issued = await intake.from_kafka("ev-1", _issue(csr=_csr(key=held)), None)
    assert _accepted(issued).public_key_sha256 == _certificate_key_hash(held)
    _issued(engine, "cert-1", "1a2b")
    claims = TokenClaims(token_id="t1", identity="ci-pipeline", role=Role.REQUESTER)
    renewed = await intake.from_http(RenewRequested(request_id="rn-1", requester="ci-pipeline", certificate_id="cert-1",
                                                    csr=_csr(key=renewed_key)), claims)
    assert _accepted(renewed).kind.value == "renew"
    assert _accepted(renewed).public_key_sha256 == _certificate_key_hash(renewed_key) != _certificate_key_hash(held)
    revoked = await intake.from_http(RevokeRequested(request_id="rv-1", requester="ci-pipeline", serial="1a2b",
                                                     reason=RevocationReason.SUPERSEDED), claims)
    assert _accepted(revoked).public_key_sha256 is None
    # a bot-key profile: the user's request carries no CSR (no hash); the deployer's CSR for it does
    ops = signed(IssueRequested(request_id="b1", requester="ops", profile="bots", certificate_id="bot-1",
                                sans=["dns:api.example.com"]), "k1", HMAC_KEY)
    assert _accepted(await intake.from_kafka("ev-b1", ops, None)).public_key_sha256 is None
    with write_session(engine) as session:
        store.add_requester_key(session, BOX, requester="certrail-deployer", key_id="d1", secret=HMAC_KEY,
                                public_key_pem=None, now=NOW)
    bot_csr = signed(IssueRequested(request_id="b2", requester="certrail-deployer", profile="bots", certificate_id="bot-1",
                                    csr=_csr("api.example.com", key=bot_key), sans=["dns:api.example.com"]), "d1", HMAC_KEY)
    assert _accepted(await intake.from_kafka("ev-b2", bot_csr, None)).public_key_sha256 == _certificate_key_hash(bot_key)


def _issued(engine: Engine, certificate_id: str, serial: str) -> None:
    """The certificate issued with ``serial``, as the gateway's projection folds the issuer's CertificateIssued."""
    with write_session(engine) as session:
        issued.fold_issued(session, issued.Issued(
            certificate_id=certificate_id, serial=serial, issuer="CN=CA", not_before=NOW - timedelta(days=1),
            not_after=NOW + timedelta(days=89), profile="web", connector="emca", sans=["dns:www.example.com"],
            request_id="req-1", issuance_id=issuance_id(certificate_id, 1), event_id="e", time=NOW))


async def test_renew_and_revoke_through_http_claims(intake: Intake, engine: Engine) -> None:
    await intake.from_kafka("ev-1", _issue(), None)
    claims = TokenClaims(token_id="t1", identity="ci-pipeline", role=Role.REQUESTER)
    early = await intake.from_http(RenewRequested(request_id="rn-0", requester="ci-pipeline", certificate_id="cert-1",
                                                  csr=_csr()), claims)
    assert early.answer.error["code"] == ErrorCode.CERTIFICATE_NOT_FOUND.value  # type: ignore[index]
    _issued(engine, "cert-1", "1a2b")
    renewed = await intake.from_http(RenewRequested(request_id="rn-1", requester="ci-pipeline", certificate_id="cert-1",
                                                    csr=_csr()), claims)
    (topic, command), _ = _events(renewed)
    assert isinstance(command, RenewCertificate) and command.revision == 2 and command.replaces_serial == "1a2b"
    assert command.issuance_id == issuance_id("cert-1", 2)
    revoked = await intake.from_http(RevokeRequested(request_id="rv-1", requester="ci-pipeline", serial="1a2b",
                                                     reason=RevocationReason.KEY_COMPROMISE), claims)
    (topic, command), _ = _events(revoked)
    assert topic == TOPICS.commands("emca") and isinstance(command, RevokeCertificate) and command.serial == "1a2b"
    auditor = TokenClaims(token_id="t2", identity="ci-pipeline", role=Role.AUDITOR)
    denied = await intake.from_http(RevokeRequested(request_id="rv-2", requester="ci-pipeline", certificate_id="cert-1",
                                                    reason=RevocationReason.SUPERSEDED), auditor)
    assert denied.answer.error["code"] == ErrorCode.REQUESTER_NOT_AUTHORISED.value  # type: ignore[index]


async def test_a_certificate_id_stays_with_its_profile(intake: Intake, engine: Engine) -> None:
    await intake.from_kafka("ev-1", _issue(), None)
    with write_session(engine) as session:
        store.put_profile(session, _profile("web2", "emca"), NOW)
    other = await intake.from_kafka("ev-2", _issue("req-2", profile="web2"), None)
    assert other.answer.error["code"] == ErrorCode.CERTIFICATE_PROFILE_MISMATCH.value  # type: ignore[index]


def _ops(request: IssueRequested | RenewRequested | RevokeRequested) -> IssueRequested | RenewRequested | RevokeRequested:
    return signed(request, "k1", HMAC_KEY)


@pytest.mark.parametrize(
    ("case", "make", "code", "named"),
    [
        ("forged signature", lambda: signed(_issue("x-1").model_copy(update={"auth": None}), "k1", b"z" * 32),
         ErrorCode.REQUEST_SIGNATURE_INVALID, None),
        ("requester not allowed on the certificate's profile", lambda: _ops(RenewRequested(
            request_id="x-2", requester="ops", certificate_id="cert-1", csr=_csr())), ErrorCode.REQUESTER_NOT_AUTHORISED, None),
        ("revoke by a requester not allowed", lambda: _ops(RevokeRequested(
            request_id="x-3", requester="ops", certificate_id="cert-1", reason=RevocationReason.SUPERSEDED)),
         ErrorCode.REQUESTER_NOT_AUTHORISED, None),
        ("another profile's certificate id", lambda: _ops(IssueRequested(
            request_id="x-4", requester="ops", profile="bots", certificate_id="cert-1", sans=["dns:api.example.com"])),
         ErrorCode.CERTIFICATE_PROFILE_MISMATCH, None),
        ("someone else's request id", lambda: _ops(IssueRequested(
            request_id="req-1", requester="ops", profile="bots", certificate_id="bot-9", sans=["dns:api.example.com"])),
         ErrorCode.DUPLICATE_REQUEST_CONFLICT, None),
        ("unknown profile", lambda: _issue("x-5", certificate_id="cert-new", profile="nope"), ErrorCode.PROFILE_NOT_FOUND, None),
        ("the owner's refused renewal", lambda: _ops(RenewRequested(
            request_id="x-6", requester="ci-pipeline", certificate_id="cert-1", csr=_csr(key=rsa.generate_private_key(65537, 1024)))),
         ErrorCode.KEY_POLICY_VIOLATION, "cert-1"),
        ("the owner's own conflict", lambda: _issue(csr=_csr()), ErrorCode.DUPLICATE_REQUEST_CONFLICT, "cert-1"),
        ("an allowed requester's new certificate", lambda: _issue("x-7", certificate_id="cert-new", csr=_csr("www.evil.test"),
                                                                  sans=["dns:www.evil.test"]), ErrorCode.SAN_NOT_ALLOWED, "cert-new"),
    ],
    ids=lambda value: value if isinstance(value, str) and " " in value else "",
)
async def test_a_rejection_names_only_a_certificate_the_caller_may_act_on(
        intake: Intake, engine: Engine, case: str, make, code: ErrorCode, named: str | None) -> None:  # type: ignore[no-untyped-def]
    assert (await intake.from_kafka("ev-1", _issue(), None)).answer.status == "accepted"  # cert-1 under web, ci-pipeline's
    _issued(engine, "cert-1", "1a2b")
    request = make()
    outcome = await intake.from_kafka(f"ev-{case}", request, None)
    assert outcome.answer.error["code"] == code.value, outcome.answer.error  # type: ignore[index]
    assert outcome.answer.certificate_id == named
    [(topic, key, value)] = stored_records(outcome.outbound)
    envelope = decode(value, CATALOG)
    assert isinstance(envelope.data, RequestRejected) and envelope.data.certificate_id == named
    assert (envelope.subject, key) == (named, named or request.request_id)


def test_requester_keys_are_read_each_time_and_built_once_per_stored_value(engine: Engine) -> None:
    keys = SqlRequesterKeys(engine, BOX)
    with write_session(engine) as session:
        store.add_requester_key(session, BOX, requester="rotating", key_id="k1", secret=b"a" * 32, public_key_pem=None,
                                now=NOW)
    first = keys.get("rotating", "k1")
    assert first is not None and first.secret == b"a" * 32
    assert keys.get("rotating", "k1") is first  # the same stored value: decrypted once
    with write_session(engine) as session:  # replaced under the same id: the new secret at once
        store.add_requester_key(session, BOX, requester="rotating", key_id="k1", secret=b"b" * 32, public_key_pem=None,
                                now=NOW)
    replaced = keys.get("rotating", "k1")
    assert replaced is not None and replaced.secret == b"b" * 32
    with write_session(engine) as session:  # revoked: unknown at once, whatever was built before
        assert store.revoke_requester_key(session, "rotating", "k1", NOW)
    assert keys.get("rotating", "k1") is None
    assert keys.get("rotating", "unknown") is None
