"""ACME Renewal Information (RFC 9773; services/gateway/acme/renewal_info.py): the certID parser against hostile
input, and ``GET /acme/renewal-info/{certID}`` in-process over a migrated SQLite database (test_acme_finalize.py's
door): the window's end is the very instant the renewal scheduler decides on for the certificate and serial (its
own snapshot and plan_tick, not a copy of the arithmetic), a revoked certificate's window is in the past, and a
certificate the door did not issue (another CA's keyIdentifier, an unknown serial, a leaf without AKI) is a 404."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from services.common.contracts.commands import IssueCertificate
from services.common.contracts.envelope import Envelope, make_event
from services.common.contracts.events import CertificateIssued, CertificateRevoked, RenewalDue
from services.common.contracts.fields import RevocationReason
from services.common.db import read_session, write_session
from services.common.db_schema import GatewayAcmeOrder
from services.gateway import store
from services.gateway.acme.problems import AcmeError
from services.gateway.acme.renewal_info import MAX_CERT_ID, cert_id_of, parse_cert_id
from services.gateway.acme.settings import AcmeSettings
from services.gateway.policy.profile import RenewalPolicy
from services.gateway.scheduler import SchedulerSettings, jitter_window, load_snapshot, plan_tick, renewal_at
from tests.gateway_fixtures import NOW, _profile
from tests.unit.test_acme_finalize import CA_KEY, CA_NAME, TOPICS, FinalizeDoor, csr_der, fold, open_finalize_door
from tests.unit.test_acme_finalize import issued_event as issued_without_aki
from tests.unit.test_acme_orders import problem

POLICY = RenewalPolicy(renew_before=timedelta(days=10))
LIFETIME = timedelta(days=30)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


AKI = b"\x11" * 20
K = b64(AKI)
ONE = b64(b"\x01")
NEGATIVE = b64(b"\x80")
NOT_MINIMAL = b64(b"\x00\x01")
ZERO = b64(b"\x00")
LONG_SERIAL = b64(b"\x01" * 22)
LONG_KEY = b64(b"\x01" * 65)


# -- the certID ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "text"), [
    ("empty", ""),
    ("no dot", b64(AKI)),
    ("two dots", f"{K}.{ONE}.{ONE}"),
    ("empty key identifier", f".{ONE}"),
    ("empty serial", f"{K}."),
    ("padding", f"{K}=.{ONE}"),
    ("standard base64 alphabet", f"{K}.+/8"),
    ("whitespace", f"{K}. AQ"),
    ("non-ascii", f"{K}.AQé"),
    ("a NUL", K + ".AQ\x00"),
    ("truncated encoding", f"{K}.AQIDB"),
    ("non-canonical trailing bits", f"{K}.AR"),
    ("negative serial", f"{K}.{NEGATIVE}"),
    ("non-minimal serial", f"{K}.{NOT_MINIMAL}"),
    ("zero serial", f"{K}.{ZERO}"),
    ("serial of 22 octets", f"{K}.{LONG_SERIAL}"),
    ("key identifier of 65 octets", f"{LONG_KEY}.{ONE}"),
    ("too long", "A" * (MAX_CERT_ID + 1)),
    ("a path", f"{K}.{ONE}/../x"),
])
def test_hostile_cert_ids_are_malformed_and_never_echoed(name: str, text: str) -> None:
    with pytest.raises(AcmeError) as refused:
        parse_cert_id(text)
    assert refused.value.kind.value == "malformed" and refused.value.status == 400, name
    assert refused.value.detail.startswith("renewalInfo certID: ")
    assert len(text) < 3 or text not in refused.value.detail


@pytest.mark.parametrize("serial", [1, 0x7F, 0x80, 0xFF, 0x8000, 0x4F2A0C11, 2**159 - 1])
def test_cert_id_round_trips_a_certificates_aki_and_serial(serial: int) -> None:
    leaf = _leaf(ec.generate_private_key(ec.SECP256R1()).public_key(), serial, aki=True)
    parsed = parse_cert_id(cert_id_of(leaf))
    assert parsed.serial == serial
    expected = x509.SubjectKeyIdentifier.from_public_key(CA_KEY.public_key()).digest
    assert parsed.key_identifier == expected


# -- the door --------------------------------------------------------------------------------------------------------


def _leaf(public_key: Any, serial: int, *, aki: bool, ca_key: Any = CA_KEY, at: datetime = NOW) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(CA_NAME).issuer_name(CA_NAME).public_key(public_key)
               .serial_number(serial).not_valid_before(at).not_valid_after(at + LIFETIME)
               .add_extension(x509.SubjectAlternativeName([x509.DNSName("www.example.com")]), critical=False))
    if aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    return builder.sign(CA_KEY, hashes.SHA256())


def issued_event(command: IssueCertificate, csr: bytes, serial: int, at: datetime = NOW) -> tuple[Envelope, x509.Certificate]:
    """The issuer's CertificateIssued for ``command`` with a leaf that names its CA's key (AKI), as emCA's do, valid
    from ``at`` (whole seconds) for LIFETIME."""
    leaf = _leaf(x509.load_der_x509_csr(csr).public_key(), serial, aki=True, at=at)
    pem = leaf.public_bytes(serialization.Encoding.PEM).decode()
    data = CertificateIssued(issuance_id=command.issuance_id, certificate_id=command.certificate_id,
                             request_id=command.request_id, connector=command.connector, profile=command.profile,
                             serial=format(serial, "x"), certificate=pem, chain=[], subject="CN=x",
                             issuer="CN=Test Issuing CA", sans=command.sans, not_before=at, not_after=at + LIFETIME,
                             public_key_sha256="0" * 64)
    return make_event(data, id=f"issued-{serial}", source="/certrail/issuer", time=at), leaf


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[FinalizeDoor]:
    door = open_finalize_door(tmp_path)
    with write_session(door.engine) as session:  # the profile's renewal policy is what the window follows
        store.put_profile(session, _profile("web", "emca", renewal=POLICY), NOW)
    yield door
    await door.validations.drain(5)
    await door.client.aclose()
    door.engine.dispose()


async def issued(door: FinalizeDoor, *, serial: int = 0x4F2A0C11,
                 with_aki: bool = True) -> tuple[IssueCertificate, x509.Certificate, Any, str]:
    """An account's certificate, issued through finalize and the gateway's fold: the command, the leaf, the account's
    key and kid."""
    key, kid = await door.account()
    order = await door.ready(key, kid, "www.example.com")
    csr, _ = csr_der("www.example.com")
    assert (await door.finalize(order, key, kid, csr)).status_code == 200
    [command] = door.commands(IssueCertificate)
    if with_aki:
        event, leaf = issued_event(command, csr, serial)
    else:
        event, pem, _ = issued_without_aki(command, csr, serial)
        leaf = x509.load_pem_x509_certificate(pem.encode())
    fold(door, event)
    return command, leaf, key, kid


def window(response: Any) -> tuple[datetime, datetime]:
    assert response.status_code == 200, response.text
    document = response.json()["suggestedWindow"]
    return datetime.fromisoformat(document["start"]), datetime.fromisoformat(document["end"])


async def test_the_directory_names_renewal_info(door: FinalizeDoor) -> None:
    directory = (await door.client.get("/acme/directory")).json()
    assert directory["renewalInfo"].endswith("/acme/renewal-info")


async def test_the_window_ends_when_the_scheduler_sends_renewal_due(door: FinalizeDoor) -> None:
    command, leaf, *_ = await issued(door)
    response = await door.client.get(f"/acme/renewal-info/{cert_id_of(leaf)}")
    start, end = window(response)
    assert response.headers["Retry-After"] == str(6 * 3600)
    scheduler = SchedulerSettings()
    due = renewal_at(POLICY, command.certificate_id, "4f2a0c11", NOW, NOW + LIFETIME, scheduler)
    assert end == due and start == end - jitter_window(NOW, NOW + LIFETIME, scheduler)
    assert NOW < start < end < NOW + LIFETIME - timedelta(days=10) + timedelta(microseconds=1)

    # the scheduler itself, from its own snapshot: nothing due a microsecond before the end, RenewalDue at the end
    with read_session(door.engine) as session:
        before = plan_tick(load_snapshot(session, end - timedelta(microseconds=1)), end - timedelta(microseconds=1),
                           scheduler, TOPICS)
        at = plan_tick(load_snapshot(session, end), end, scheduler, TOPICS)
    assert [n for n in before.renewals if n.certificate_id == command.certificate_id] == []
    [notice] = [n for n in at.renewals if n.certificate_id == command.certificate_id]
    assert isinstance(notice.outbound.event.data, RenewalDue) and notice.outbound.event.data.renew_at == end


async def test_another_scheduler_jitter_moves_the_window_with_it(tmp_path: Path) -> None:
    from services.gateway.acme import renewal_info

    door = open_finalize_door(tmp_path)
    try:
        command, leaf, *_ = await issued(door)
        wide = SchedulerSettings(jitter_fraction=0.5, jitter_max=timedelta(days=30))
        with read_session(door.engine) as session:
            found = renewal_info.find(session, parse_cert_id(cert_id_of(leaf)))
        assert found is not None and found.certificate_id == command.certificate_id and found.status == "active"
        got = renewal_info.suggested_window(found, NOW, wide)
        assert got.end == renewal_at(found.policy, command.certificate_id, found.serial, NOW, NOW + LIFETIME, wide)
        assert got.start == max(NOW, got.end - timedelta(days=15)) and got.start < got.end  # never before notBefore
        assert found.policy == RenewalPolicy()  # the fixture's profile has the default policy (2/3 of the lifetime)

        flat = SchedulerSettings(jitter_fraction=0.0)  # no jitter: a window still one second wide (RFC 9773 4.2)
        got = renewal_info.suggested_window(found, NOW, flat)
        assert got.end - got.start == timedelta(seconds=1)
    finally:
        await door.validations.drain(5)
        await door.client.aclose()
        door.engine.dispose()


async def test_a_revoked_certificate_gets_a_window_in_the_past(door: FinalizeDoor) -> None:
    command, leaf, *_ = await issued(door)
    revoked = CertificateRevoked(certificate_id=command.certificate_id, serial="4f2a0c11", connector="emca",
                                 request_id="elsewhere-1", revoked_at=NOW, reason=RevocationReason.KEY_COMPROMISE)
    fold(door, make_event(revoked, id="revoked-1", source="/certrail/issuer", time=NOW))
    door.clock.advance(3600)
    start, end = window(await door.client.get(f"/acme/renewal-info/{cert_id_of(leaf)}"))
    assert start < end < door.clock.now


async def test_certificates_the_door_did_not_issue_are_not_found(door: FinalizeDoor) -> None:
    _, leaf, *_ = await issued(door)
    other_ca = ec.generate_private_key(ec.SECP256R1())
    same_serial_other_ca = _leaf(leaf.public_key(), leaf.serial_number, aki=True, ca_key=other_ca)
    unknown_serial = _leaf(leaf.public_key(), leaf.serial_number + 1, aki=True)
    for stranger in (same_serial_other_ca, unknown_serial):
        document = problem(await door.client.get(f"/acme/renewal-info/{cert_id_of(stranger)}"), "malformed", 404)
        assert "no certificate issued by this ACME server" in document["detail"]


async def test_a_leaf_without_an_authority_key_identifier_matches_no_cert_id(door: FinalizeDoor) -> None:
    _, leaf, *_ = await issued(door, with_aki=False)
    serial = leaf.serial_number.to_bytes((leaf.serial_number.bit_length() + 8) // 8, "big")
    problem(await door.client.get(f"/acme/renewal-info/{b64(AKI)}.{b64(serial)}"), "malformed", 404)


async def test_hostile_cert_ids_and_methods_over_http(door: FinalizeDoor) -> None:
    document = problem(await door.client.get(f"/acme/renewal-info/{K}.{NEGATIVE}"), "malformed", 400)
    assert "negative" in document["detail"]
    problem(await door.client.get(f"/acme/renewal-info/{'A' * 5000}.AQ"), "malformed", 400)
    problem(await door.client.post(f"/acme/renewal-info/{K}.AQ", content=b"{}"), "malformed", 405)
    problem(await door.client.get("/acme/renewal-info/a/b"), "malformed", 404)


# -- newOrder's replaces (RFC 9773 5) ---------------------------------------------------------------------------------


async def test_an_order_replaces_the_accounts_certificate_once(door: FinalizeDoor) -> None:
    _, leaf, key, kid = await issued(door)
    cert_id = cert_id_of(leaf)
    first = await door.order(key, kid, "www.example.com", replaces=cert_id)
    assert first.status_code == 201, first.text
    assert first.json()["replaces"] == cert_id
    with read_session(door.engine) as session:
        stored = session.get(GatewayAcmeOrder, first.headers["Location"].rsplit("/", 1)[1])
        assert stored is not None and stored.replaces == cert_id
    problem(await door.order(key, kid, "www.example.com", replaces=cert_id), "alreadyReplaced", 409)

    # once the replacing order is invalid (here: expired unfinalized), another order may replace the certificate
    door.clock.advance(AcmeSettings().order_lifetime_s + 1)
    again = await door.order(key, kid, "www.example.com", replaces=cert_id)
    assert again.status_code == 201, again.text


async def test_replaces_is_refused_for_what_is_not_the_accounts(door: FinalizeDoor) -> None:
    _, leaf, key, kid = await issued(door)
    cert_id = cert_id_of(leaf)
    other_key, other_kid = await door.account()
    document = problem(await door.order(other_key, other_kid, "www.example.com", replaces=cert_id), "malformed", 400)
    assert "no certificate this ACME server issued to this account" in document["detail"]
    stranger = _leaf(leaf.public_key(), leaf.serial_number + 1, aki=True)
    problem(await door.order(key, kid, "www.example.com", replaces=cert_id_of(stranger)), "malformed", 400)
    document = problem(await door.order(key, kid, "api.example.com", replaces=cert_id), "malformed", 400)
    assert "shares no identifier" in document["detail"]
    problem(await door.order(key, kid, "www.example.com", replaces=f"{K}.{NEGATIVE}"), "malformed", 400)
    problem(await door.order(key, kid, "www.example.com", replaces=7), "malformed", 400)
    with read_session(door.engine) as session:  # none of the refused orders was written
        assert session.scalars(select(GatewayAcmeOrder).where(GatewayAcmeOrder.replaces.is_not(None))).all() == []
