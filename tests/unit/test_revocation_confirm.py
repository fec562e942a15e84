"""Revocation confirmed on the CA's CRL (services/issuer/revocation/): the CRL checks as pure functions, and the
confirmer's rounds against a fake CRL source, a manual clock and the issuer's real tables (SQLite)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from services.common.consumer import Outbound
from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import RevokeCertificate
from services.common.contracts.envelope import Envelope, decode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateIssued
from services.common.contracts.fields import RevocationReason
from services.common.contracts.revocation import RevocationConfirmed, RevocationUnconfirmed, UnconfirmedCause
from services.common.contracts.topics import Topics
from services.common.db import write_session
from services.common.emca.types import TransientError
from services.issuer import state
from services.issuer.revocation import store
from services.issuer.revocation.confirmer import ConfirmSettings, RevocationConfirmer
from services.issuer.revocation.crl_check import (
    CrlUntrusted,
    Listed,
    NotListed,
    ReasonMismatch,
    distribution_points,
    find_serial,
    verify_crl,
)
from services.issuer.revocation.metrics import RevocationMetrics
from services.issuer.revocation.source import FakeCrlSource
from services.issuer.state import NewOperation, StoredRecord
from tests.unit.examples import examples
from tests.unit.small_ca import CDP, T0, Ca

CONNECTOR = "emca-prod"
TOPICS = Topics("certrail")


@pytest.fixture(scope="module")
def ca() -> Ca:
    return Ca.make()


def _fresh(ca: Ca) -> Ca:
    return Ca(ca.key, ca.certificate)


# -- the CRL checks (pure) -------------------------------------------------------------------------------------------


def test_a_good_crl_lists_the_serial_with_its_reason(ca: Ca) -> None:
    crl_ca = _fresh(ca)
    crl_ca.revoke("7a1b", x509.ReasonFlags.key_compromise)
    crl_ca.revoke("7a1c", None)  # unspecified: no reasonCode extension, as RFC 5280 recommends
    verified = verify_crl(crl_ca.crl(), ca.pin.chain_pem, ca.pin.sha256)
    assert verified.number == 1 and verified.this_update == T0
    assert find_serial(verified, "7a1b", RevocationReason.KEY_COMPROMISE) == Listed(T0)
    assert find_serial(verified, "7a1c", RevocationReason.UNSPECIFIED) == Listed(T0)


def test_a_crl_signed_by_another_key_is_refused(ca: Ca) -> None:
    forged = _fresh(ca)
    forged.revoke("7a1b", x509.ReasonFlags.key_compromise)
    with pytest.raises(CrlUntrusted, match="signature does not verify"):
        verify_crl(forged.crl(signer=ec.generate_private_key(ec.SECP256R1())), ca.pin.chain_pem, ca.pin.sha256)


def test_a_crl_of_another_ca_and_a_chain_that_is_not_the_pin_are_refused(ca: Ca) -> None:
    other = Ca.make("Issuing CA 2")
    with pytest.raises(CrlUntrusted, match="not the pinned issuing CA"):
        verify_crl(other.crl(), ca.pin.chain_pem, ca.pin.sha256)  # its own, valid signature: wrong issuer
    with pytest.raises(CrlUntrusted, match="pinned issuing CA"):
        verify_crl(other.crl(), other.pin.chain_pem, ca.pin.sha256)  # a chain that does not hash to the pin
    with pytest.raises(CrlUntrusted, match="not a DER CRL"):
        verify_crl(b"<html>maintenance</html>", ca.pin.chain_pem, ca.pin.sha256)


def test_an_absent_serial_and_another_reason_are_not_a_confirmation(ca: Ca) -> None:
    crl_ca = _fresh(ca)
    crl_ca.revoke("7a1b", x509.ReasonFlags.superseded)
    verified = verify_crl(crl_ca.crl(), ca.pin.chain_pem, ca.pin.sha256)
    assert find_serial(verified, "7a1d", RevocationReason.SUPERSEDED) == NotListed()
    assert find_serial(verified, "7a1b", RevocationReason.KEY_COMPROMISE) == ReasonMismatch("superseded")


def test_distribution_points_are_the_http_uris_in_order(ca: Ca) -> None:
    assert distribution_points(x509.load_pem_x509_certificate(ca.leaf(0x7A1B).encode())) == (CDP,)
    assert distribution_points(x509.load_pem_x509_certificate(ca.leaf(0x7A1C, cdp=None).encode())) == ()


# -- the confirmer -------------------------------------------------------------------------------------------------


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Published:
    records: list[StoredRecord] = field(default_factory=list)
    fail: bool = False

    async def __call__(self, records: Sequence[StoredRecord]) -> None:
        if self.fail:
            raise RuntimeError("Kafka is down")
        self.records.extend(records)

    def events(self) -> list[Envelope]:
        return [decode(r.value, CATALOG) for r in self.records]


@dataclass
class Rig:
    engine: Engine
    ca: Ca
    source: FakeCrlSource
    clock: Clock
    published: Published
    registry: CollectorRegistry
    confirmer: RevocationConfirmer

    def revoke(self, serial: str, reason: RevocationReason = RevocationReason.KEY_COMPROMISE, *, cdp: str | None = CDP,
               n: int = 1) -> str:
        """emCA accepted a revocation of ``serial``: the command's outcome and its check, as the processor records them."""
        self.source.certificates[serial] = self.ca.leaf(int(serial, 16), cdp=cdp)
        data = RevokeCertificate(certificate_id=f"cert-{serial}", serial=serial, request_id=f"req-{n}-{serial}",
                                 connector=CONNECTOR, reason=reason)
        command = make_event(data, id=f"cmd-{n}-{serial}", source="/t", time=self.clock(), subject=data.certificate_id,
                             correlationid=data.request_id)
        topic = TOPICS.commands(CONNECTOR)
        op_key = f"revoke:{command.id}"
        new = NewOperation(op_key, "revoke", command.id, data.certificate_id, data.request_id, CONNECTOR, topic, 0, "{}")
        check = self.confirmer.check_for(command, data, topic, 0, self.clock())
        with write_session(self.engine) as session:
            state.begin_attempt_in(session.connection(), new, self.clock())
            store.record_revoked_in(session.connection(), op_key, [], self.clock(), serial=serial, check=check)
        return check.check_id

    def record_issued(self, serial: str, leaf: str) -> None:
        """The issuer's own record of the issuance (its stored CertificateIssued), as the processor leaves it."""
        certificate_id = f"cert-{serial}"
        data = examples()[CertificateIssued].model_copy(
            update={"certificate_id": certificate_id, "serial": serial, "certificate": leaf})
        event = make_event(data, id=f"issued-{serial}", source="/t", time=T0, subject=certificate_id)
        record = StoredRecord.of(Outbound(TOPICS.issuer_events, event, key=certificate_id))
        op_key = f"iss-{serial}"
        new = NewOperation(op_key, "issue", "c", certificate_id, "r", CONNECTOR, TOPICS.commands(CONNECTOR), 0, "{}")
        with write_session(self.engine) as session:
            state.begin_attempt_in(session.connection(), new, T0)
            state.record_outcome_in(session.connection(), op_key, state.OpState.ISSUED, [record], T0, serial=serial)

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


SETTINGS = ConfirmSettings(timeout_s=600, poll_initial_s=5, poll_max_s=60)


def _rig(engine: Engine, ca: Ca, settings: ConfirmSettings = SETTINGS, *, published: Published | None = None,
         source: FakeCrlSource | None = None, clock: Clock | None = None) -> Rig:
    source = source or FakeCrlSource(ca.pin)
    clock = clock or Clock()
    published = published or Published()
    registry = CollectorRegistry()
    confirmer = RevocationConfirmer(
        engine=engine, source=source, publish=published, topics=TOPICS, metrics=RevocationMetrics(registry), clock=clock,
        settings=settings, partitions=lambda: {(TOPICS.commands(CONNECTOR), 0)}, event_source="/certrail/issuer")
    return Rig(engine, _fresh(ca), source, clock, published, registry, confirmer)


async def test_a_listed_serial_is_confirmed_by_one_read_for_every_pending_check(engine: Engine, ca: Ca) -> None:
    rig = _rig(engine, ca)
    first = rig.revoke("7a01")
    rig.clock.advance(3)
    second = rig.revoke("7a02", RevocationReason.SUPERSEDED)  # not due when the first is: served by its read
    rig.record_issued("7a02", rig.source.certificates.pop("7a02"))  # (found without asking emCA: it is not due)
    rig.clock.advance(-3)
    rig.ca.revoke("7a01", x509.ReasonFlags.key_compromise)
    rig.ca.revoke("7a02", x509.ReasonFlags.superseded)
    rig.source.crls[CDP] = rig.ca.crl()

    await rig.confirmer.run_once()
    assert rig.source.fetched == [], "nothing is due before poll_initial_s"
    rig.clock.advance(5)
    await rig.confirmer.run_once()

    assert rig.source.fetched == [CDP]  # one read served both
    events = {e.data.serial: e for e in rig.published.events()}
    assert set(events) == {"7a01", "7a02"}
    confirmed = events["7a01"]
    assert isinstance(confirmed.data, RevocationConfirmed)
    assert (confirmed.causationid, confirmed.subject, confirmed.correlationid) == (first, "cert-7a01", "req-1-7a01")
    assert (confirmed.data.crl_number, confirmed.data.crl_this_update, confirmed.data.distribution_point) == ("1", T0, CDP)
    assert confirmed.data.reason is RevocationReason.KEY_COMPROMISE and confirmed.data.revoked_at_ca == T0
    assert events["7a02"].causationid == second
    assert {r.topic for r in rig.published.records} == {TOPICS.issuer_events}
    assert rig.metric("certrail_issuer_revocations_confirmed_total", connector=CONNECTOR) == 2
    assert rig.metric("certrail_issuer_revocation_confirmations_pending", connector=CONNECTOR) == 0
    loaded = store.load(engine, first)
    assert loaded is not None and loaded.state == "confirmed" and loaded.published_at is not None


async def test_an_absent_serial_keeps_polling_with_backoff_until_it_is_listed(engine: Engine, ca: Ca) -> None:
    rig = _rig(engine, ca)
    check_id = rig.revoke("7a03")
    rig.source.crls[CDP] = rig.ca.crl()  # not on it yet (the CA publishes later)
    for wait in (5, 5, 10):  # 5 s, then twice the last wait
        rig.clock.advance(wait)
        await rig.confirmer.run_once()
        await rig.confirmer.run_once()  # not due again yet: no read
    assert len(rig.source.fetched) == 3 and rig.published.records == []
    pending = store.load(engine, check_id)
    assert pending is not None and pending.state == "pending" and pending.checks == 3
    assert pending.last_cause == UnconfirmedCause.NOT_LISTED and pending.next_check_at == rig.clock() + timedelta(seconds=20)

    rig.ca.revoke("7a03", x509.ReasonFlags.key_compromise)
    rig.source.crls[CDP] = rig.ca.crl()
    rig.clock.advance(20)
    await rig.confirmer.run_once()
    [event] = rig.published.events()
    assert isinstance(event.data, RevocationConfirmed) and event.data.crl_number == "2"


async def test_another_reason_on_the_crl_is_unconfirmed_at_the_deadline(engine: Engine, ca: Ca) -> None:
    rig = _rig(engine, ca)
    rig.revoke("7a04", RevocationReason.KEY_COMPROMISE)
    rig.ca.revoke("7a04", x509.ReasonFlags.superseded)
    rig.source.crls[CDP] = rig.ca.crl()
    while not rig.published.records:
        assert rig.clock() <= T0 + timedelta(seconds=SETTINGS.timeout_s), "no outcome by the deadline"
        rig.clock.advance(5)
        await rig.confirmer.run_once()
    [event] = rig.published.events()
    assert isinstance(event.data, RevocationUnconfirmed)
    assert event.data.cause is UnconfirmedCause.REASON_MISMATCH and event.data.listed_reason == "superseded"
    assert event.data.given_up_at == T0 + timedelta(seconds=SETTINGS.timeout_s)  # polled up to the deadline, not past it
    assert event.data.crl_number == "1" and event.data.checks == len(rig.source.fetched) < 20  # bounded backoff
    assert rig.metric("certrail_issuer_revocations_unconfirmed_total", connector=CONNECTOR, cause="reason_mismatch") == 1


async def test_a_forged_crl_never_confirms_and_the_deadline_says_why(engine: Engine, ca: Ca) -> None:
    rig = _rig(engine, ca, ConfirmSettings(timeout_s=30, poll_initial_s=5, poll_max_s=10))
    rig.revoke("7a05")
    rig.ca.revoke("7a05", x509.ReasonFlags.key_compromise)  # listed, but signed by someone else
    rig.source.crls[CDP] = rig.ca.crl(signer=ec.generate_private_key(ec.SECP256R1()))
    for _ in range(10):
        rig.clock.advance(5)
        await rig.confirmer.run_once()
    [event] = rig.published.events()
    assert isinstance(event.data, RevocationUnconfirmed) and event.data.cause is UnconfirmedCause.CRL_UNTRUSTED
    assert event.data.error is not None and event.data.error.code is ErrorCode.CERTIFICATE_UNTRUSTED
    assert rig.metric("certrail_issuer_crl_fetches_total", connector=CONNECTOR, result="untrusted") >= 3
    assert rig.metric("certrail_issuer_crl_fetches_total", connector=CONNECTOR, result="ok") == 0


async def test_the_deadline_without_a_listing_or_a_readable_crl_is_unconfirmed(engine: Engine, ca: Ca) -> None:
    rig = _rig(engine, ca, ConfirmSettings(timeout_s=20, poll_initial_s=5, poll_max_s=60))
    rig.revoke("7a06")
    rig.revoke("7a07", cdp=None)
    rig.source.crls[CDP] = TransientError(f"{CDP} unreachable", detail="unreachable")
    rig.clock.advance(5)
    await rig.confirmer.run_once()
    [no_cdp] = rig.published.events()  # no distribution point: nothing to wait for
    assert isinstance(no_cdp.data, RevocationUnconfirmed) and no_cdp.data.serial == "7a07"
    assert no_cdp.data.cause is UnconfirmedCause.NO_DISTRIBUTION_POINT
    rig.clock.advance(15)  # the deadline (and the capped backoff lands on it)
    await rig.confirmer.run_once()
    events = {e.data.serial: e.data for e in rig.published.events()}
    unreadable = events["7a06"]
    assert isinstance(unreadable, RevocationUnconfirmed) and unreadable.cause is UnconfirmedCause.CRL_UNAVAILABLE
    assert unreadable.error is not None and unreadable.error.code is ErrorCode.CA_UNREACHABLE
    assert unreadable.deadline == T0 + timedelta(seconds=20) and unreadable.distribution_point == CDP
    assert rig.metric("certrail_issuer_revocations_unconfirmed_total", connector=CONNECTOR, cause="crl_unavailable") == 1


async def test_the_distribution_point_comes_from_the_issuers_own_record_first(engine: Engine, ca: Ca) -> None:
    rig = _rig(engine, ca)
    rig.revoke("7a08")
    # emCA's copy names another distribution point: the stored CertificateIssued is read first
    rig.record_issued("7a08", rig.ca.leaf(0x7A08, cdp="http://other.example.test/issuing.crl"))
    rig.clock.advance(5)
    await rig.confirmer.run_once()
    assert rig.source.fetched == ["http://other.example.test/issuing.crl"]


async def test_an_outcome_stored_but_not_published_is_published_after_a_restart(engine: Engine, ca: Ca) -> None:
    published = Published(fail=True)
    rig = _rig(engine, ca, published=published)
    check_id = rig.revoke("7a09")
    rig.ca.revoke("7a09", x509.ReasonFlags.key_compromise)
    rig.source.crls[CDP] = rig.ca.crl()
    rig.clock.advance(5)
    with pytest.raises(RuntimeError, match="Kafka is down"):
        await rig.confirmer.run_once()
    stored = store.load(engine, check_id)
    assert stored is not None and stored.state == "confirmed" and stored.published_at is None

    published.fail = False  # "restarted": a new confirmer on the same table
    again = _rig(engine, ca, published=published, source=rig.source, clock=rig.clock)
    await again.confirmer.run_once()
    assert [r.value for r in published.records] == [r.value for r in stored.records()]
    assert rig.source.fetched == [CDP], "the settled check is not read again"
    reloaded = store.load(engine, check_id)
    assert reloaded is not None and reloaded.published_at is not None


async def test_checks_of_partitions_this_instance_does_not_hold_are_left_alone(engine: Engine, ca: Ca) -> None:
    rig = _rig(engine, ca)
    rig.revoke("7a0a")
    rig.ca.revoke("7a0a", x509.ReasonFlags.key_compromise)
    rig.source.crls[CDP] = rig.ca.crl()
    elsewhere = RevocationConfirmer(
        engine=engine, source=rig.source, publish=rig.published, topics=TOPICS, metrics=RevocationMetrics(CollectorRegistry()),
        clock=rig.clock, settings=SETTINGS, partitions=lambda: {(TOPICS.commands(CONNECTOR), 1)}, event_source="/t")
    rig.clock.advance(5)
    await elsewhere.run_once()
    assert rig.source.fetched == [] and rig.published.records == []
    await rig.confirmer.run_once()  # the instance that holds the revocation command's partition
    assert [e.type for e in rig.published.events()] == [RevocationConfirmed.TYPE]
