"""Key retention (issue 20, decision 0026), unit level: the decisions as tables with a fake clock, then the
deployer's handlers and sweep on SQLite with a real file target in a temporary directory: a renewed key is
destroyed after the grace period (its version removed from the target, the live one untouched), a
keyCompromise revocation destroys the key at once, each destruction is one BotKeyDestroyed in the outbox
without key material, and two instances destroying the same key write one event."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import ProvisionCertificate
from services.common.contracts.envelope import Envelope, decode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateDeployed, CertificateIssued, CertificateRevoked, RenewalDue
from services.common.contracts.fields import KeyAlgorithm, KeyGeneration, RevocationReason
from services.common.contracts.identity import issuance_id
from services.common.contracts.keys import BotKeyDestroyed, KeyCopyOutcome, KeyRetirementReason
from services.common.contracts.requests import RenewRequested
from services.common.contracts.revocation import RevokedOutOfBand
from services.common.contracts.topics import Topics
from services.common.db import make_engine
from services.common.db_schema import DeployerAdminOutbox, DeployerBotKeyRow
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.deployer import projection, retirement, store
from services.deployer.context import DeployerContext
from services.deployer.handlers.bot import on_provision, on_renewal_due, on_revoked, on_revoked_out_of_band
from services.deployer.handlers.deploy import on_certificate_issued
from services.deployer.metrics import DeployerMetrics
from services.deployer.retention import KeyState, retire_due, revocation_retirement, superseded_by
from services.deployer.targets.base import TargetError, public_key_sha256
from services.deployer.targets.config import TargetKind
from tests.deployer_support import MiniCA

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WEEK = timedelta(days=7)
SUPERSEDED, COMPROMISED = KeyRetirementReason.SUPERSEDED, KeyRetirementReason.KEY_COMPROMISE


# -- the decisions ---------------------------------------------------------------------------------------------


def _key(name: str, created: int = 0, superseded: datetime | None = None, reason: KeyRetirementReason | None = None,
         destroyed: datetime | None = None, certificate_id: str = "web") -> KeyState:
    return KeyState(name, certificate_id, T0 + timedelta(minutes=created), superseded, reason, destroyed)


@pytest.mark.parametrize(("key", "now", "retention", "expected"), [
    pytest.param(_key("live"), T0 + 10 * WEEK, WEEK, None, id="never superseded: kept forever"),
    pytest.param(_key("k", superseded=T0, reason=SUPERSEDED), T0 + WEEK - timedelta(seconds=1), WEEK, None,
                 id="superseded, one second before its grace ends: kept"),
    pytest.param(_key("k", superseded=T0, reason=SUPERSEDED), T0 + WEEK, WEEK, SUPERSEDED, id="grace ended: destroyed"),
    pytest.param(_key("k", superseded=T0, reason=SUPERSEDED), T0, timedelta(0), SUPERSEDED, id="no grace: destroyed at once"),
    pytest.param(_key("k", superseded=T0, reason=COMPROMISED), T0, WEEK, COMPROMISED, id="key compromise: at once"),
    pytest.param(_key("k", superseded=T0, reason=COMPROMISED, destroyed=T0), T0 + WEEK, WEEK, None,
                 id="already destroyed: nothing"),
])
def test_retire_due(key: KeyState, now: datetime, retention: timedelta, expected: KeyRetirementReason | None) -> None:
    assert retire_due(key, now, retention) is expected


def test_a_deployed_key_supersedes_only_the_older_live_keys_of_its_certificate() -> None:
    keys = [_key("old-issued", 0), _key("old-never-issued", 1), _key("already", 2, superseded=T0, reason=SUPERSEDED),
            _key("gone", 3, destroyed=T0), _key("deployed", 5), _key("newer", 9), _key("other-cert", 0, certificate_id="api")]
    assert superseded_by(keys, keys[4]) == ["old-issued", "old-never-issued"]
    assert superseded_by(keys, keys[0]) == []  # an older key deployed again supersedes nothing newer


@pytest.mark.parametrize(("key", "reason", "expected"), [
    pytest.param(_key("k"), RevocationReason.SUPERSEDED, (T0, SUPERSEDED), id="live key revoked: superseded then"),
    pytest.param(_key("k"), RevocationReason.KEY_COMPROMISE, (T0, COMPROMISED), id="keyCompromise: key_compromise"),
    pytest.param(_key("k", superseded=T0 - WEEK, reason=SUPERSEDED), RevocationReason.CESSATION_OF_OPERATION, None,
                 id="superseded earlier: the earlier time stands"),
    pytest.param(_key("k", superseded=T0 - WEEK, reason=SUPERSEDED), RevocationReason.KEY_COMPROMISE,
                 (T0 - WEEK, COMPROMISED), id="superseded earlier, then compromised: destroyed at once"),
    pytest.param(_key("k", superseded=T0 + WEEK, reason=SUPERSEDED), RevocationReason.UNSPECIFIED, (T0, SUPERSEDED),
                 id="revoked before the recorded supersession: the revocation time"),
    pytest.param(_key("k", superseded=T0, reason=COMPROMISED), RevocationReason.KEY_COMPROMISE, None, id="redelivered"),
    pytest.param(_key("k", destroyed=T0), RevocationReason.KEY_COMPROMISE, None, id="destroyed: nothing"),
])
def test_revocation_retirement(key: KeyState, reason: RevocationReason,
                               expected: tuple[datetime, KeyRetirementReason] | None) -> None:
    assert revocation_retirement(key, reason, T0) == expected


# -- the handlers and the sweep --------------------------------------------------------------------------------


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Bench:
    ctx: DeployerContext
    clock: Clock
    registry: CollectorRegistry
    ca: MiniCA
    target_dir: Path
    wakes: list[int]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


def _context(engine, box: SecretBox, registry: CollectorRegistry, clock: Clock, wakes: list[int]) -> DeployerContext:  # type: ignore[no-untyped-def]
    ctx = DeployerContext(engine=engine, box=box, topics=Topics("certrail"), metrics=DeployerMetrics(registry),
                          requester="certrail-deployer", request_key_id="deployer-1", request_key=b"k" * 32, clock=clock,
                          key_retention_s=WEEK.total_seconds())
    ctx.wake_outbox = lambda: wakes.append(1)
    return ctx


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    upgrade(db)
    engine = make_engine(db)
    registry, clock, wakes, ca = CollectorRegistry(), Clock(), [], MiniCA()
    ctx = _context(engine, SecretBox([generate_key()]), registry, clock, wakes)
    with ctx.write() as session:
        store.add_target(session, ctx.box, "files", TargetKind.FILE, {"dir": str(tmp_path / "deploy")}, {}, T0)
        store.bind(session, "web", "files", T0)
        projection.set_pin(session, "sim", ca.issuing.fingerprint(hashes.SHA256()).hex(), "seed", T0, replace=False)
        projection.set_profile_kind(session, "web", "bot", "seed", T0)
    return Bench(ctx, clock, registry, ca, tmp_path / "deploy", wakes)


def _envelope(data, subject: str = "bot-1") -> Envelope:  # type: ignore[no-untyped-def]
    return make_event(data, id=str(uuid.uuid4()), source="/test", time=T0, subject=subject, correlationid="corr-1")


def _certificate_for(bench: Bench, csr_pem: str, revision: int) -> Envelope:
    """What the issuer would announce for the deployer's CSR (signed by the pinned CA), the gateway's acceptance
    of it recorded first in the deployer's projection."""
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    serial = x509.random_serial_number()
    cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(bench.ca.issuing.subject).public_key(public)
            .serial_number(serial).not_valid_before(T0 - timedelta(days=1)).not_valid_after(T0 + timedelta(days=90))
            .add_extension(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, critical=False)
            .sign(bench.ca.issuing_key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    with bench.ctx.write() as session:
        projection.record_accepted(session, certificate_id="bot-1", request_id=f"req-{revision}", profile="web",
                                   connector="sim", now=bench.clock(), public_key_sha256=public_key_sha256(cert))
    data = CertificateIssued(
        issuance_id=issuance_id("bot-1", revision), certificate_id="bot-1", request_id=f"req-{revision}", connector="sim",
        profile="web", serial=format(serial, "x"), certificate=pem, chain=list(bench.ca.chain),
        subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(), sans=["dns:bot.unit.test"],
        not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc, public_key_sha256=public_key_sha256(cert))
    return _envelope(data)


async def _issue_and_deploy(bench: Bench, request_csr: str, revision: int) -> Envelope:
    issued = _certificate_for(bench, request_csr, revision)
    (out,) = await on_certificate_issued(bench.ctx, issued)
    assert isinstance(out.event.data, CertificateDeployed), out.event.data
    return issued


def _rows(bench: Bench) -> dict[str | None, DeployerBotKeyRow]:
    with bench.ctx.read() as session:
        rows = session.scalars(select(DeployerBotKeyRow)).all()
        session.expunge_all()
    return {row.serial: row for row in rows}


def _destroyed_events(bench: Bench) -> list[tuple[Envelope, str]]:
    with bench.ctx.read() as session:
        values = session.scalars(select(DeployerAdminOutbox.value).where(
            DeployerAdminOutbox.event_type == BotKeyDestroyed.TYPE).order_by(DeployerAdminOutbox.seq)).all()
    return [(decode(value.encode(), CATALOG), value) for value in values]


def _versions(bench: Bench) -> list[str]:
    return sorted(p.name.split("-")[0] for p in (bench.target_dir / "versions").iterdir())


async def _renewed_once(bench: Bench) -> tuple[Envelope, Envelope, bytes]:
    """Provisioned, deployed, renewed an hour later and deployed: (first issued, second issued, first key PEM)."""
    command = ProvisionCertificate(certificate_id="bot-1", request_id="prov-1", profile="web", connector="sim",
                                   key_algorithm=KeyAlgorithm.EC_P256, common_name="bot.unit.test", sans=["dns:bot.unit.test"])
    (request,) = await on_provision(bench.ctx, _envelope(command))
    first = await _issue_and_deploy(bench, request.event.data.csr, 1)
    first_key = bench.ctx.box.decrypt(_rows(bench)[first.data.serial].private_key or b"")
    bench.clock.now = T0 + timedelta(hours=1)
    due = RenewalDue(certificate_id="bot-1", serial=first.data.serial, profile="web", connector="sim",
                     key_generation=KeyGeneration.BOT, renew_at=bench.clock.now, not_after=T0 + timedelta(days=90))
    (renew,) = await on_renewal_due(bench.ctx, _envelope(due))
    assert isinstance(renew.event.data, RenewRequested)
    second = await _issue_and_deploy(bench, renew.event.data.csr, 2)
    return first, second, first_key


async def test_a_renewed_key_is_destroyed_after_the_grace_period_and_its_old_version_leaves_the_target(bench: Bench) -> None:
    first, second, first_key = await _renewed_once(bench)
    s1, s2 = first.data.serial, second.data.serial
    rows = _rows(bench)
    assert rows[s1].superseded_at == T0 + timedelta(hours=1) and rows[s1].retire_reason == "superseded"
    assert rows[s2].superseded_at is None  # the live key
    assert sorted(_versions(bench)) == sorted([s1, s2])  # current (s2) and previous (s1), each with its key

    # within the grace period nothing happens
    bench.clock.now = T0 + timedelta(hours=1) + WEEK - timedelta(seconds=1)
    await retirement.sweep_once(bench.ctx)
    assert _rows(bench)[s1].private_key is not None and _destroyed_events(bench) == []
    assert bench.metric("certrail_deployer_keys_held") == 2

    # the grace period over: destroyed in the store (the row a tombstone), gone from the target, audited
    bench.clock.now = T0 + timedelta(hours=1) + WEEK
    await retirement.sweep_once(bench.ctx)
    rows = _rows(bench)
    assert rows[s1].private_key is None and rows[s1].destroyed_at == bench.clock.now
    assert rows[s1].certificate_pem == first.data.certificate  # what a renewal of that serial still needs
    assert rows[s2].private_key is not None
    assert _versions(bench) == [s2]
    assert not (bench.target_dir / "previous").is_symlink()
    current = bench.target_dir / "current"
    assert format(x509.load_pem_x509_certificate((current / "cert.pem").read_bytes()).serial_number, "x") == s2
    assert (current / "privkey.pem").exists()
    ((event, raw),) = _destroyed_events(bench)
    assert isinstance(event.data, BotKeyDestroyed) and event.subject == "bot-1"
    assert (event.data.serial, event.data.reason, event.data.public_key_sha256) == (s1, SUPERSEDED, first.data.public_key_sha256)
    assert event.data.superseded_at == T0 + timedelta(hours=1) and event.data.destroyed_at == bench.clock.now
    assert [(c.target.name, c.outcome) for c in event.data.copies] == [("files", KeyCopyOutcome.REMOVED)]
    assert "PRIVATE KEY" not in raw and _pem_body(first_key) not in raw.replace("\\n", "")
    assert bench.metric("certrail_deployer_keys_destroyed_total", {"reason": "superseded"}) == 1
    assert bench.metric("certrail_deployer_retired_key_copies_total", {"kind": "file", "outcome": "removed"}) == 1
    assert bench.metric("certrail_deployer_keys_held") == 1 and bench.wakes == [1]

    # a second sweep finds nothing; a redelivered CertificateIssued of the old serial re-publishes its outcome
    await retirement.sweep_once(bench.ctx)
    assert len(_destroyed_events(bench)) == 1
    (replayed,) = await on_certificate_issued(bench.ctx, first)
    assert isinstance(replayed.event.data, CertificateDeployed) and replayed.event.data.serial == s1
    # the tombstone still lets the destroyed serial's renewal be made (a fresh key for its names)
    late_due = RenewalDue(certificate_id="bot-1", serial=s1, profile="web", connector="sim", key_generation=KeyGeneration.BOT,
                          renew_at=bench.clock.now, not_after=T0 + timedelta(days=90))
    (late,) = await on_renewal_due(bench.ctx, _envelope(late_due))
    assert isinstance(late.event.data, RenewRequested) and late.event.data.replaces_serial == s1


def _pem_body(pem: bytes) -> str:
    return "".join(line for line in pem.decode().splitlines() if not line.startswith("-----"))


async def test_a_key_compromise_revocation_destroys_the_key_at_once_and_leaves_the_served_files(bench: Bench) -> None:
    first, second, _ = await _renewed_once(bench)
    s2 = second.data.serial
    bench.clock.now = T0 + timedelta(hours=2)
    revoked = CertificateRevoked(certificate_id="bot-1", serial=s2, request_id="rv-1", connector="sim",
                                 reason=RevocationReason.KEY_COMPROMISE, revoked_at=bench.clock.now, replace=True)
    envelope = _envelope(revoked)
    (replacement,) = await on_revoked(bench.ctx, envelope)
    assert isinstance(replacement.event.data, RenewRequested) and replacement.event.data.replaces_serial == s2
    row = _rows(bench)[s2]
    assert row.private_key is None and row.destroyed_at == bench.clock.now and row.retire_reason == "key_compromise"
    ((event, raw),) = _destroyed_events(bench)
    assert (event.data.serial, event.data.reason) == (s2, COMPROMISED)
    assert event.causationid == envelope.id and event.correlationid == "corr-1"
    # the target still serves s2 (the revocation's replacement will take its place): reported, untouched
    assert [(c.target.name, c.outcome) for c in event.data.copies] == [("files", KeyCopyOutcome.IN_USE)]
    assert (bench.target_dir / "current" / "privkey.pem").exists()
    assert "PRIVATE KEY" not in raw
    assert bench.metric("certrail_deployer_keys_destroyed_total", {"reason": "key_compromise"}) == 1
    # the older key (superseded an hour earlier) is not destroyed before its grace ends
    assert _rows(bench)[first.data.serial].private_key is not None
    # a redelivery destroys nothing more and writes no second event
    await on_revoked(bench.ctx, envelope)
    assert len(_destroyed_events(bench)) == 1
    # the replacement's certificate arrives and is installed with its new key
    await _issue_and_deploy(bench, replacement.event.data.csr, 3)


async def test_a_key_compromise_revoked_at_the_ca_destroys_the_key_at_once_and_a_hold_keeps_it(bench: Bench) -> None:
    first, second, _ = await _renewed_once(bench)
    s1, s2 = first.data.serial, second.data.serial
    bench.clock.now = T0 + timedelta(hours=2)

    def out_of_band(serial: str, reason: str) -> Envelope:
        return _envelope(RevokedOutOfBand(
            certificate_id="bot-1", serial=serial, connector="sim", reason=reason, revoked_at_ca=T0 + timedelta(minutes=90),
            distribution_point="https://ca.example/crl/issuing.crl", detected_at=bench.clock.now))

    # a hold may be lifted: the current key stays, nothing is superseded or destroyed
    assert await on_revoked_out_of_band(bench.ctx, out_of_band(s2, "certificateHold")) == []
    row = _rows(bench)[s2]
    assert row.private_key is not None and row.superseded_at is None and _destroyed_events(bench) == []

    envelope = out_of_band(s2, "keyCompromise")
    assert await on_revoked_out_of_band(bench.ctx, envelope) == []
    row = _rows(bench)[s2]
    assert row.private_key is None and row.destroyed_at == bench.clock.now and row.retire_reason == "key_compromise"
    assert row.superseded_at == T0 + timedelta(minutes=90)  # the CRL entry's revocation date
    ((event, raw),) = _destroyed_events(bench)
    assert (event.data.serial, event.data.reason) == (s2, COMPROMISED) and event.causationid == envelope.id
    assert "PRIVATE KEY" not in raw
    # redelivered: nothing more; the older key keeps its grace
    await on_revoked_out_of_band(bench.ctx, envelope)
    assert len(_destroyed_events(bench)) == 1 and _rows(bench)[s1].private_key is not None


async def test_a_serial_revoked_at_the_ca_for_another_reason_is_superseded_and_destroyed_after_its_grace(bench: Bench) -> None:
    _, second, _ = await _renewed_once(bench)
    s2 = second.data.serial
    revoked_at = T0 + timedelta(hours=2)
    bench.clock.now = revoked_at + timedelta(minutes=5)
    await on_revoked_out_of_band(bench.ctx, _envelope(RevokedOutOfBand(
        certificate_id="bot-1", serial=s2, connector="sim", reason="cessationOfOperation", revoked_at_ca=revoked_at,
        distribution_point="https://ca.example/crl/issuing.crl", detected_at=bench.clock.now)))
    row = _rows(bench)[s2]
    assert row.private_key is not None and row.superseded_at == revoked_at and row.retire_reason == "superseded"
    bench.clock.now = revoked_at + WEEK
    await retirement.sweep_once(bench.ctx)
    assert _rows(bench)[s2].private_key is None
    assert s2 in {e.data.serial for e, _ in _destroyed_events(bench)}


async def test_two_instances_destroying_one_key_write_one_event(bench: Bench) -> None:
    first, _, _ = await _renewed_once(bench)
    other = _context(bench.ctx.engine, bench.ctx.box, CollectorRegistry(), bench.clock, [])
    bench.clock.now = T0 + timedelta(hours=1) + WEEK
    with bench.ctx.read() as session:
        key = store.bot_key_by_serial(session, "bot-1", first.data.serial)
    assert key is not None
    results = await asyncio.gather(retirement.retire_key(bench.ctx, key, SUPERSEDED),
                                   retirement.retire_key(other, key, SUPERSEDED))
    assert sorted(results) == [False, True]
    assert len(_destroyed_events(bench)) == 1
    # the event as the relay publishes it: the outbox row's bytes, keyed by the certificate id
    with bench.ctx.read() as session:
        (row,) = session.scalars(select(DeployerAdminOutbox).where(DeployerAdminOutbox.event_type == BotKeyDestroyed.TYPE))
        assert (row.channel, row.key, row.sent_at) == ("events.deployer", "bot-1", None)
        assert json.loads(row.value)["data"]["reason"] == "superseded"


class UnreachableHost:
    """A target kind that keeps versions (KeyRetiring) whose host does not answer."""

    kind, name = "ssh", "far"

    async def retire_key(self, certificate_id: str, serial: str, public_key_sha256: str) -> bool:
        raise TargetError(ErrorCode.TARGET_UNREACHABLE, "cannot connect to far:22", transient=True)


class NoVersions:
    """A target kind without per-serial versions (not KeyRetiring)."""

    kind, name = "file", "flat"


async def test_each_targets_copy_is_reported_and_a_failing_target_does_not_keep_the_key(bench: Bench) -> None:
    first, _, _ = await _renewed_once(bench)
    s1 = first.data.serial
    with bench.ctx.write() as session:
        store.add_target(session, bench.ctx.box, "hook", TargetKind.WEBHOOK, {"url": "https://h.test/x", "include_private_key": True},
                         {"hmac_secret": "s" * 32}, T0)
        store.add_target(session, bench.ctx.box, "plain-hook", TargetKind.WEBHOOK, {"url": "https://h.test/y"},
                         {"hmac_secret": "s" * 32}, T0)
        for name in ("hook", "plain-hook", "far", "flat"):
            if name in ("far", "flat"):
                store.add_target(session, bench.ctx.box, name, TargetKind.FILE, {"dir": f"/nonexistent/{name}"}, {}, T0)
            store.start_attempt(session, certificate_id="bot-1", serial=s1, target_name=name, target_kind="x", cause_id="c",
                                certificate_pem=first.data.certificate, chain_pem=(), public_key_sha256="0" * 64, now=T0)
    real = bench.ctx.build_target
    fakes = {"far": UnreachableHost(), "flat": NoVersions()}
    bench.ctx.build_target = lambda spec, **kw: fakes.get(spec.name) or real(spec, **kw)  # type: ignore[assignment,return-value]
    bench.clock.now = T0 + timedelta(hours=1) + WEEK
    await retirement.sweep_once(bench.ctx)
    ((event, _),) = _destroyed_events(bench)
    copies = {c.target.name: (c.outcome, c.error.code if c.error else None) for c in event.data.copies}
    assert copies == {"files": (KeyCopyOutcome.REMOVED, None), "hook": (KeyCopyOutcome.NOT_REMOVABLE, None),
                      "far": (KeyCopyOutcome.FAILED, ErrorCode.TARGET_UNREACHABLE), "flat": (KeyCopyOutcome.NOT_REMOVABLE, None)}
    assert _rows(bench)[s1].private_key is None  # destroyed in the store whatever the targets said
    assert bench.metric("certrail_deployer_retired_key_copies_total", {"kind": "webhook", "outcome": "not_removable"}) == 1
    assert bench.metric("certrail_deployer_retired_key_copies_total", {"kind": "file", "outcome": "failed"}) == 1
