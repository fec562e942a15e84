"""An ACME renewal retires the certificate it renews (services/gateway/acme/retire.py; decision 0033, addendum
"replaces retires"), in-process over a migrated SQLite database (test_acme_finalize.py's door, the gateway's own fold
of the issuer's events): once the renewing order is valid, the old certificate's serial is superseded in the gateway's
projection, so the renewal scheduler (its own snapshot and plan_tick) neither notifies nor counts it in the expiry
gauge's buckets, and CertificateSuperseded in the gateway's outbox makes the auditor's inventory (its own fold) show
it superseded, whichever of its events arrives first. It is never revoked. An order without ``replaces`` retires only
a certificate of the same account, identifiers, profile and key type. And revokeCert's own admin event,
AcmeCertificateRevoked."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import delete, select

from services.auditor.inventory import apply_events, inventory_event
from services.common.contracts.admin import AcmeCertificateRevoked
from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import IssueCertificate, RevokeCertificate
from services.common.contracts.envelope import Envelope, decode, make_event
from services.common.contracts.events import CertificateRevoked, CertificateSuperseded, SupersededBy
from services.common.contracts.fields import RevocationReason
from services.common.db import read_session, write_session
from services.common.db_schema import CertificateInventory, CertificateSerial, GatewayAdminOutbox, GatewayIssuedSerial
from services.gateway.acme.renewal_info import cert_id_of
from services.gateway.scheduler import SchedulerSettings, load_snapshot, plan_tick
from tests.gateway_fixtures import NOW
from tests.unit.test_acme_finalize import TOPICS, FinalizeDoor, csr_der, fold, issued_order, open_finalize_door, revoke
from tests.unit.test_acme_orders import problem
from tests.unit.test_acme_renewal_info import LIFETIME, door, issued, issued_event  # noqa: F401 - door: a fixture

RENEWED_AT = NOW + timedelta(days=10)
#: the old certificate has 3 days left (bucket 1d_7d), the renewed one 13
LOOK_AT = NOW + LIFETIME - timedelta(days=3)


async def renew(gateway: FinalizeDoor, key: Any, kid: str, *, serial: int, replaces: str | None = None,
                csr_key: Any = None, at: datetime = RENEWED_AT) -> tuple[Any, x509.Certificate]:
    """A second order of the account for www.example.com (its authorization reused: ready at once), finalized and
    made valid by the issuer's CertificateIssued (issued at ``at``) through the gateway's fold."""
    payload = {"replaces": replaces} if replaces is not None else {}
    created = await gateway.order(key, kid, "www.example.com", **payload)
    assert created.status_code == 201, created.text
    order = {**created.json(), "url": created.headers["Location"]}
    assert order["status"] == "ready", order
    csr, _ = csr_der("www.example.com", key=csr_key)
    assert (await gateway.finalize(order, key, kid, csr)).status_code == 200
    command = gateway.commands(IssueCertificate)[-1]
    assert command.certificate_id.endswith(order["url"].rsplit("/", 1)[1])
    event, leaf = issued_event(command, csr, serial, at=at)
    fold(gateway, event)
    return event, leaf


def serial_status(gateway: FinalizeDoor, certificate_id: str) -> dict[str, str]:
    with read_session(gateway.engine) as session:
        rows = session.scalars(select(GatewayIssuedSerial).where(GatewayIssuedSerial.certificate_id == certificate_id))
        return {r.serial: r.status for r in rows}


def outbox(gateway: FinalizeDoor, event_type: str) -> list[Any]:
    """The events of ``event_type`` in the gateway's outbox, decoded, in order."""
    with read_session(gateway.engine) as session:
        values = session.scalars(select(GatewayAdminOutbox.value).where(GatewayAdminOutbox.event_type == event_type)
                                 .order_by(GatewayAdminOutbox.seq)).all()
    return [decode(v.encode(), CATALOG) for v in values]


def plan(gateway: FinalizeDoor) -> Any:
    with read_session(gateway.engine) as session:
        snapshot = load_snapshot(session, LOOK_AT)
    return snapshot, plan_tick(snapshot, LOOK_AT, SchedulerSettings(), TOPICS)


async def test_an_order_that_replaces_a_certificate_retires_it_once_valid(door: FinalizeDoor) -> None:  # noqa: F811
    old, leaf, key, kid = await issued(door)
    snapshot, before = plan(door)  # the control: before the renewal, the scheduler watches and counts it
    assert old.certificate_id in {c.certificate_id for c in snapshot.certificates}
    assert before.buckets["1d_7d"] == 1
    assert [n.certificate_id for n in before.expiring] == [old.certificate_id]

    event, _ = await renew(door, key, kid, serial=0x5B1D, replaces=cert_id_of(leaf))
    new_id = event.data.certificate_id
    assert serial_status(door, old.certificate_id) == {"4f2a0c11": "superseded"}
    assert serial_status(door, new_id) == {"5b1d": "active"}

    snapshot, after = plan(door)
    assert old.certificate_id not in {c.certificate_id for c in snapshot.certificates}
    assert after.buckets["1d_7d"] == 0 and after.buckets["lt_1d"] == 0
    assert [n for n in after.expiring + after.renewals if n.certificate_id == old.certificate_id] == []
    assert door.commands(RevokeCertificate) == []  # retired, not revoked

    [superseded] = outbox(door, CertificateSuperseded.TYPE)
    assert superseded.data == CertificateSuperseded(
        certificate_id=old.certificate_id, serial="4f2a0c11", replaced_by=new_id, replaced_by_serial="5b1d",
        reason=SupersededBy.ACME_REPLACES, superseded_at=RENEWED_AT)
    assert superseded.causationid == event.id
    [valid] = [e for e in outbox(door, "io.certrail.admin.acme_order_valid.v1") if e.data.change["certificate_id"] == new_id]
    assert valid.data.change["retired"] == [{"certificate_id": old.certificate_id, "serial": "4f2a0c11",
                                             "reason": "acme_replaces"}]

    # redeliveries change nothing: the old serial stays superseded, no second CertificateSuperseded
    old_issued, _ = issued_event(old, csr_der("www.example.com")[0], 0x4F2A0C11)
    fold(door, old_issued)
    fold(door, event)
    assert serial_status(door, old.certificate_id) == {"4f2a0c11": "superseded"}
    assert len(outbox(door, CertificateSuperseded.TYPE)) == 1


def inventory(gateway: FinalizeDoor, certificate_id: str, *events: Envelope) -> tuple[str | None, dict[str, str]]:
    """The auditor's inventory fold of ``events``: the certificate's status (None: no row yet) and its serials'."""
    with write_session(gateway.engine) as session:
        apply_events(session, [e for e in map(inventory_event, events) if e is not None])
    with read_session(gateway.engine) as session:
        row = session.get(CertificateInventory, certificate_id)
        serials = session.scalars(select(CertificateSerial).where(CertificateSerial.certificate_id == certificate_id))
        return None if row is None else row.status, {s.serial: s.status for s in serials}


async def test_the_inventory_shows_the_replaced_certificate_superseded_in_either_order(door: FinalizeDoor) -> None:  # noqa: F811
    old, leaf, key, kid = await issued(door)
    await renew(door, key, kid, serial=0x5B1D, replaces=cert_id_of(leaf))
    [superseded] = outbox(door, CertificateSuperseded.TYPE)
    old_issued, _ = issued_event(old, csr_der("www.example.com")[0], 0x4F2A0C11)
    assert inventory(door, old.certificate_id, old_issued) == ("active", {"4f2a0c11": "active"})
    assert inventory(door, old.certificate_id, superseded) == ("superseded", {"4f2a0c11": "superseded"})

    # the auditor's topics keep no order between them: CertificateSuperseded (events.gateway) before the
    # CertificateIssued (events.issuer) builds the same row
    with write_session(door.engine) as session:
        session.execute(delete(CertificateInventory))
        session.execute(delete(CertificateSerial))
    assert inventory(door, old.certificate_id, superseded) == (None, {"4f2a0c11": "superseded"})
    assert inventory(door, old.certificate_id, old_issued) == ("superseded", {"4f2a0c11": "superseded"})


async def test_a_certificate_revoked_before_its_replacement_stays_revoked(door: FinalizeDoor) -> None:  # noqa: F811
    old, leaf, key, kid = await issued(door)
    revoked = CertificateRevoked(certificate_id=old.certificate_id, serial="4f2a0c11", connector="emca",
                                 request_id="elsewhere-1", revoked_at=NOW, reason=RevocationReason.KEY_COMPROMISE)
    fold(door, make_event(revoked, id="revoked-1", source="/certrail/issuer", time=NOW))
    await renew(door, key, kid, serial=0x5B1D, replaces=cert_id_of(leaf))
    assert serial_status(door, old.certificate_id) == {"4f2a0c11": "revoked"}
    assert outbox(door, CertificateSuperseded.TYPE) == []


async def test_the_same_identifiers_without_replaces_retire_only_the_same_key_type(door: FinalizeDoor) -> None:  # noqa: F811
    old, _, key, kid = await issued(door)  # an EC P-256 key
    # an RSA certificate for the same names (the other half of a dual ECDSA/RSA deployment): a new certificate
    rsa_event, _ = await renew(door, key, kid, serial=0x5B1D, csr_key=rsa.generate_private_key(65537, 2048))
    assert serial_status(door, old.certificate_id) == {"4f2a0c11": "active"}
    assert outbox(door, CertificateSuperseded.TYPE) == []

    # another account's certificate for the same names is not its to renew
    other_key, other_kid = await door.account()
    other = await door.ready(other_key, other_kid, "www.example.com")
    csr, _ = csr_der("www.example.com")
    assert (await door.finalize(other, other_key, other_kid, csr)).status_code == 200
    other_command = door.commands(IssueCertificate)[-1]
    fold(door, issued_event(other_command, csr, 0x6C2E, at=RENEWED_AT)[0])

    # an EC certificate for exactly the same names, account and profile: certbot's renewal without ARI
    event, _ = await renew(door, key, kid, serial=0x7D3F, at=RENEWED_AT + timedelta(hours=1))
    assert serial_status(door, old.certificate_id) == {"4f2a0c11": "superseded"}
    assert serial_status(door, rsa_event.data.certificate_id) == {"5b1d": "active"}
    assert serial_status(door, other_command.certificate_id) == {"6c2e": "active"}
    [superseded] = outbox(door, CertificateSuperseded.TYPE)
    assert (superseded.data.certificate_id, superseded.data.replaced_by, superseded.data.reason) == (
        old.certificate_id, event.data.certificate_id, SupersededBy.ACME_SAME_IDENTIFIERS)


# -- revokeCert's own admin event --------------------------------------------------------------------------------------


async def test_revoke_cert_records_acme_certificate_revoked_once(tmp_path: Path) -> None:
    import josepy

    door = open_finalize_door(tmp_path)  # noqa: F811 - this test's own door (the default profile)
    try:
        key, kid, order, _, csr_key, leaf = await issued_order(door)
        assert (await revoke(door, leaf, key, kid=kid, reason=4)).status_code == 200
        problem(await revoke(door, leaf, josepy.JWKEC(key=csr_key), kid=None), "alreadyRevoked", 400)  # no event
        [event] = door.kinds(AcmeCertificateRevoked)
        order_id = order["url"].rsplit("/", 1)[1]
        assert (event.order_id, event.account_id, event.requester) == (order_id, kid.rsplit("/", 1)[1], "ci-pipeline")
        assert event.actor == f"acme:{event.account_id}"
        assert event.change == {"certificate_id": f"acme-{order_id}", "serial": "4f2a0c11", "reason": "superseded",
                                "request_id": "acme-revoke-4f2a0c11", "signed_with": "account"}
        # the door published it after the commit, like its other events
        assert AcmeCertificateRevoked.TYPE in {decode(r["value"].encode(), CATALOG).type for r in door.published}
    finally:
        await door.validations.drain(5)
        await door.client.aclose()
        door.engine.dispose()


async def test_revoke_cert_signed_with_the_certificates_key_says_so(tmp_path: Path) -> None:
    import josepy

    door = open_finalize_door(tmp_path)  # noqa: F811 - this test's own door
    try:
        _, _, _, _, csr_key, leaf = await issued_order(door)
        assert (await revoke(door, leaf, josepy.JWKEC(key=csr_key), kid=None)).status_code == 200
        [event] = door.kinds(AcmeCertificateRevoked)
        assert event.change["signed_with"] == "certificate_key" and event.change["reason"] == "unspecified"
    finally:
        await door.validations.drain(5)
        await door.client.aclose()
        door.engine.dispose()
