"""A revoked certificate removed from its targets (issue 20, decision 0028), unit level: the decision as a table,
the versioned directory's removal with a reload that fails (the files put back), the profile field, then the
deployer's handlers on SQLite with a real file target in a temporary directory: remove takes the served serial
off (files and key gone, one CertificateUndeployed in the outbox, once), keep and replace=true leave it, and a
target serving a newer serial is untouched."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from services.common.consumer import InvalidMessage
from services.common.contracts.admin import AdminOutcome, ProfileUpdated
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import Envelope, decode
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateRevoked
from services.common.contracts.fields import RevocationReason
from services.common.contracts.requests import RenewRequested
from services.common.contracts.revocation import RevokedOutOfBand
from services.common.contracts.undeploy import CertificateUndeployed, OnRevocation, UndeployOutcome
from services.common.db_schema import DeployerAdminOutbox, DeployerDeploymentRow
from services.deployer import projection
from services.deployer.handlers.bot import on_revoked, on_revoked_out_of_band
from services.deployer.handlers.projection import on_profile_event
from services.deployer.store import Deployment
from services.deployer.targets.base import Bundle, TargetError
from services.deployer.targets.files import remove_served_in
from services.deployer.targets.localfs import LocalFileSystem
from services.deployer.targets.versioned import VersionedDirectory
from services.deployer.undeploy import plan_removal, removal_wanted
from services.gateway.policy.profile import ProvisioningProfile
from tests.deployer_support import MiniCA
from tests.unit import test_deployer_key_retention as retention
from tests.unit.test_deployer_key_retention import T0, Bench, _envelope, _renewed_once

bench = retention.bench  # the key retention tests' bench: a file target bound to bot profile web

# -- the decision ----------------------------------------------------------------------------------------------


def _d(target: str, serial: str, status: str = "deployed") -> Deployment:
    return Deployment("web", serial, target, "file", status, 1, None, None, None, "", ())


@pytest.mark.parametrize(("on_revocation", "replace", "expected"), [
    pytest.param("remove", False, True, id="remove, no replacement: removed"),
    pytest.param("remove", True, False, id="remove, replace=true: the replacement takes its place"),
    pytest.param("keep", False, False, id="keep"),
    pytest.param(None, False, False, id="never said (a profile from before the setting): keep"),
])
def test_removal_wanted(on_revocation: str | None, replace: bool, expected: bool) -> None:
    assert removal_wanted(on_revocation, replace) is expected


@pytest.mark.parametrize(("deployments", "serving", "moved_on"), [
    pytest.param([_d("a", "01")], ["a"], [], id="the newest serial there: taken back"),
    pytest.param([_d("a", "01"), _d("a", "02")], [], ["a"], id="a newer serial deployed since: untouched"),
    pytest.param([_d("a", "01"), _d("a", "02", "failed")], ["a"], [], id="a newer one that failed does not count"),
    pytest.param([_d("a", "01", "failed")], [], [], id="never deployed there: not listed"),
    pytest.param([_d("a", "01", "removed")], [], [], id="already taken back (redelivery): not listed again"),
    pytest.param([_d("a", "01"), _d("b", "01"), _d("b", "02")], ["a"], ["b"], id="per target"),
])
def test_plan_removal(deployments: list[Deployment], serving: list[str], moved_on: list[str]) -> None:
    plan = plan_removal("remove", False, deployments, "01")
    assert (plan.remove, plan.serving, plan.moved_on) == (True, serving, moved_on)
    assert plan_removal("keep", False, deployments, "01").targets == []


# -- the versioned directory -----------------------------------------------------------------------------------


async def test_a_reload_that_fails_puts_the_files_back_and_another_serial_is_never_touched(tmp_path: Path) -> None:
    ca = MiniCA()
    directory = VersionedDirectory(LocalFileSystem(), str(tmp_path))
    leaf = ca.chain[0]
    await directory.install(Bundle("web", "0a", leaf, (), b"key-a"))
    current = await directory.current_version()

    async def refuses(code: ErrorCode) -> None:
        raise TargetError(code, "nginx -t: cannot load certificate current/fullchain.pem")

    with pytest.raises(TargetError, match="put back, the serial is still served"):
        await remove_served_in(directory, "0a", refuses)
    assert await directory.current_version() == current and (tmp_path / "current" / "privkey.pem").exists()
    assert await remove_served_in(directory, "0b", refuses) is False  # not served: untouched, no reload

    reloads: list[ErrorCode] = []

    async def reload(code: ErrorCode) -> None:
        reloads.append(code)
    assert await remove_served_in(directory, "0a", reload) is True
    assert reloads == [ErrorCode.INSTALL_FAILED]
    assert not (tmp_path / "current").exists() and list((tmp_path / "versions").iterdir()) == []


# -- the profile -----------------------------------------------------------------------------------------------


def _profile(**extra: object) -> ProvisioningProfile:
    body = {"name": "web", "connector": "sim", "ca_profile": "TLS", "key_generation": "requester", "allowed_requesters": ["ci"],
            "domain_rules": {"dns_suffixes": ["example.com"]}, "validity_days": 30, **extra}
    return ProvisioningProfile.model_validate_json(json.dumps(body))


def test_the_profile_keeps_by_default_and_takes_remove_from_json() -> None:
    assert _profile().on_revocation is OnRevocation.KEEP
    assert _profile(on_revocation="remove").on_revocation is OnRevocation.REMOVE
    with pytest.raises(ValidationError, match="on_revocation"):
        _profile(on_revocation="delete")


# -- the handlers ----------------------------------------------------------------------------------------------


async def _say(bench: Bench, on_revocation: str) -> None:
    await on_profile_event(bench.ctx, _envelope(ProfileUpdated(profile="web", actor="admin", outcome=AdminOutcome.SUCCEEDED,
                                                                change={"on_revocation": on_revocation})))
    with bench.ctx.read() as session:
        assert projection.profile_on_revocation(session, "web") == on_revocation


def _revoked(serial: str, replace: bool = False) -> Envelope:
    return _envelope(CertificateRevoked(certificate_id="bot-1", serial=serial, request_id="rv-1", connector="sim",
                                        reason=RevocationReason.CESSATION_OF_OPERATION, revoked_at=T0 + timedelta(hours=2),
                                        replace=replace))


def _undeployed(bench: Bench) -> list[tuple[Envelope, str]]:
    with bench.ctx.read() as session:
        values = session.scalars(select(DeployerAdminOutbox.value).where(
            DeployerAdminOutbox.event_type == CertificateUndeployed.TYPE).order_by(DeployerAdminOutbox.seq)).all()
    return [(decode(value.encode(), CATALOG), value) for value in values]


def _status(bench: Bench, serial: str) -> str:
    with bench.ctx.read() as session:
        return session.scalars(select(DeployerDeploymentRow.status).where(DeployerDeploymentRow.serial == serial)).one()


def _served(bench: Bench) -> str | None:
    link = bench.target_dir / "current"
    return link.resolve().name.split("-")[0] if link.exists() else None


async def test_remove_takes_the_served_serial_off_once_and_leaves_a_newer_one(bench: Bench) -> None:
    first, second, _ = await _renewed_once(bench)
    await _say(bench, "remove")

    # the first serial is no longer served anywhere: the target serving the newer one is untouched
    assert await on_revoked(bench.ctx, _revoked(first.data.serial)) == []
    ((event, _),) = _undeployed(bench)
    assert [(t.target.name, t.outcome) for t in event.data.targets] == [("files", UndeployOutcome.NOT_SERVING)]
    assert _served(bench) == second.data.serial and (bench.target_dir / "current" / "privkey.pem").exists()

    # the served serial: files and key gone, the row marked, the event caused by the revocation, counted
    revocation = _revoked(second.data.serial)
    await on_revoked(bench.ctx, revocation)
    event, raw = _undeployed(bench)[1]
    assert isinstance(event.data, CertificateUndeployed) and event.causationid == revocation.id
    assert (event.data.serial, event.data.profile, event.data.request_id) == (second.data.serial, "web", "rv-1")
    assert [(t.target.name, t.target.kind, t.outcome) for t in event.data.targets] == [("files", "file", UndeployOutcome.REMOVED)]
    assert _served(bench) is None and not [p for p in (bench.target_dir / "versions").iterdir()
                                           if p.name.startswith(second.data.serial + "-")]
    assert _status(bench, second.data.serial) == "removed" and "PRIVATE KEY" not in raw
    assert bench.metric("certrail_deployer_undeployments_total", {"kind": "file", "outcome": "removed"}) == 1
    assert bench.wakes

    # a redelivered revocation writes nothing again
    await on_revoked(bench.ctx, revocation)
    assert len(_undeployed(bench)) == 2


async def test_keep_and_replace_leave_the_served_certificate(bench: Bench) -> None:
    _, second, _ = await _renewed_once(bench)
    await on_revoked(bench.ctx, _revoked(second.data.serial))  # the profile never said: keep
    await _say(bench, "keep")
    await on_revoked(bench.ctx, _revoked(second.data.serial))
    await _say(bench, "remove")
    (request,) = await on_revoked(bench.ctx, _revoked(second.data.serial, replace=True))
    assert isinstance(request.event.data, RenewRequested) and request.event.data.replaces_serial == second.data.serial
    assert _undeployed(bench) == [] and _served(bench) == second.data.serial and _status(bench, second.data.serial) == "deployed"


# -- revoked at the CA directly (RevokedOutOfBand, decision 0030) --------------------------------------------------


def _out_of_band(serial: str, reason: str = "keyCompromise") -> Envelope:
    return _envelope(RevokedOutOfBand(certificate_id="bot-1", serial=serial, connector="sim", reason=reason,
                                      revoked_at_ca=T0 + timedelta(hours=2), distribution_point="https://ca.example/crl.crl",
                                      detected_at=T0 + timedelta(hours=2, minutes=1)))


async def _say_external(bench: Bench, on_external_revocation: str) -> None:
    await on_profile_event(bench.ctx, _envelope(ProfileUpdated(profile="web", actor="admin", outcome=AdminOutcome.SUCCEEDED,
                                                                change={"on_external_revocation": on_external_revocation})))
    with bench.ctx.read() as session:
        assert projection.profile_on_external_revocation(session, "web") == on_external_revocation
        assert projection.profile_on_revocation(session, "web") == "remove"  # an event that does not say keeps it


async def test_a_serial_revoked_at_the_ca_is_taken_off_unless_a_replacement_comes_or_it_is_a_hold(bench: Bench) -> None:
    _, second, _ = await _renewed_once(bench)
    serial = second.data.serial
    await _say(bench, "remove")

    # a hold may be lifted; replace: the gateway's RenewalDue brings the replacement, which takes its place
    assert await on_revoked_out_of_band(bench.ctx, _out_of_band(serial, "certificateHold")) == []
    await _say_external(bench, "replace")
    assert await on_revoked_out_of_band(bench.ctx, _out_of_band(serial)) == []
    assert _undeployed(bench) == [] and _served(bench) == serial and _status(bench, serial) == "deployed"

    # notify (the default): nothing replaces it, so on_revocation: remove takes it off, without a request id
    await _say_external(bench, "notify")
    revocation = _out_of_band(serial)
    await on_revoked_out_of_band(bench.ctx, revocation)
    ((event, raw),) = _undeployed(bench)
    assert isinstance(event.data, CertificateUndeployed) and event.causationid == revocation.id
    assert (event.data.serial, event.data.request_id, event.data.reason) == (serial, None, RevocationReason.KEY_COMPROMISE)
    assert [(t.target.name, t.outcome) for t in event.data.targets] == [("files", UndeployOutcome.REMOVED)]
    assert _served(bench) is None and _status(bench, serial) == "removed" and "PRIVATE KEY" not in raw
    await on_revoked_out_of_band(bench.ctx, revocation)  # redelivered: nothing again
    assert len(_undeployed(bench)) == 1


async def test_an_unknown_on_external_revocation_is_refused(bench: Bench) -> None:
    with pytest.raises(InvalidMessage, match="unknown on_external_revocation 'delete'"):
        await on_profile_event(bench.ctx, _envelope(ProfileUpdated(
            profile="web", actor="admin", outcome=AdminOutcome.SUCCEEDED, change={"on_external_revocation": "delete"})))
