"""What a CertificateIssued costs in transactions (handlers/deploy.py, `_read_and_start`): the read, the
bot-held key marked issued and attempt 1 of every target not yet done take one grouped write
transaction, committed before any target is touched; a redelivery writes nothing new; a certificate
whose targets are partly done starts only the others. Unit: fake targets, SQLite in a temp dir."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, update

from services.common.consumer import Outbound
from services.common.contracts.commands import ProvisionCertificate
from services.common.contracts.envelope import Envelope, encode, make_event
from services.common.contracts.events import CertificateDeployed, CertificateIssued, DeploymentFailed
from services.common.contracts.fields import KeyAlgorithm
from services.common.db_schema import DeployerBotKeyRow, DeployerDeploymentRow
from services.deployer import store
from services.deployer.context import DeployerContext
from services.deployer.handlers.bot import on_provision
from services.deployer.handlers.deploy import on_certificate_issued
from services.deployer.targets.base import Bundle
from tests.unit.test_deployer_handlers import NOW, Bench, FakeTarget
from tests.unit.test_deployer_handlers import bench as bench  # noqa: F401 - the fixture


def _groups(ctx: DeployerContext) -> tuple[int, int]:
    """(write groups, read groups) committed so far through ``write_in`` / ``read_in``."""
    return (ctx._writes.groups if ctx._writes else 0), (ctx._reads.groups if ctx._reads else 0)


@dataclass
class WatchingTarget(FakeTarget):
    """A FakeTarget that, when deploy() is called, notes the transactions committed so far, the
    certificate's deployment rows and its bot-held keys, as another process would see them."""

    ctx: DeployerContext | None = None
    seen: list[tuple[tuple[int, int], list[tuple[str, str, str, int]], list[tuple[str, str | None]]]] = field(
        default_factory=list)

    async def deploy(self, bundle: Bundle) -> None:
        assert self.ctx is not None
        with self.ctx.read() as session:
            rows = [(d.serial, d.target_name, d.status, d.attempts) for d in store.list_deployments(session, bundle.certificate_id)]
            keys = [(k.status, k.serial) for k in session.scalars(
                select(DeployerBotKeyRow).where(DeployerBotKeyRow.certificate_id == bundle.certificate_id))]
        self.seen.append((_groups(self.ctx), rows, keys))
        await super().deploy(bundle)


def _only_target_a(bench: Bench) -> WatchingTarget:
    with bench.ctx.write() as session:
        store.unbind(session, "web", "b")
    target = WatchingTarget("a", ctx=bench.ctx)
    bench.targets["a"] = target
    return target


async def _bot_key(bench: Bench, certificate_id: str) -> ec.EllipticCurvePrivateKey:
    command = ProvisionCertificate(certificate_id=certificate_id, request_id="prov-1", profile="web", connector="sim",
                                   key_algorithm=KeyAlgorithm.EC_P256, common_name="bot.unit.test", sans=["dns:bot.unit.test"])
    await on_provision(bench.ctx, make_event(command, id=str(uuid.uuid4()), source="/test/gateway", time=NOW,
                                             subject=certificate_id, correlationid="prov-1"))
    with bench.ctx.read() as session:
        (key,) = session.scalars(select(DeployerBotKeyRow).where(DeployerBotKeyRow.certificate_id == certificate_id))
        assert key.private_key is not None
        pem = bench.ctx.box.decrypt(key.private_key)
    private = serialization.load_pem_private_key(pem, None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return private


def _serial(envelope: Envelope) -> str:
    assert isinstance(envelope.data, CertificateIssued)
    return envelope.data.serial


def _by_target(out: list[Outbound]) -> dict[str, Outbound]:
    named = {}
    for o in out:
        assert isinstance(o.event.data, CertificateDeployed | DeploymentFailed)
        named[o.event.data.target.name] = o
    return named


def _snapshot(bench: Bench) -> list[tuple[object, ...]]:
    with bench.ctx.read() as session:
        deployments = [tuple(row) for row in session.execute(select(DeployerDeploymentRow.__table__).order_by(
            DeployerDeploymentRow.certificate_id, DeployerDeploymentRow.serial, DeployerDeploymentRow.target_name))]
        keys = [tuple(row) for row in session.execute(select(DeployerBotKeyRow.__table__).order_by(DeployerBotKeyRow.cause_id))]
    return deployments + keys


@pytest.mark.parametrize("bot", [False, True], ids=["requester-held", "bot-held"])
async def test_one_write_transaction_before_the_target_is_touched(bench: Bench, bot: bool) -> None:  # noqa: F811
    """One certificate, one target: the read, the key marked issued and the in_progress row are one
    write transaction (no read transaction of its own), committed when deploy() runs; the outcome is
    the second. A redelivery re-publishes the same bytes and writes nothing new."""
    target = _only_target_a(bench)
    certificate_id = "bot-1" if bot else "web-1"
    key = await _bot_key(bench, certificate_id) if bot else None
    envelope: Envelope = bench.issued(certificate_id, key=key, names=("bot.unit.test",) if bot else ("www.unit.test",))
    writes, reads = _groups(bench.ctx)

    (out,) = await on_certificate_issued(bench.ctx, envelope)

    assert isinstance(out.event.data, CertificateDeployed)
    serial = _serial(envelope)
    ((seen_groups, rows, keys),) = target.seen
    assert seen_groups == (writes + 1, reads)
    assert rows == [(serial, "a", "in_progress", 1)]
    assert keys == ([("issued", serial)] if bot else [])
    assert _groups(bench.ctx) == (writes + 2, reads)
    with bench.ctx.read() as session:
        assert [(d.status, d.attempts) for d in store.list_deployments(session, certificate_id)] == [("deployed", 1)]

    before = _snapshot(bench)
    (again,) = await on_certificate_issued(bench.ctx, envelope)
    assert encode(again.event) == encode(out.event)
    assert _snapshot(bench) == before
    assert len(target.seen) == 1  # not touched again
    assert _groups(bench.ctx) == (writes + 3, reads)  # the redelivery's read (writes nothing)


async def test_partly_done_certificate_starts_only_the_targets_not_done(bench: Bench) -> None:  # noqa: F811
    """The process stopped after target a's outcome was stored but while b was in progress: the
    redelivery re-publishes a's outcome, records b's second attempt and deploys b alone."""
    envelope = bench.issued()
    first = _by_target(await on_certificate_issued(bench.ctx, envelope))
    with bench.ctx.write() as session:  # as if it had stopped during b's deployment
        session.execute(update(DeployerDeploymentRow).where(DeployerDeploymentRow.target_name == "b").values(
            status="in_progress", outcome=None, finished_at=None))
    for name in ("a", "b"):
        bench.targets[name] = WatchingTarget(name, ctx=bench.ctx, installed=bench.targets[name].installed)
    a, b = bench.targets["a"], bench.targets["b"]
    assert isinstance(a, WatchingTarget) and isinstance(b, WatchingTarget)
    writes, reads = _groups(bench.ctx)

    again = _by_target(await on_certificate_issued(bench.ctx, envelope))

    assert encode(again["a"].event) == encode(first["a"].event)  # replayed, byte for byte
    assert isinstance(again["b"].event.data, CertificateDeployed)
    assert a.seen == [] and a.calls == []
    serial = _serial(envelope)
    ((seen_groups, rows, _),) = b.seen
    assert seen_groups == (writes + 1, reads)
    assert sorted(rows) == [(serial, "a", "deployed", 1), (serial, "b", "in_progress", 2)]
    with bench.ctx.read() as session:
        assert {d.target_name: (d.status, d.attempts) for d in store.list_deployments(session, "web-1")} == {
            "a": ("deployed", 1), "b": ("deployed", 2)}
