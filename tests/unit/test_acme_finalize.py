"""ACME finalize, the order following the issuer's events, the certificate download and revokeCert
(services/gateway/acme/finalize.py, certificates.py, certificate_routes.py), in-process over a migrated SQLite
database with the gateway's real intake (services/gateway/intake.py) and fake challenge validators: finalize's
refusals (not ready, another account, garbage, a bad signature, other names, a key the profile refuses), one
issuance however often finalize is retried, the fold of CertificateIssued / IssuanceFailed through the gateway's
own fold (app.py) including redelivery, and revokeCert's refusals and its path through the intake."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from sqlalchemy import func, select

from services.common.contracts import admin
from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import IssueCertificate, RevokeCertificate
from services.common.contracts.envelope import Envelope, decode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateIssued, CertificateRevoked, IssuanceFailed, RequestAccepted
from services.common.contracts.fields import ErrorInfo, RevocationReason
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import GatewayAcmeCertificate
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway import store
from services.gateway.acme import certificates, finalize, routes
from services.gateway.acme.nonces import SqlNonces
from services.gateway.acme.settings import AcmeSettings
from services.gateway.api_common import AdminPublisher
from services.gateway.app import _fold_issuer_event
from services.gateway.intake import Intake
from services.gateway.store import SqlRequesterKeys
from tests.gateway_fixtures import BOX, NOW, _connector, _profile
from tests.unit.acme_support import BASE, Clock, ec_key, public, sign
from tests.unit.test_acme_orders import FakeValidator, OrderDoor, problem, validated_order

TOPICS = Topics("t-acme.certrail")
CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Issuing CA")])


class FinalizeDoor(OrderDoor):
    records: list[dict[str, Any]]

    def commands(self, cls: type[Any]) -> list[Any]:
        """The intake's published records of type ``cls``, decoded."""
        found = []
        for record in self.records:
            value = record["value"] if isinstance(record, dict) else record.value().decode()
            data = decode(value.encode() if isinstance(value, str) else value, CATALOG).data
            if isinstance(data, cls):
                found.append(data)
        return found

    async def ready(self, key: Any, kid: str, *names: str) -> dict[str, Any]:
        order = await validated_order(self, key, kid, names[0])
        location = order["finalize"].removesuffix("/finalize")
        document = (await self.get(location, key, kid)).json()
        assert document["status"] == "ready", document
        return {**document, "url": location}

    async def finalize(self, order: dict[str, Any], key: Any, kid: str, csr: bytes | str | None) -> httpx.Response:
        if csr is None:
            return await self.respond(order["finalize"], key, kid, {})
        payload = {"csr": csr if isinstance(csr, str) else base64.urlsafe_b64encode(csr).rstrip(b"=").decode()}
        return await self.respond(order["finalize"], key, kid, payload)


def open_finalize_door(tmp_path: Path) -> FinalizeDoor:
    database = DatabaseSettings(url=f"sqlite:///{tmp_path / 'acme.db'}")
    upgrade(database)
    engine = make_engine(database)
    _connector(engine, "emca")
    with write_session(engine) as session:
        store.put_profile(session, _profile("web", "emca"), NOW)
    clock = Clock()
    published: list[dict[str, Any]] = []
    records: list[Any] = []

    async def publish(items: Sequence[dict[str, Any]]) -> None:
        published.extend(items)

    async def publish_records(items: Sequence[Any]) -> None:
        records.extend(items)

    intake = Intake(engine=engine, topics=TOPICS, keys=SqlRequesterKeys(engine, BOX), clock=clock)
    app = FastAPI()
    acme = AcmeSettings(external_url=BASE)
    validator = FakeValidator()
    routes.install(app, engine=engine, box=BOX, settings=acme, http_port=0,
                   admin=AdminPublisher(publish, TOPICS, clock), clock=clock,
                   nonces=SqlNonces(engine, clock, lifetime=timedelta(seconds=acme.nonce_lifetime_s)),
                   validators={"http-01": validator}, requests=finalize.Requests(intake, publish_records))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)
    door = FinalizeDoor(engine, client, clock, published)
    door.validator, door.validations, door.records = validator, app.state.acme_validations, records
    return door


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[FinalizeDoor]:
    door = open_finalize_door(tmp_path)
    yield door
    await door.validations.drain(5)
    await door.client.aclose()
    door.engine.dispose()


def csr_der(*names: str, key: Any = None, cn: str | None = None) -> tuple[bytes, Any]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or names[0])]))
    csr = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER), key


def issue_certificate(csr: bytes, serial: int) -> tuple[str, str]:
    """A leaf for ``csr`` signed by the test CA, and the CA's certificate (the chain)."""
    request = x509.load_der_x509_csr(csr)
    now = datetime.now(UTC)
    ca = (x509.CertificateBuilder().subject_name(CA_NAME).issuer_name(CA_NAME).public_key(CA_KEY.public_key())
          .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
          .sign(CA_KEY, hashes.SHA256()))
    san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    leaf = (x509.CertificateBuilder().subject_name(request.subject).issuer_name(CA_NAME).public_key(request.public_key())
            .serial_number(serial).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(san, critical=False).sign(CA_KEY, hashes.SHA256()))
    return (leaf.public_bytes(serialization.Encoding.PEM).decode(), ca.public_bytes(serialization.Encoding.PEM).decode())


def issued_event(command: IssueCertificate, csr: bytes, serial: int = 0x4F2A0C11) -> tuple[Envelope, str, str]:
    leaf, chain = issue_certificate(csr, serial)
    data = CertificateIssued(issuance_id=command.issuance_id, certificate_id=command.certificate_id,
                             request_id=command.request_id, connector=command.connector, profile=command.profile,
                             serial=format(serial, "x"), certificate=leaf, chain=[chain], subject="CN=x",
                             issuer="CN=Test Issuing CA", sans=command.sans, not_before=NOW, not_after=NOW + timedelta(days=30),
                             public_key_sha256="0" * 64)
    return make_event(data, id=f"issued-{serial}", source="/certrail/issuer", time=NOW), leaf, chain


def fold(door: FinalizeDoor, event: Envelope) -> None:
    with write_session(door.engine) as session:
        _fold_issuer_event(session, event)


async def issued_order(door: FinalizeDoor) -> tuple[Any, str, dict[str, Any], bytes, Any, str]:
    """An account, its order made valid by the issuer's CertificateIssued; the CSR's key and the leaf PEM."""
    key, kid = await door.account()
    order = await door.ready(key, kid, "www.example.com")
    csr, csr_key = csr_der("www.example.com")
    assert (await door.finalize(order, key, kid, csr)).status_code == 200
    [command] = door.commands(IssueCertificate)
    event, leaf, _ = issued_event(command, csr)
    fold(door, event)
    return key, kid, order, csr, csr_key, leaf


# -- finalize --------------------------------------------------------------------------------------------------------


async def test_finalize_hands_the_csr_to_the_intake_once_and_the_order_is_processing(door: FinalizeDoor) -> None:
    key, kid = await door.account()
    order = await door.ready(key, kid, "www.example.com", )
    order_id = order["url"].rsplit("/", 1)[1]
    csr, _ = csr_der("www.example.com")
    response = await door.finalize(order, key, kid, csr)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "processing" and response.headers["Retry-After"] == "3"
    assert response.headers["Location"] == order["url"] and "certificate" not in response.json()
    [command] = door.commands(IssueCertificate)
    assert command.certificate_id == f"acme-{order_id}" and command.request_id == f"acme-finalize-{order_id}"
    assert command.profile == "web" and command.sans == ["dns:www.example.com"]
    [accepted] = door.commands(RequestAccepted)
    assert accepted.requester == "ci-pipeline" and accepted.certificate_id == f"acme-{order_id}"
    [event] = door.kinds(admin.AcmeOrderFinalized)
    assert event.order_id == order_id and event.actor == f"acme:{kid.rsplit('/', 1)[1]}"
    assert event.change["request_id"] == f"acme-finalize-{order_id}" and event.change["status"] == "processing"
    polled = await door.get(order["url"], key, kid)
    assert polled.json()["status"] == "processing" and polled.headers["Retry-After"] == "3"
    # a retried finalize: the order is not ready any more, and nothing more goes to the intake
    problem(await door.finalize(order, key, kid, csr), "orderNotReady", 403)
    assert len(door.commands(IssueCertificate)) == 1


async def test_a_finalize_retried_after_the_intake_answered_is_the_same_request(door: FinalizeDoor) -> None:
    key, kid = await door.account()
    order = await door.ready(key, kid, "www.example.com")
    csr, _ = csr_der("www.example.com")
    with read_session(door.engine) as session:
        account = certificates.store.get_account(session, kid.rsplit("/", 1)[1])
        found = finalize.db.get_order(session, order["url"].rsplit("/", 1)[1])
    assert account is not None and found is not None
    pem = finalize.parse_csr({"csr": base64.urlsafe_b64encode(csr).rstrip(b"=").decode()}, found.identifiers)
    request = finalize.IssueRequested(request_id=finalize.request_id_of(found.order_id), requester=account.requester,
                                      profile="web", certificate_id=finalize.certificate_id_of(found.order_id), csr=pem)
    # the intake answered (and stored) the request, but the gateway died before the order moved on
    intake = Intake(engine=door.engine, topics=TOPICS, keys=SqlRequesterKeys(door.engine, BOX), clock=door.clock)
    first = await intake.from_acme(request)
    assert first.answer.status == "accepted"
    response = await door.finalize(order, key, kid, csr)
    assert response.json()["status"] == "processing"
    [command] = door.commands(IssueCertificate)  # the stored record, re-published: the same command, once
    assert command.issuance_id == first.answer.issuance_id


async def test_finalize_refusals(door: FinalizeDoor) -> None:
    key, kid = await door.account()
    pending = (await door.order(key, kid, "www.example.com")).json()
    csr, _ = csr_der("www.example.com")
    document = problem(await door.finalize(pending, key, kid, csr), "orderNotReady", 403)
    assert "pending" in document["detail"]
    order = await door.ready(key, kid, "api.example.com")
    other_key, other_kid = await door.account()
    problem(await door.finalize(order, other_key, other_kid, csr_der("api.example.com")[0]), "unauthorized", 403)
    problem(await door.finalize(order, key, kid, None), "malformed", 400)
    problem(await door.finalize(order, key, kid, "!!not base64!!"), "badCSR", 400)
    problem(await door.finalize(order, key, kid, b"\x30\x03\x02\x01\x00"), "badCSR", 400)
    good, _ = csr_der("api.example.com")
    tampered = good[:-1] + bytes([good[-1] ^ 0x01])  # the last byte is the signature's
    assert "signature" in problem(await door.finalize(order, key, kid, tampered), "badCSR", 400)["detail"]
    wrong = problem(await door.finalize(order, key, kid, csr_der("api.example.com", "www.example.com")[0]), "badCSR", 400)
    assert "not the order's identifiers" in wrong["detail"]
    problem(await door.finalize(order, key, kid, csr_der("www.example.com")[0]), "badCSR", 400)
    problem(await door.finalize(order, key, kid, csr_der("api.example.com", cn="evil.example.com")[0]), "badCSR", 400)
    assert door.commands(IssueCertificate) == [] and door.kinds(admin.AcmeOrderFinalized) == []
    assert (await door.get(order["url"], key, kid)).json()["status"] == "ready"  # refused CSRs leave it ready


async def test_a_csr_the_profile_refuses_makes_the_order_invalid(door: FinalizeDoor) -> None:
    key, kid = await door.account()
    order = await door.ready(key, kid, "www.example.com")
    weak, _ = csr_der("www.example.com", key=rsa.generate_private_key(public_exponent=65537, key_size=1024))
    response = await door.finalize(order, key, kid, weak)
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["status"] == "invalid" and document["error"]["type"] == "urn:ietf:params:acme:error:badCSR"
    assert document["error"]["detail"].startswith("KEY_POLICY_VIOLATION")
    assert door.commands(IssueCertificate) == []
    [event] = door.kinds(admin.AcmeOrderInvalid)
    assert event.change["code"] == "KEY_POLICY_VIOLATION" and event.actor == f"acme:{kid.rsplit('/', 1)[1]}"
    problem(await door.finalize(order, key, kid, csr_der("www.example.com")[0]), "orderNotReady", 403)


# -- the order follows the issuer --------------------------------------------------------------------------------------


async def test_certificate_issued_makes_the_order_valid_and_the_chain_downloadable(door: FinalizeDoor) -> None:
    key, kid, order, csr, _, leaf = await issued_order(door)
    document = (await door.get(order["url"], key, kid)).json()
    order_id = order["url"].rsplit("/", 1)[1]
    assert document["status"] == "valid" and document["certificate"] == f"{BASE}/acme/cert/{order_id}"
    download = await door.get(document["certificate"], key, kid)
    assert download.status_code == 200 and download.headers["content-type"] == "application/pem-certificate-chain"
    blocks = x509.load_pem_x509_certificates(download.content)
    assert [b.public_bytes(serialization.Encoding.PEM).decode() for b in blocks][0] == leaf
    assert blocks[1].subject == CA_NAME and download.headers["Replay-Nonce"]
    other_key, other_kid = await door.account()
    problem(await door.get(document["certificate"], other_key, other_kid), "unauthorized", 403)
    [valid] = door.kinds(admin.AcmeOrderValid)
    assert valid.order_id == order_id and valid.actor == "certrail-issuer" and valid.change["serial"] == "4f2a0c11"
    # a redelivered CertificateIssued changes nothing
    [command] = door.commands(IssueCertificate)
    fold(door, issued_event(command, csr)[0])
    assert len(door.kinds(admin.AcmeOrderValid)) == 1
    with read_session(door.engine) as session:
        assert session.scalar(select(func.count()).select_from(GatewayAcmeCertificate)) == 1


async def test_issuance_failed_makes_the_order_invalid_once(door: FinalizeDoor) -> None:
    key, kid = await door.account()
    order = await door.ready(key, kid, "www.example.com")
    assert (await door.finalize(order, key, kid, csr_der("www.example.com")[0])).status_code == 200
    [command] = door.commands(IssueCertificate)
    failed = IssuanceFailed(issuance_id=command.issuance_id, certificate_id=command.certificate_id,
                            request_id=command.request_id, connector=command.connector,
                            error=ErrorInfo(code=ErrorCode.CA_PROFILE_NOT_FOUND, message="no such CA profile"))
    event = make_event(failed, id="failed-1", source="/certrail/issuer", time=NOW)
    fold(door, event)
    fold(door, event)
    document = (await door.get(order["url"], key, kid)).json()
    assert document["status"] == "invalid" and document["error"]["type"] == "urn:ietf:params:acme:error:serverInternal"
    assert "CA_PROFILE_NOT_FOUND" in document["error"]["detail"] and "certificate" not in document
    [invalid] = door.kinds(admin.AcmeOrderInvalid)
    assert invalid.change["code"] == "CA_PROFILE_NOT_FOUND"


async def test_an_event_about_another_certificate_is_not_folded_into_an_order(door: FinalizeDoor) -> None:
    key, kid = await door.account()
    order = await door.ready(key, kid, "www.example.com")
    assert (await door.finalize(order, key, kid, csr_der("www.example.com")[0])).status_code == 200
    [command] = door.commands(IssueCertificate)
    forged = command.model_copy(update={"request_id": "someone-else"})
    with write_session(door.engine) as session:
        assert not certificates.apply_in(session, issued_event(forged, csr_der("www.example.com")[0])[0])
    assert (await door.get(order["url"], key, kid)).json()["status"] == "processing"


# -- revokeCert --------------------------------------------------------------------------------------------------------


async def revoke(door: FinalizeDoor, leaf: str, key: Any, *, kid: str | None, reason: int | None = None,
                 alg: str = "ES256") -> httpx.Response:
    der = x509.load_pem_x509_certificate(leaf.encode()).public_bytes(serialization.Encoding.DER)
    payload: dict[str, Any] = {"certificate": base64.urlsafe_b64encode(der).rstrip(b"=").decode()}
    if reason is not None:
        payload["reason"] = reason
    body = sign(payload, key, url=door.url("revoke-cert"), nonce=await door.nonce(), kid=kid, alg=alg)
    return await door.post("revoke-cert", body)


async def test_revoke_cert_by_the_ordering_account_goes_through_the_intake(door: FinalizeDoor) -> None:
    key, kid, _, _, _, leaf = await issued_order(door)
    other_key, other_kid = await door.account()
    problem(await revoke(door, leaf, other_key, kid=other_kid), "unauthorized", 403)
    problem(await revoke(door, leaf, key, kid=kid, reason=6), "badRevocationReason", 400)
    problem(await revoke(door, leaf, key, kid=kid, reason=8), "badRevocationReason", 400)
    stranger, _ = issue_certificate(csr_der("www.example.com")[0], 0x1234)
    problem(await revoke(door, stranger, key, kid=kid), "unauthorized", 403)
    response = await revoke(door, leaf, key, kid=kid, reason=1)
    assert response.status_code == 200, response.text
    [command] = door.commands(RevokeCertificate)
    assert command.serial == "4f2a0c11" and command.reason is RevocationReason.KEY_COMPROMISE
    assert command.request_id == "acme-revoke-4f2a0c11"
    problem(await revoke(door, leaf, key, kid=kid, reason=1), "alreadyRevoked", 400)
    # the intake replayed its stored answer: the same command again (same bytes, same event id), not a second one
    assert len({c.model_dump_json() for c in door.commands(RevokeCertificate)}) == 1


async def test_revoke_cert_with_the_certificate_key_and_already_revoked_from_the_projection(door: FinalizeDoor) -> None:
    import josepy

    key, kid, _, _, csr_key, leaf = await issued_order(door)
    problem(await revoke(door, leaf, ec_key(), kid=None), "unauthorized", 403)  # a key that is not the certificate's
    jwk = josepy.JWKEC(key=csr_key)
    assert public(jwk)["kty"] == "EC"
    [command] = door.commands(IssueCertificate)
    revoked = CertificateRevoked(certificate_id=command.certificate_id, serial="4f2a0c11", connector="emca",
                                 request_id="elsewhere-1", revoked_at=NOW, reason=RevocationReason.SUPERSEDED)
    fold(door, make_event(revoked, id="revoked-1", source="/certrail/issuer", time=NOW))
    problem(await revoke(door, leaf, jwk, kid=None), "alreadyRevoked", 400)
    assert door.commands(RevokeCertificate) == []


async def test_an_accounts_orders_list(door: FinalizeDoor) -> None:
    key, kid = await door.account()
    first = (await door.order(key, kid, "www.example.com")).headers["Location"]
    door.clock.advance(1)
    second = (await door.order(key, kid, "api.example.com")).headers["Location"]
    listed = await door.get(f"{kid}/orders", key, kid)
    assert listed.status_code == 200 and listed.json() == {"orders": [second, first]}
    other_key, other_kid = await door.account()
    problem(await door.get(f"{kid}/orders", other_key, other_kid), "unauthorized", 403)


# -- challenges abandoned mid-validation ------------------------------------------------------------------------------


async def test_a_challenge_left_processing_by_a_stopped_gateway_is_swept_invalid(door: FinalizeDoor) -> None:
    key, kid = await door.account()
    order = (await door.order(key, kid, "www.example.com")).json()
    location = (await door.order(key, kid, "api.example.com")).headers["Location"]  # another order, left alone
    chall = (await door.get(order["authorizations"][0], key, kid)).json()["challenges"][0]
    door.validator.release.clear()  # the validation hangs ...
    started = await door.respond(chall["url"], key, kid)
    assert started.json()["status"] == "processing" and started.headers["Retry-After"] == "3"
    for task in list(door.validations.tasks):  # ... and its gateway dies
        task.cancel()
    await door.validations.drain(5)
    assert await door.validations.sweep() == 0  # within the validation deadline + margin: maybe still running
    door.clock.advance(30 + 30 + 1)  # dns01_timeout_s (the longer deadline) + sweep_margin_s
    assert await door.validations.sweep() == 1
    assert await door.validations.sweep() == 0
    swept = (await door.get(chall["url"], key, kid)).json()
    assert swept["status"] == "invalid" and swept["error"]["type"] == "urn:ietf:params:acme:error:serverInternal"
    assert (await door.get(order["authorizations"][0], key, kid)).json()["status"] == "invalid"
    assert (await door.get(order["finalize"].removesuffix("/finalize"), key, kid)).json()["status"] == "invalid"
    [failed] = door.kinds(admin.AcmeChallengeFailed)
    assert failed.challenge_id == chall["url"].rsplit("/", 1)[1] and "interrupted" in failed.change["error"]["detail"]
    assert (await door.get(location, key, kid)).json()["status"] == "pending"
