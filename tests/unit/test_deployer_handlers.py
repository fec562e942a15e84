"""The deployer's handlers with a fake target (unit: no Kafka, SQLite in a temp dir):
deployments are idempotent, failures roll back and say why, one failing target does
not block another, unreachable targets are retried with capped backoff, and bot-held
keys are generated, stored encrypted, requested with a signed CSR and installed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from prometheus_client import CollectorRegistry

from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.consumer import InvalidMessage
from services.common.contracts.commands import ProvisionCertificate
from services.common.contracts.envelope import Envelope, encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import (
    CertificateDeployed,
    CertificateIssued,
    CertificateRevoked,
    DeploymentFailed,
    RenewalDue,
    RequestAccepted,
)
from services.common.contracts.fields import KeyAlgorithm, KeyGeneration, RequestKind, RevocationReason
from services.common.contracts.identity import issuance_id
from services.common.contracts.requests import IssueRequested, RenewRequested
from services.common.contracts.signing import request_signing_bytes
from services.common.contracts.topics import Topics
from services.common.db import make_engine
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.deployer import projection, store
from services.deployer.context import DeployerContext
from services.deployer.handlers.bot import on_provision, on_renewal_due, on_revoked
from services.deployer.handlers.deploy import on_certificate_issued
from services.deployer.handlers.projection import on_request_accepted
from services.deployer.metrics import DeployerMetrics
from services.deployer.runner import RetryPolicy
from services.deployer.targets.base import Bundle, TargetError, public_key_sha256
from services.deployer.targets.config import TargetKind
from services.deployer.targets.factory import build_target
from tests.deployer_support import MiniCA

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
REQUEST_KEY = b"k" * 32


@dataclass
class FakeTarget:
    """A DeploymentTarget in memory: installs, fails on demand, restores the previous bundle."""

    name: str
    kind: str = "file"
    fail_deploy: list[TargetError] = field(default_factory=list)
    fail_verify: TargetError | None = None
    installed: Bundle | None = None
    history: list[Bundle] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    async def deploy(self, bundle: Bundle) -> None:
        self.calls.append("deploy")
        if self.fail_deploy:
            raise self.fail_deploy.pop(0)
        if self.installed is not None:
            self.history.append(self.installed)
        self.installed = bundle

    async def verify(self, bundle: Bundle) -> str:
        self.calls.append("verify")
        if self.fail_verify is not None:
            raise self.fail_verify
        if self.installed is None or self.installed.serial != bundle.serial:  # as every real kind (tests/target_contract.py)
            held = "nothing" if self.installed is None else f"serial {self.installed.serial}"
            raise TargetError(ErrorCode.VERIFY_FAILED, f"{self.name} holds {held}, not serial {bundle.serial}")
        return self.installed.serial

    async def rollback(self, bundle: Bundle) -> bool:
        self.calls.append("rollback")
        if self.installed is not None and self.installed.serial == bundle.serial:
            self.installed = self.history.pop() if self.history else None
            return self.installed is not None
        return False


@dataclass
class Bench:
    ctx: DeployerContext
    targets: dict[str, FakeTarget]
    sleeps: list[float]
    registry: CollectorRegistry
    ca: MiniCA = field(default_factory=MiniCA)

    def issued(self, certificate_id: str = "web-1", profile: str = "web", key=None, names=("www.unit.test",)) -> Envelope:  # type: ignore[no-untyped-def]
        """A CertificateIssued from the pinned CA for a certificate id the gateway accepted (the deployer's
        projection is told so, as RequestAccepted would)."""
        with self.ctx.write() as session:
            projection.record_accepted(session, certificate_id=certificate_id, request_id="req-1", profile=profile,
                                       connector="sim", now=NOW)
        certificate, key = self.ca.leaf(list(names), key)
        cert = x509.load_pem_x509_certificate(certificate.encode())
        data = CertificateIssued(
            issuance_id=issuance_id(certificate_id, 1), certificate_id=certificate_id, request_id="req-1", connector="sim",
            profile=profile, serial=format(cert.serial_number, "x"), certificate=certificate, chain=list(self.ca.chain),
            subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(), sans=[f"dns:{n}" for n in names],
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
            public_key_sha256=public_key_sha256(cert),
        )
        return make_event(data, id=str(uuid.uuid4()), source="/test/issuer", time=NOW, subject=certificate_id,
                          correlationid="req-1")


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    upgrade(db)
    engine = make_engine(db)
    targets: dict[str, FakeTarget] = {}
    sleeps: list[float] = []
    registry = CollectorRegistry()

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    def build(spec: store.TargetSpec, previous: Bundle | None = None) -> FakeTarget:
        return targets.setdefault(spec.name, FakeTarget(spec.name, spec.kind.value))

    ctx = DeployerContext(engine=engine, box=SecretBox([generate_key()]), topics=Topics("certrail"),
                          metrics=DeployerMetrics(registry), requester="certrail-deployer",
                          request_key_id="deployer-1", request_key=REQUEST_KEY, retry=RetryPolicy(4, 1.0, 2.5),
                          clock=lambda: NOW, sleep=sleep, build_target=build)
    ca = MiniCA()
    with ctx.write() as session:
        for name in ("a", "b"):
            store.add_target(session, ctx.box, name, TargetKind.FILE, {"dir": f"/srv/{name}"}, {}, NOW)
            store.bind(session, "web", name, NOW)
        projection.set_pin(session, "sim", ca.issuing.fingerprint(hashes.SHA256()).hex(), "seed", NOW, replace=False)
    return Bench(ctx, targets, sleeps, registry, ca)


def _metric(bench: Bench, name: str, labels: dict[str, str]) -> float:
    return bench.registry.get_sample_value(name, labels) or 0.0


async def test_issued_certificate_is_deployed_to_every_bound_target_once(bench: Bench) -> None:
    envelope = bench.issued()
    first = await on_certificate_issued(bench.ctx, envelope)
    assert sorted((o.event.data.target.name, type(o.event.data).__name__) for o in first) == [
        ("a", "CertificateDeployed"), ("b", "CertificateDeployed")]
    for out in first:
        assert isinstance(out.event.data, CertificateDeployed)
        assert out.event.data.verified_serial == envelope.data.serial
        assert out.key == "web-1" and out.topic == "certrail.events.deployer" and out.event.causationid == envelope.id
    # redelivery: nothing deployed again, the same events (ids, times, bytes) re-published
    again = await on_certificate_issued(bench.ctx, envelope)
    assert sorted(encode(o.event) for o in again) == sorted(encode(o.event) for o in first)
    assert bench.targets["a"].calls == ["deploy", "verify"]
    assert _metric(bench, "certrail_deployer_deployments_total", {"kind": "file", "outcome": "replayed"}) == 2
    with bench.ctx.read() as session:
        assert [d.attempts for d in store.list_deployments(session, "web-1")] == [1, 1]


async def test_unbound_profile_deploys_nothing(bench: Bench) -> None:
    assert await on_certificate_issued(bench.ctx, bench.issued(profile="other")) == []
    assert bench.targets == {}


async def test_failed_verify_rolls_back_and_the_other_target_still_deploys(bench: Bench) -> None:
    await on_certificate_issued(bench.ctx, bench.issued())
    old_a = bench.targets["a"].installed
    bench.targets["a"].fail_verify = TargetError(ErrorCode.VERIFY_FAILED, "probe saw the old serial")
    out = {o.event.data.target.name: o.event.data for o in await on_certificate_issued(bench.ctx, bench.issued())}
    failed, deployed = out["a"], out["b"]
    assert isinstance(failed, DeploymentFailed) and isinstance(deployed, CertificateDeployed)
    assert failed.rolled_back is True and failed.error.code is ErrorCode.VERIFY_FAILED
    assert "old serial" in failed.error.message
    assert bench.targets["a"].installed == old_a
    assert _metric(bench, "certrail_deployer_rollbacks_total", {"kind": "file", "outcome": "restored"}) == 1


async def test_unreachable_target_is_retried_with_capped_backoff_then_fails(bench: Bench) -> None:
    unreachable = [TargetError(ErrorCode.TARGET_UNREACHABLE, "connection refused", transient=True) for _ in range(4)]
    bench.targets["a"] = FakeTarget("a", fail_deploy=list(unreachable))
    out = {o.event.data.target.name: o.event.data for o in await on_certificate_issued(bench.ctx, bench.issued())}
    assert isinstance(out["b"], CertificateDeployed)
    assert isinstance(out["a"], DeploymentFailed) and out["a"].error.code is ErrorCode.TARGET_UNREACHABLE
    assert out["a"].rolled_back is False
    assert bench.sleeps == [1.0, 2.0, 2.5]
    with bench.ctx.read() as session:
        attempts = {d.target_name: d.attempts for d in store.list_deployments(session, "web-1")}
    assert attempts == {"a": 4, "b": 1}


async def test_transient_failure_then_success(bench: Bench) -> None:
    bench.targets["a"] = FakeTarget("a", fail_deploy=[TargetError(ErrorCode.TARGET_UNREACHABLE, "timeout", transient=True)])
    out = {o.event.data.target.name: o.event.data for o in await on_certificate_issued(bench.ctx, bench.issued())}
    assert isinstance(out["a"], CertificateDeployed)
    assert bench.sleeps == [1.0]


def _provision(certificate_id: str = "bot-1") -> Envelope:
    command = ProvisionCertificate(certificate_id=certificate_id, request_id="prov-1", profile="web", connector="sim",
                                   key_algorithm=KeyAlgorithm.EC_P256, common_name="bot.unit.test", sans=["dns:bot.unit.test"])
    return make_event(command, id=str(uuid.uuid4()), source="/test/gateway", time=NOW, subject=certificate_id,
                      correlationid="prov-1")


async def test_bot_key_flow_provision_issue_install_renew(bench: Bench) -> None:
    provision = _provision()
    (out,) = await on_provision(bench.ctx, provision)
    request = out.event.data
    assert isinstance(request, IssueRequested) and out.topic == "certrail.requests"
    assert request.requester == "certrail-deployer" and request.profile == "web" and request.sans == ["dns:bot.unit.test"]
    # signed: HMAC-SHA256 over the canonical JSON of the data without auth
    assert request.auth is not None and request.auth.key_id == "deployer-1"
    expected = hmac.new(REQUEST_KEY, request_signing_bytes(request), hashlib.sha256).digest()
    assert request.auth.signature.rstrip("=") == __import__("base64").urlsafe_b64encode(expected).decode().rstrip("=")
    csr = x509.load_pem_x509_csr(request.csr.encode())
    assert csr.is_signature_valid
    assert b"PRIVATE KEY" not in encode(out.event)

    # stored encrypted; a redelivery re-publishes the same request and makes no new key
    (again,) = await on_provision(bench.ctx, provision)
    assert encode(again.event) == encode(out.event)
    with bench.ctx.read() as session:
        key = store.bot_key_by_cause(session, provision.id)
    assert key is not None and b"PRIVATE KEY" not in key.encrypted_key
    key_pem = bench.ctx.box.decrypt(key.encrypted_key)
    private = serialization.load_pem_private_key(key_pem, None)

    # the certificate arrives: installed beside its key
    issued = bench.issued(certificate_id="bot-1", key=private, names=("bot.unit.test",))
    (deployed_a, _) = sorted(await on_certificate_issued(bench.ctx, issued), key=lambda o: o.event.data.target.name)
    assert isinstance(deployed_a.event.data, CertificateDeployed)
    installed = bench.targets["a"].installed
    assert installed is not None and installed.private_key_pem == key_pem
    assert b"PRIVATE KEY" not in encode(deployed_a.event)

    # renewal: a fresh key, a RenewRequested for the same names replacing the serial
    due = RenewalDue(certificate_id="bot-1", serial=issued.data.serial, profile="web", connector="sim",
                     key_generation=KeyGeneration.BOT, renew_at=NOW, not_after=NOW + timedelta(days=10))
    (renew,) = await on_renewal_due(bench.ctx, make_event(due, id=str(uuid.uuid4()), source="/t", time=NOW, subject="bot-1"))
    assert isinstance(renew.event.data, RenewRequested)
    assert renew.event.data.replaces_serial == issued.data.serial
    new_csr = x509.load_pem_x509_csr(renew.event.data.csr.encode())
    assert new_csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
        csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert new_csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [
        "bot.unit.test"]
    assert _metric(bench, "certrail_deployer_keys_generated_total", {"algorithm": "EC-P256"}) == 2

    # revoked with replacement: another fresh key and request; without replacement: nothing
    revoked = CertificateRevoked(certificate_id="bot-1", serial=issued.data.serial, request_id="rv-1", connector="sim",
                                 reason=RevocationReason.KEY_COMPROMISE, revoked_at=NOW, replace=True)
    (replacement,) = await on_revoked(bench.ctx, make_event(revoked, id=str(uuid.uuid4()), source="/t", time=NOW))
    assert isinstance(replacement.event.data, RenewRequested)
    plain = revoked.model_copy(update={"replace": False})
    assert await on_revoked(bench.ctx, make_event(plain, id=str(uuid.uuid4()), source="/t", time=NOW)) == []


async def test_bot_certificate_without_a_matching_key_is_not_installed(bench: Bench) -> None:
    await on_provision(bench.ctx, _provision())
    stranger = bench.issued(certificate_id="bot-1")  # a certificate for a key the deployer never made
    out = await on_certificate_issued(bench.ctx, stranger)
    assert {o.event.data.error.code for o in out} == {ErrorCode.CERTIFICATE_MISMATCH}
    assert all(t.installed is None for t in bench.targets.values())


def _forged(bench: Bench, how: str) -> tuple[Envelope, ErrorCode]:
    """A forged CertificateIssued for the deployed web-1 (same id, same SANs), and the code that refuses it."""
    genuine = bench.ca
    if how.startswith("evil-ca"):
        bench.ca = MiniCA()  # its own CA, same names; by default the same serial as the deployed certificate
        if how == "evil-ca-new-serial":
            bench.ca.leaf(["skip.unit.test"])
        forged, code = bench.issued(), ErrorCode.CERTIFICATE_UNTRUSTED
    elif how == "unknown-certificate-id":
        forged = bench.issued()
        forged = forged.model_copy(update={"data": forged.data.model_copy(update={"certificate_id": "never-requested"})})
        code = ErrorCode.CERTIFICATE_NOT_REQUESTED
    else:
        forged = bench.issued()
        forged = forged.model_copy(update={"data": forged.data.model_copy(update={"public_key_sha256": "ab" * 32})})
        code = ErrorCode.CERTIFICATE_MISMATCH
    bench.ca = genuine
    return forged, code


@pytest.mark.parametrize("how", ["evil-ca-same-serial", "evil-ca-new-serial", "unknown-certificate-id", "announced-key-lies"])
async def test_a_forged_certificate_is_not_installed_and_the_deployed_one_stays(
        bench: Bench, how: str, caplog: pytest.LogCaptureFixture) -> None:
    genuine = bench.issued()
    await on_certificate_issued(bench.ctx, genuine)
    deployed = {name: (t.installed, list(t.calls)) for name, t in bench.targets.items()}
    forged, code = _forged(bench, how)
    out = await on_certificate_issued(bench.ctx, forged)
    assert sorted(o.event.data.target.name for o in out) == ["a", "b"]
    for o in out:
        assert isinstance(o.event.data, DeploymentFailed) and o.event.data.error.code is code
        assert o.event.data.rolled_back is False and o.event.causationid == forged.id
    assert {name: (t.installed, t.calls) for name, t in bench.targets.items()} == deployed  # untouched
    with bench.ctx.read() as session:  # refused: nothing recorded as a deployment, so nothing to replay as done
        recorded = store.list_deployments(session)
    assert {(d.certificate_id, d.target_name, d.certificate_pem) for d in recorded} == {
        ("web-1", name, genuine.data.certificate) for name in ("a", "b")}
    assert _metric(bench, "certrail_deployer_refusals_total", {"code": code.value}) == 1
    assert "refused to install" in caplog.text and "BEGIN" not in caplog.text


async def test_a_requester_held_certificate_is_installed_only_for_the_key_of_the_accepted_csr(bench: Bench) -> None:
    """A certificate the connector's own CA really issued (for another certificate id or requester),
    announced under web-1, is refused when its key is not the one of the CSR the gateway accepted
    for web-1; the certificate for that CSR is installed."""
    relabelled, genuine = bench.issued(), bench.issued()  # the pinned CA's, two different keys
    await on_request_accepted(bench.ctx, make_event(RequestAccepted(
        request_id="req-2", requester="ci", kind=RequestKind.RENEW, certificate_id="web-1", profile="web", connector="sim",
        issuance_id=issuance_id("web-1", 2), public_key_sha256=genuine.data.public_key_sha256),
        id=str(uuid.uuid4()), source="/test/gateway", time=NOW, subject="web-1"))
    refused = await on_certificate_issued(bench.ctx, relabelled)
    assert sorted((o.event.data.target.name, o.event.data.error.code) for o in refused) == [
        ("a", ErrorCode.CERTIFICATE_MISMATCH), ("b", ErrorCode.CERTIFICATE_MISMATCH)]
    assert all(t.installed is None for t in bench.targets.values())
    assert "req-2" in refused[0].event.data.error.message
    deployed = await on_certificate_issued(bench.ctx, genuine)
    assert {type(o.event.data) for o in deployed} == {CertificateDeployed}
    assert {t.installed.certificate_pem for t in bench.targets.values() if t.installed} == {genuine.data.certificate}


async def test_renewal_due_for_unknown_bot_key_is_refused_with_a_code(bench: Bench) -> None:
    due = RenewalDue(certificate_id="nobody", serial="abc", profile="web", connector="sim", key_generation=KeyGeneration.BOT,
                     renew_at=NOW, not_after=NOW + timedelta(days=1))
    with pytest.raises(InvalidMessage) as refused:
        await on_renewal_due(bench.ctx, make_event(due, id="e1", source="/t", time=NOW))
    assert refused.value.code is ErrorCode.KEY_NOT_FOUND
    requester_held = due.model_copy(update={"key_generation": KeyGeneration.REQUESTER})
    assert await on_renewal_due(bench.ctx, make_event(requester_held, id="e2", source="/t", time=NOW)) == []


def test_target_secrets_are_stored_encrypted(bench: Bench) -> None:
    secret = "s" * 40
    with bench.ctx.write() as session:
        store.add_target(session, bench.ctx.box, "hook", TargetKind.WEBHOOK, {"url": "https://h.test/x"}, {"hmac_secret": secret},
                         NOW)
    with bench.ctx.read() as session:
        listed = {t.name: t for t in store.list_targets(session)}
        assert listed["hook"].secrets == {} and listed["hook"].secret_names == ("(encrypted)",)
        assert store.get_target(session, "hook", bench.ctx.box).secrets == {"hmac_secret": secret}
        raw = session.execute(__import__("sqlalchemy").text("SELECT config, secrets FROM deployer_targets WHERE name='hook'")).one()
    assert secret not in raw[0] and secret.encode() not in raw[1]
    with pytest.raises(ValueError, match="https"):
        with bench.ctx.write() as session:
            store.add_target(session, bench.ctx.box, "plain", TargetKind.WEBHOOK, {"url": "http://h.test/x"},
                             {"hmac_secret": secret}, NOW)
    with pytest.raises(ValueError, match="unbind"):
        with bench.ctx.write() as session:
            store.remove_target(session, "a")
    assert json.loads(raw[0])["url"] == "https://h.test/x"


@dataclass
class SlowTarget(FakeTarget):
    """Counts how many deployments are inside it at once: each deploy waits (at most 1 s) for a
    second one to come in beside it."""

    inside: int = 0
    most_inside: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def deploy(self, bundle: Bundle) -> None:
        async with self.changed:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.changed.notify_all()
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.inside >= 2), 1.0)
            except TimeoutError:
                pass  # nobody came in beside it: the lock kept the other one out
        try:
            await super().deploy(bundle)
        finally:
            self.inside -= 1


@pytest.mark.parametrize(("per_certificate", "expected"), [(False, 1), (True, 2)], ids=["shared-directory", "per-certificate"])
async def test_certificates_deployed_concurrently_never_share_a_place_at_once(
    bench: Bench, per_certificate: bool, expected: int
) -> None:
    """A batch deploys different certificates at the same time: into one shared directory one after
    the other (a shared directory, a webhook, a reload), into per-certificate directories side by side."""
    slow = SlowTarget("shared")
    bench.targets["shared"] = slow
    with bench.ctx.write() as session:
        store.add_target(session, bench.ctx.box, "shared", TargetKind.FILE, {"dir": "/srv/shared", "per_certificate": per_certificate},
                         {}, NOW)
        store.bind(session, "api", "shared", NOW)
    first, second = bench.issued("api-1", profile="api"), bench.issued("api-2", profile="api")
    results = await asyncio.gather(on_certificate_issued(bench.ctx, first), on_certificate_issued(bench.ctx, second))
    assert [type(out.event.data) for outs in results for out in outs] == [CertificateDeployed, CertificateDeployed]
    assert slow.most_inside == expected
    assert len(bench.ctx.target_locks) == 0  # nothing left behind


async def test_real_file_target_takes_two_certificates_of_one_batch_into_one_directory(tmp_path: Path, bench: Bench) -> None:
    bench.ctx.build_target = build_target  # the real file target on the local disk
    with bench.ctx.write() as session:
        store.add_target(session, bench.ctx.box, "disk", TargetKind.FILE, {"dir": str(tmp_path / "shared")}, {}, NOW)
        store.bind(session, "disk", "disk", NOW)
    envelopes = [bench.issued(f"disk-{i}", profile="disk") for i in range(4)]
    results = await asyncio.gather(*(on_certificate_issued(bench.ctx, envelope) for envelope in envelopes))
    assert [type(outs[0].event.data) for outs in results] == [CertificateDeployed] * 4
    current = (tmp_path / "shared" / "current" / "cert.pem").read_text()
    assert current in {envelope.data.certificate for envelope in envelopes}
