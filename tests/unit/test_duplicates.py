"""Possible duplicates (services/issuer/duplicates/): the checks on an operator's serial as pure functions (a table of
named cases), and the resolver against the issuer's real tables (SQLite), a fake connector and a fake emCA
connection: tracking, the gauge, resolution, refusals (audited), idempotent repeats, emCA unavailable."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, delete, select, update

from services.common.certificate_trust import spki_der
from services.common.consumer import Outbound
from services.common.contracts.catalog import CATALOG
from services.common.contracts.duplicates import DuplicateResolution, DuplicateResolutionRefused, DuplicateResolved
from services.common.contracts.envelope import decode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateIssued
from services.common.contracts.fields import RevocationReason
from services.common.contracts.topics import Topics
from services.common.db import read_session, write_session
from services.common.db_schema import IssuerAdminOutbox, IssuerDuplicate, IssuerRevocationCheck
from services.common.emca.types import IssuedCertificate, RequestPermanentError, Revocation, TransientError
from services.issuer import state
from services.issuer.connectors import UnknownConnector
from services.issuer.duplicates import store
from services.issuer.duplicates.checks import Expected, NotTheExtra, check_extra, serial_of
from services.issuer.duplicates.resolver import DuplicateResolver, Refused, Resolution, Unavailable
from services.issuer.duplicates.store import DuplicateState
from services.issuer.metrics import IssuerMetrics
from services.issuer.registry.outbox import OutboxRelay
from services.issuer.state import NewOperation, StoredRecord
from tests.unit.examples import examples
from tests.unit.small_ca import T0, Ca

CONNECTOR = "emca-42"
TOPICS = Topics("certrail")
ISSUANCE = "7d0c3c52-6f3b-5a8e-9a51-3f1c2b7d9e10"
CERT_ID = "www.example.test"


# -- a small CA ------------------------------------------------------------------------------------------------------


def key_sha256(key: ec.EllipticCurvePrivateKey) -> str:
    return hashlib.sha256(spki_der(key.public_key())).hexdigest()


@pytest.fixture(scope="module")
def ca() -> Ca:
    return Ca.make()


@pytest.fixture(scope="module")
def csr_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# -- the checks (pure) -----------------------------------------------------------------------------------------------


def test_serials_are_read_as_certrail_writes_them() -> None:
    assert serial_of("00:3F:9A") == "3f9a" and serial_of(" 3f9a ") == "3f9a"
    for bad in ("", "xyz", "0x" * 30, "1" * 41):
        with pytest.raises(ValueError):
            serial_of(bad)


def _case(ca: Ca, csr_key: ec.EllipticCurvePrivateKey, name: str) -> tuple[str, str, int | None, ErrorCode | None]:
    """(asked serial, emCA's PEM, expected status, expected code) of one named case; delivered serial 0a."""
    other_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "the extra certificate": ("b1", ca.leaf(0xB1, csr_key, cdp=None), None, None),
        "the delivered serial": ("a", ca.leaf(0xA, csr_key, cdp=None), 409, ErrorCode.CERTIFICATE_MISMATCH),
        "another public key": ("b2", ca.leaf(0xB2, other_key, cdp=None), 422, ErrorCode.CERTIFICATE_MISMATCH),
        "another CA": ("b3", Ca.make("Issuing CA 1").leaf(0xB3, csr_key, cdp=None), 422, ErrorCode.CERTIFICATE_UNTRUSTED),
        "emCA answered another serial": ("b4", ca.leaf(0xB5, csr_key, cdp=None), 422, ErrorCode.CERTIFICATE_MISMATCH),
        "not one certificate": ("b6", ca.leaf(0xB6, csr_key, cdp=None) * 2, 422, ErrorCode.CERTIFICATE_MISMATCH),
    }[name]


@pytest.mark.parametrize("name", ["the extra certificate", "the delivered serial", "another public key", "another CA",
                                  "emCA answered another serial", "not one certificate"])
def test_the_extra_certificate_checks(ca: Ca, csr_key: ec.EllipticCurvePrivateKey, name: str) -> None:
    serial, pem, status, code = _case(ca, csr_key, name)
    expected = Expected(delivered_serial="0a", public_key_sha256=key_sha256(csr_key), pinned_chain_pem=(ca.pem,),
                        pinned_sha256=ca.sha256)
    if code is None:
        check_extra(serial, pem, expected)
        return
    with pytest.raises(NotTheExtra) as refused:
        check_extra(serial, pem, expected)
    assert (refused.value.status, refused.value.code) == (status, code)


# -- the resolver --------------------------------------------------------------------------------------------------


@dataclass
class FakeConnection:
    certificates: dict[str, str] = field(default_factory=dict)
    revoked: list[tuple[str, RevocationReason]] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    revoke_error: Exception | None = None

    async def get_certificate(self, serial: str) -> IssuedCertificate:
        self.fetched.append(serial)
        if serial not in self.certificates:
            raise RequestPermanentError(ErrorCode.CA_REJECTED, "certificate not found")
        return IssuedCertificate(serial=serial, certificate_pem=self.certificates[serial], chain_pem=())

    async def revoke(self, serial: str, reason: RevocationReason, *, remarks: str = "") -> Revocation:
        if self.revoke_error is not None:
            raise self.revoke_error
        self.revoked.append((serial, reason))
        return Revocation(serial=serial, reason=reason)


@dataclass
class FakeRuntime:
    name: str
    connector: Any
    connection: FakeConnection
    usable: asyncio.Event = field(default_factory=asyncio.Event)
    status: Any = field(default_factory=lambda: SimpleNamespace(value="up"))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[FakeConnection]:
        yield self.connection


@dataclass
class FakePool:
    runtime: FakeRuntime

    async def get(self, name: str) -> FakeRuntime:
        if name != self.runtime.name:
            raise UnknownConnector(name)
        return self.runtime

    def runtimes(self) -> list[FakeRuntime]:
        return [self.runtime]


@dataclass
class Rig:
    engine: Engine
    resolver: DuplicateResolver
    connection: FakeConnection
    runtime: FakeRuntime
    registry: CollectorRegistry
    published: list[StoredRecord]  # what the resolver published itself (refusals)
    woken: list[bool]
    broker_down: list[bool]  # [True]: publishing fails
    relay: OutboxRelay  # the issuer's outbox relay, run by hand here
    relayed: list[StoredRecord]  # what it published
    queued: list[bool]  # the resolver woke the relay

    def gauge(self) -> float | None:
        return self.registry.get_sample_value("certrail_issuer_duplicates_unresolved", {"connector": CONNECTOR})

    def outbox(self) -> list[str]:
        """The values of the issuer's outbox rows, in order."""
        with read_session(self.engine) as session:
            return list(session.scalars(select(IssuerAdminOutbox.value).order_by(IssuerAdminOutbox.seq)))

    def events(self, cls: type) -> list[Any]:
        """Events of ``cls`` the resolver published or queued in the outbox (with the resolution)."""
        found = [decode(r.value, CATALOG) for r in self.published] + [decode(v.encode(), CATALOG) for v in self.outbox()]
        return [e for e in found if isinstance(e.data, cls)]

    def checks(self) -> list[Any]:
        table = IssuerRevocationCheck.__table__
        with read_session(self.engine) as session:
            return list(session.connection().execute(select(table)).mappings().all())


def _detect(engine: Engine, delivered: str, public_key_sha256: str, issuance: str = ISSUANCE) -> None:
    """What the processor does for a POSSIBLE_DUPLICATE: the issuance's outcome and its duplicate, one transaction."""
    topic = TOPICS.commands(CONNECTOR)
    new = NewOperation(issuance, "issue", f"cmd-{issuance}", CERT_ID, "req-1", CONNECTOR, topic, 2, "{}")
    duplicate = store.new_duplicate(issuance_id=issuance, certificate_id=CERT_ID, request_id="req-1", correlation_id="req-1",
                                    detected_event_id=f"detected-{issuance}", connector=CONNECTOR, delivered_serial=delivered,
                                    public_key_sha256=public_key_sha256, now=T0)
    event = make_event(examples()[CertificateIssued], id=f"issued-{issuance}", source="/t", time=T0, subject=CERT_ID)
    records = [StoredRecord.of(Outbound(TOPICS.issuer_events, event, key=CERT_ID))]
    with write_session(engine) as session:
        state.begin_attempt_in(session.connection(), new, T0)
    for _ in range(2):  # a step run again after its group failed keeps the first duplicate
        with write_session(engine) as session:
            store.record_issued_in(session.connection(), issuance, records, T0, duplicate=duplicate, serial=delivered,
                                   possible_duplicate=True, error_code=ErrorCode.POSSIBLE_DUPLICATE.value)


@pytest.fixture
def rig(engine: Engine, ca: Ca, csr_key: ec.EllipticCurvePrivateKey) -> Rig:
    registry = CollectorRegistry()
    metrics = IssuerMetrics(registry)
    connection = FakeConnection()
    connector = SimpleNamespace(pinned_chain_pem=(ca.pem,), pinned_ca_sha256=ca.sha256)
    runtime = FakeRuntime(CONNECTOR, connector, connection)
    runtime.usable.set()
    published: list[StoredRecord] = []
    woken: list[bool] = []
    broker_down: list[bool] = []

    relayed: list[StoredRecord] = []
    queued: list[bool] = []

    async def publish(records: Sequence[StoredRecord]) -> None:
        if broker_down:
            raise OSError("broker down")
        published.extend(records)

    async def send(records: Sequence[tuple[str, str | None, bytes, str]]) -> None:
        if broker_down:
            raise OSError("broker down")
        relayed.extend(StoredRecord(topic, key, value, kind) for topic, key, value, kind in records)

    resolver = DuplicateResolver(engine=engine, pool=FakePool(runtime), publish=publish, topics=TOPICS,  # type: ignore[arg-type]
                                 gauge=metrics.duplicates_unresolved, clock=lambda: T0 + timedelta(hours=1),
                                 event_source="/certrail/issuer", on_check=lambda: woken.append(True))
    resolver.queued = lambda: queued.append(True)
    relay = OutboxRelay(engine, TOPICS, send, lambda: T0 + timedelta(hours=1))
    _detect(engine, "a", key_sha256(csr_key))
    connection.certificates.update({"a": ca.leaf(0xA, csr_key, cdp=None), "b1": ca.leaf(0xB1, csr_key, cdp=None),
                                    "c": ca.leaf(0xC, ec.generate_private_key(ec.SECP256R1()), cdp=None)})
    return Rig(engine, resolver, connection, runtime, registry, published, woken, broker_down, relay, relayed, queued)


async def test_a_duplicate_is_tracked_and_gauged_until_its_extra_serial_is_revoked(rig: Rig) -> None:
    [unresolved] = await rig.resolver.listed(DuplicateState.UNRESOLVED)
    assert (unresolved.certificate_id, unresolved.delivered_serial, unresolved.topic, unresolved.partition) == (
        CERT_ID, "a", TOPICS.commands(CONNECTOR), 2)
    await rig.resolver.run_once()
    assert rig.gauge() == 1

    done = await rig.resolver.resolve(CERT_ID, Resolution(extra_serial="00:B1", note="found in the console"), "ops-anna")
    assert (done.state, done.resolution, done.extra_serial, done.resolved_by) == ("resolved", "revoked", "b1", "ops-anna")
    assert rig.connection.revoked == [("b1", RevocationReason.SUPERSEDED)]  # the delivered serial is untouched
    [resolved] = rig.events(DuplicateResolved)
    assert (resolved.data.extra_serial, resolved.data.reason, resolved.data.actor, resolved.causationid) == (
        "b1", RevocationReason.SUPERSEDED, "ops-anna", f"detected-{ISSUANCE}")
    [check] = rig.checks()  # handed to the revocation confirmation, caused by the resolution
    assert (check["serial"], check["reason"], check["check_id"], check["partition"]) == ("b1", "superseded", resolved.id, 2)
    assert rig.woken and rig.gauge() == 0 and await rig.resolver.listed(DuplicateState.UNRESOLVED) == []

    again = await rig.resolver.resolve(CERT_ID, Resolution(extra_serial="b1"), "ops-anna")  # the same answer: stored one
    assert again.resolved_at == done.resolved_at and len(rig.connection.revoked) == 1 and len(rig.events(DuplicateResolved)) == 1
    with pytest.raises(Refused) as conflict:
        await rig.resolver.resolve(CERT_ID, Resolution(no_extra=True, note="none"), "ops-bob")
    assert (conflict.value.status, conflict.value.code) == (409, ErrorCode.DUPLICATE_REQUEST_CONFLICT)


@pytest.mark.parametrize(("serial", "status", "code", "asked_emca"), [
    ("a", 409, ErrorCode.CERTIFICATE_MISMATCH, False),  # the delivered certificate: refused before emCA is asked
    ("c", 422, ErrorCode.CERTIFICATE_MISMATCH, True),  # another public key
    ("d", 404, ErrorCode.CERTIFICATE_NOT_FOUND, True),  # emCA has no such serial
], ids=["delivered", "another-key", "unknown-at-emca"])
async def test_a_serial_that_fails_a_check_is_refused_and_audited(rig: Rig, serial: str, status: int, code: ErrorCode,
                                                                 asked_emca: bool) -> None:
    with pytest.raises(Refused) as refused:
        await rig.resolver.resolve(CERT_ID, Resolution(extra_serial=serial), "ops-anna")
    assert (refused.value.status, refused.value.code) == (status, code)
    assert bool(rig.connection.fetched) is asked_emca and rig.connection.revoked == []
    [event] = rig.events(DuplicateResolutionRefused)
    assert (event.data.extra_serial, event.data.error.code, event.data.actor) == (serial, code, "ops-anna")
    assert [d.issuance_id for d in await rig.resolver.listed(DuplicateState.UNRESOLVED)] == [ISSUANCE]
    assert rig.checks() == []


async def test_emca_refusing_the_revocation_is_a_refusal_and_emca_down_is_unavailable(rig: Rig) -> None:
    rig.connection.revoke_error = RequestPermanentError(ErrorCode.CA_REJECTED, "revocation not allowed")
    with pytest.raises(Refused) as refused:
        await rig.resolver.resolve(CERT_ID, Resolution(extra_serial="b1"), "ops-anna")
    assert (refused.value.status, refused.value.code) == (422, ErrorCode.REVOCATION_REJECTED)
    rig.connection.revoke_error = TransientError("connect timeout")
    with pytest.raises(Unavailable):
        await rig.resolver.resolve(CERT_ID, Resolution(extra_serial="b1"), "ops-anna")
    rig.connection.revoke_error = None
    rig.runtime.usable.clear()
    with pytest.raises(Unavailable):
        await rig.resolver.resolve(CERT_ID, Resolution(extra_serial="b1"), "ops-anna")
    assert len(rig.events(DuplicateResolutionRefused)) == 1 and rig.events(DuplicateResolved) == []
    assert [d.state for d in await rig.resolver.listed(None)] == ["unresolved"]


async def test_no_extra_needs_a_note_and_resolves_without_emca(rig: Rig) -> None:
    with pytest.raises(Refused) as refused:
        await rig.resolver.resolve(CERT_ID, Resolution(no_extra=True), "ops-anna")
    assert (refused.value.status, refused.value.code) == (422, ErrorCode.SCHEMA_VIOLATION)
    rig.runtime.usable.clear()  # not needed: nothing is asked of emCA
    done = await rig.resolver.resolve(CERT_ID, Resolution(no_extra=True, note="searched the console"), "ops-anna")
    assert (done.resolution, done.extra_serial, done.note) == (DuplicateResolution.NO_EXTRA.value, None, "searched the console")
    [event] = rig.events(DuplicateResolved)
    assert event.data.resolution is DuplicateResolution.NO_EXTRA and rig.checks() == [] and rig.connection.fetched == []
    with pytest.raises(Refused) as unknown:
        await rig.resolver.resolve("other.example.test", Resolution(no_extra=True, note="x"), "ops-anna")
    assert (unknown.value.status, unknown.value.code) == (404, ErrorCode.CERTIFICATE_NOT_FOUND)


async def test_several_unresolved_duplicates_of_one_certificate_need_the_issuance_id(rig: Rig, csr_key: Any) -> None:
    second = "8e1d4d63-7a4c-5b9f-8b62-4a2d3c8e0f21"
    _detect(rig.engine, "e", key_sha256(csr_key), issuance=second)
    with pytest.raises(Refused) as which:
        await rig.resolver.resolve(CERT_ID, Resolution(no_extra=True, note="x"), "ops-anna")
    assert (which.value.status, which.value.code) == (409, ErrorCode.DUPLICATE_REQUEST_CONFLICT)
    await rig.resolver.resolve(CERT_ID, Resolution(no_extra=True, note="x", issuance_id=second), "ops-anna")
    assert [d.issuance_id for d in await rig.resolver.listed(DuplicateState.UNRESOLVED)] == [ISSUANCE]


async def test_a_resolution_is_queued_in_its_transaction_and_the_relay_publishes_it_once_the_broker_answers(
        rig: Rig) -> None:
    rig.broker_down.append(True)  # the broker is down: the resolution is stored all the same, its event queued with it
    done = await rig.resolver.resolve(CERT_ID, Resolution(no_extra=True, note="x"), "ops-anna")
    assert done.state == "resolved" and rig.queued == [True] and rig.published == []
    [value] = rig.outbox()
    with pytest.raises(OSError):
        await rig.relay.relay_once()
    rig.broker_down.clear()
    assert await rig.relay.relay_once() == 1
    [record] = rig.relayed  # the stored bytes, on the issuer's events topic, keyed by the certificate
    assert (record.topic, record.key, record.value) == (TOPICS.issuer_events, CERT_ID, value.encode())
    assert isinstance(decode(record.value, CATALOG).data, DuplicateResolved)
    assert await rig.relay.relay_once() == 0 and len(rig.relayed) == 1  # sent once
    await rig.resolver.run_once()
    assert rig.queued == [True] and rig.gauge() == 0


async def test_a_resolution_an_earlier_version_stored_unpublished_is_moved_into_the_outbox_once(rig: Rig) -> None:
    await rig.resolver.resolve(CERT_ID, Resolution(no_extra=True, note="x"), "ops-anna")
    [value] = rig.outbox()
    # as the version before the outbox left it: the records in ``outcome``, not acknowledged, nothing queued
    record = StoredRecord(TOPICS.issuer_events, CERT_ID, value.encode())
    table = IssuerDuplicate.__table__
    with write_session(rig.engine) as session:
        session.execute(delete(IssuerAdminOutbox))
        session.execute(update(table).values(outcome=state.encode_outcome([record]), published_at=None))
    rig.queued.clear()
    await rig.resolver.run_once()
    await rig.resolver.run_once()  # a second round (or instance) finds nothing left
    assert rig.outbox() == [value] and rig.queued == [True]
    assert await rig.relay.relay_once() == 1 and [r.value for r in rig.relayed] == [value.encode()]
