"""Certificates that arrive before the gateway event that lets them be installed (decision 0016:
the gateway's and the issuer's events travel on two topics) are parked, not refused: released
when the acceptance, the pin or the renewal's key arrives, refused for good at their deadline
(services/deployer/parking.py, handlers/parked.py). Unit: fake targets, SQLite in a temp dir."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import delete, update

from services.common.consumer import Outbound
from services.common.contracts.admin import AdminOutcome, ConnectorCreated
from services.common.contracts.envelope import Envelope, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateDeployed, DeploymentFailed, RequestAccepted
from services.common.contracts.fields import RequestKind
from services.common.contracts.identity import issuance_id
from services.common.db_schema import DeployerAcceptedCertificateRow, DeployerParkedCertificateRow
from services.deployer import parking, projection
from services.deployer.context import DeployerContext
from services.deployer.handlers.deploy import on_certificate_issued
from services.deployer.handlers.parked import sweep_once
from services.deployer.handlers.projection import on_connector_event, on_request_accepted
from tests.unit.test_deployer_handlers import NOW, Bench, _metric
from tests.unit.test_deployer_handlers import bench as bench  # noqa: F401 - the fixture

PARK_S = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(bench: Bench) -> Clock:  # noqa: F811 - the imported fixture
    clock = Clock()
    bench.ctx = dataclasses.replace(bench.ctx, park_s=PARK_S, clock=clock)
    return clock


def _unaccepted(bench: Bench, certificate_id: str = "web-1", key: ec.EllipticCurvePrivateKey | None = None) -> Envelope:  # noqa: F811
    """A genuine CertificateIssued from the pinned CA whose RequestAccepted the deployer has not seen."""
    envelope = bench.issued(certificate_id, key=key)
    with bench.ctx.write() as session:
        session.execute(delete(DeployerAcceptedCertificateRow).where(
            DeployerAcceptedCertificateRow.certificate_id == certificate_id))
    return envelope


def _accepted(certificate_id: str = "web-1", *, request_id: str = "req-1", kind: RequestKind = RequestKind.ISSUE,
              key_sha256: str | None = None) -> Envelope:
    data = RequestAccepted(request_id=request_id, requester="ci", kind=kind, certificate_id=certificate_id, profile="web",
                           connector="sim", issuance_id=issuance_id(certificate_id, 1), public_key_sha256=key_sha256)
    return make_event(data, id=str(uuid.uuid4()), source="/test/gateway", time=NOW, subject=certificate_id)


def _parked(ctx: DeployerContext) -> list[str]:
    with ctx.read() as session:
        return sorted(p.event_id for p in parking.due(session, datetime.max.replace(tzinfo=NOW.tzinfo)))


class Published:
    def __init__(self) -> None:
        self.out: list[Outbound] = []

    async def __call__(self, messages: Sequence[Outbound]) -> None:
        self.out.extend(messages)


async def test_a_certificate_before_its_acceptance_is_parked_then_installed_when_the_acceptance_arrives(
        bench: Bench, clock: Clock) -> None:  # noqa: F811
    issued = _unaccepted(bench)
    assert await on_certificate_issued(bench.ctx, issued) == []
    assert all(t.installed is None for t in bench.targets.values())  # nothing installed while parked
    assert _parked(bench.ctx) == [issued.id]
    assert _metric(bench, "certrail_deployer_parked_total", {"code": "CERTIFICATE_NOT_REQUESTED"}) == 1
    assert _metric(bench, "certrail_deployer_refusals_total", {"code": "CERTIFICATE_NOT_REQUESTED"}) == 0

    clock.now += timedelta(seconds=5)
    out = await on_request_accepted(bench.ctx, _accepted())
    assert sorted((o.event.data.target.name, type(o.event.data)) for o in out) == [
        ("a", CertificateDeployed), ("b", CertificateDeployed)]
    assert all(o.event.causationid == issued.id for o in out)
    assert {t.installed.serial for t in bench.targets.values() if t.installed} == {issued.data.serial}
    assert _parked(bench.ctx) == []
    # the CertificateIssued redelivered afterwards re-publishes what was decided, nothing twice
    again = await on_certificate_issued(bench.ctx, issued)
    assert sorted(o.event.id for o in again) == sorted(o.event.id for o in out)
    assert all(t.calls.count("deploy") == 1 for t in bench.targets.values())


async def test_a_certificate_before_its_connectors_pin_is_parked_then_installed_when_the_pin_arrives(
        bench: Bench, clock: Clock) -> None:  # noqa: F811
    with bench.ctx.write() as session:
        projection.forget_pin(session, "sim")
    issued = bench.issued()
    assert await on_certificate_issued(bench.ctx, issued) == []
    assert _metric(bench, "certrail_deployer_parked_total", {"code": "CERTIFICATE_UNTRUSTED"}) == 1
    created = ConnectorCreated(connector="sim", actor="admin", outcome=AdminOutcome.SUCCEEDED,
                               change={"pinned_ca_sha256": bench.ca.issuing.fingerprint(hashes.SHA256()).hex()})
    out = await on_connector_event(bench.ctx, make_event(created, id=str(uuid.uuid4()), source="/test/gateway", time=NOW))
    assert sorted(type(o.event.data).__name__ for o in out) == ["CertificateDeployed", "CertificateDeployed"]
    assert _parked(bench.ctx) == []


async def test_a_renewed_certificate_before_its_renewals_acceptance_waits_for_the_new_key(bench: Bench, clock: Clock) -> None:  # noqa: F811
    first = bench.issued()
    await on_certificate_issued(bench.ctx, first)
    old_key, new_key = first.data.public_key_sha256, ec.generate_private_key(ec.SECP256R1())
    with bench.ctx.write() as session:  # the first request's CSR key is what the deployer expects
        projection.record_accepted(session, certificate_id="web-1", request_id="req-1", profile="web", connector="sim",
                                   now=NOW, public_key_sha256=old_key)
    renewed = bench.issued(key=new_key)
    with bench.ctx.write() as session:  # bench.issued recorded an acceptance without a key: put the old one back
        projection.record_accepted(session, certificate_id="web-1", request_id="req-1", profile="web", connector="sim",
                                   now=NOW, public_key_sha256=old_key)
    assert await on_certificate_issued(bench.ctx, renewed) == []
    assert _metric(bench, "certrail_deployer_parked_total", {"code": "CERTIFICATE_MISMATCH"}) == 1
    assert {t.installed.serial for t in bench.targets.values() if t.installed} == {first.data.serial}
    out = await on_request_accepted(bench.ctx, _accepted(request_id="req-2", kind=RequestKind.RENEW,
                                                         key_sha256=renewed.data.public_key_sha256))
    assert sorted(type(o.event.data).__name__ for o in out) == ["CertificateDeployed", "CertificateDeployed"]
    assert {t.installed.serial for t in bench.targets.values() if t.installed} == {renewed.data.serial}


async def test_an_acceptance_that_does_not_cure_it_leaves_it_parked_with_its_first_deadline(bench: Bench, clock: Clock) -> None:  # noqa: F811
    issued = _unaccepted(bench)
    await on_certificate_issued(bench.ctx, issued)
    clock.now += timedelta(seconds=30)
    # the acceptance of another certificate releases nothing; a redelivery does not move the deadline
    assert await on_request_accepted(bench.ctx, _accepted("web-2")) == []
    assert await on_certificate_issued(bench.ctx, issued) == []
    with bench.ctx.read() as session:
        (row,) = parking.waiting_for(session, certificate_id="web-1")
    assert row.deadline == NOW + timedelta(seconds=PARK_S)
    assert _metric(bench, "certrail_deployer_parked_total", {"code": "CERTIFICATE_NOT_REQUESTED"}) == 1


async def test_a_certificate_never_accepted_is_refused_at_its_deadline_and_nothing_is_installed(
        bench: Bench, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    issued = _unaccepted(bench, "never-requested")
    bench.issued()  # web-1 is accepted: its acceptance must not release never-requested
    await on_certificate_issued(bench.ctx, issued)
    published = Published()
    clock.now += timedelta(seconds=PARK_S - 1)
    assert await sweep_once(bench.ctx, published) == 0 and published.out == []
    assert _metric(bench, "certrail_deployer_parked_certificates", {}) == 1
    clock.now += timedelta(seconds=1)
    assert await sweep_once(bench.ctx, published) == 1
    assert sorted((o.event.data.target.name, o.event.data.error.code) for o in published.out
                  if isinstance(o.event.data, DeploymentFailed)) == [
        ("a", ErrorCode.CERTIFICATE_NOT_REQUESTED), ("b", ErrorCode.CERTIFICATE_NOT_REQUESTED)]
    assert all(o.event.causationid == issued.id for o in published.out)
    assert all(t.installed is None for t in bench.targets.values())
    assert _parked(bench.ctx) == [] and _metric(bench, "certrail_deployer_parked_certificates", {}) == 0
    assert _metric(bench, "certrail_deployer_refusals_total", {"code": "CERTIFICATE_NOT_REQUESTED"}) == 1
    assert "BEGIN" not in caplog.text


async def test_a_refusal_no_gateway_event_can_cure_is_not_parked(bench: Bench, clock: Clock) -> None:  # noqa: F811
    genuine = bench.issued()
    lying = genuine.model_copy(update={"data": genuine.data.model_copy(update={"public_key_sha256": "ab" * 32})})
    out = await on_certificate_issued(bench.ctx, lying)
    assert {o.event.data.error.code for o in out} == {ErrorCode.CERTIFICATE_MISMATCH}
    assert _parked(bench.ctx) == []
    assert _metric(bench, "certrail_deployer_parked_total", {"code": "CERTIFICATE_MISMATCH"}) == 0


async def test_park_seconds_zero_refuses_at_once(bench: Bench) -> None:  # noqa: F811
    issued = _unaccepted(bench)
    out = await on_certificate_issued(bench.ctx, issued)
    assert {o.event.data.error.code for o in out} == {ErrorCode.CERTIFICATE_NOT_REQUESTED}
    assert _parked(bench.ctx) == []


async def test_a_parked_record_that_no_longer_decodes_is_dropped_by_the_sweep(bench: Bench, clock: Clock) -> None:  # noqa: F811
    issued = _unaccepted(bench)
    await on_certificate_issued(bench.ctx, issued)
    with bench.ctx.write() as session:
        session.execute(update(DeployerParkedCertificateRow).values(record='{"specversion": "1.0"'))
    clock.now += timedelta(seconds=PARK_S)
    published = Published()
    assert await sweep_once(bench.ctx, published) == 1
    assert published.out == [] and _parked(bench.ctx) == []
    assert all(t.installed is None for t in bench.targets.values())


def test_the_stored_record_holds_no_private_key(bench: Bench) -> None:  # noqa: F811
    issued = bench.issued()
    with bench.ctx.write() as session:
        parking.park(session, issued, "CERTIFICATE_NOT_REQUESTED", NOW, PARK_S)
    with bench.ctx.read() as session:
        (row,) = parking.waiting_for(session, certificate_id="web-1")
    assert "PRIVATE KEY" not in row.record and issued.data.certificate.strip().splitlines()[1] in row.record


async def test_an_acceptance_written_between_the_read_and_the_park_is_not_missed(bench: Bench, clock: Clock) -> None:  # noqa: F811
    """The acceptance's handler committed after the certificate's read found nothing, but before the
    certificate was parked: the park's own transaction sees it, and the certificate is installed."""
    issued = _unaccepted(bench)
    original = projection.expectation
    calls = {"n": 0}

    def expectation_then_accept(session, certificate_id, connector):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        seen = original(session, certificate_id, connector)
        if calls["n"] == 1:  # the read: now the gateway's acceptance lands, in a transaction of its own
            with bench.ctx.write() as other:
                projection.record_accepted(other, certificate_id="web-1", request_id="req-1", profile="web",
                                           connector="sim", now=NOW)
        return seen

    projection.expectation = expectation_then_accept  # type: ignore[assignment]
    try:
        out = await on_certificate_issued(bench.ctx, issued)
    finally:
        projection.expectation = original  # type: ignore[assignment]
    assert sorted(type(o.event.data).__name__ for o in out) == ["CertificateDeployed", "CertificateDeployed"]
    assert _parked(bench.ctx) == [] and _metric(bench, "certrail_deployer_parked_total",
                                                {"code": "CERTIFICATE_NOT_REQUESTED"}) == 0


async def test_the_sweep_releases_a_parked_certificate_whose_acceptance_it_did_not_see(bench: Bench, clock: Clock) -> None:  # noqa: F811
    """The acceptance was written while the certificate was being parked (on PostgreSQL two write
    transactions do not wait for each other): the next sweep installs it, long before its deadline."""
    issued = _unaccepted(bench)
    assert await on_certificate_issued(bench.ctx, issued) == []
    with bench.ctx.write() as session:  # the projection learns the acceptance without the handler's release
        projection.record_accepted(session, certificate_id="web-1", request_id="req-1", profile="web", connector="sim",
                                   now=NOW)
    clock.now += timedelta(seconds=5)
    published = Published()
    assert await sweep_once(bench.ctx, published) == 0  # none was past its deadline
    assert sorted(type(o.event.data).__name__ for o in published.out) == ["CertificateDeployed", "CertificateDeployed"]
    assert _parked(bench.ctx) == [] and _metric(bench, "certrail_deployer_parked_certificates", {}) == 0
    assert {t.installed.serial for t in bench.targets.values() if t.installed} == {issued.data.serial}


async def test_an_acceptance_looks_for_parked_certificates_only_while_some_may_be_parked(bench: Bench, clock: Clock) -> None:  # noqa: F811
    published = Published()
    await sweep_once(bench.ctx, published)  # nothing parked: acceptances skip the lookup
    assert bench.ctx.maybe_parked is False
    issued = _unaccepted(bench)
    assert await on_certificate_issued(bench.ctx, issued) == []
    assert bench.ctx.maybe_parked is True  # parking sets it again, and the acceptance releases it
    out = await on_request_accepted(bench.ctx, _accepted())
    assert sorted(type(o.event.data).__name__ for o in out) == ["CertificateDeployed", "CertificateDeployed"]
