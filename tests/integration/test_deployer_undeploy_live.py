"""A revoked certificate removed from its targets, on the real broker (issue 20, decision 0028): the deployer as
a real process with a file target (the key retention harness), the profile's ``on_revocation: remove`` learnt
from a ProfileUpdated on certrail.events.gateway. Revoking a serial the target no longer serves leaves the newer
one; revoking with replace=true removes nothing and the replacement is served; revoking the served serial without
replacement takes its files and key off the target and puts CertificateUndeployed on certrail.events.deployer.
The issuer's and the gateway's events are published by the test, as those services would."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from services.common.contracts.admin import AdminOutcome, ProfileUpdated
from services.common.contracts.commands import ProvisionCertificate
from services.common.contracts.events import CertificateRevoked, RenewalDue
from services.common.contracts.fields import KeyAlgorithm, KeyGeneration, RevocationReason
from services.common.contracts.requests import IssueRequested, RenewRequested
from services.common.contracts.undeploy import CertificateUndeployed, UndeployOutcome
from services.common.db import make_engine, read_session
from services.deployer import projection
from services.deployer.targets.config import certificate_dir_name
from tests.conftest import poll_until
from tests.integration import test_deployer_key_retention_live as harness
from tests.integration.test_deployer_key_retention_live import CID, Live, _metric

pytestmark = [pytest.mark.integration, pytest.mark.slow]
live = harness.live  # the deployer process, a file target bound to bot profile web, the test's producer and reader


def _on_revocation(live: Live) -> str | None:
    engine = make_engine(live.db)
    try:
        with read_session(engine) as session:
            return projection.profile_on_revocation(session, "web")
    finally:
        engine.dispose()


def _served(directory: Path) -> str | None:
    cert = directory / "current" / "cert.pem"
    return format(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number, "x") if cert.exists() else None


async def _revoke(live: Live, serial: str, replace: bool) -> None:
    await live.publish(live.topics.issuer_events, CertificateRevoked(
        certificate_id=CID, serial=serial, request_id=f"rv-{serial[:8]}", connector="sim",
        reason=RevocationReason.CESSATION_OF_OPERATION, revoked_at=datetime.now(UTC), replace=replace))


async def test_revoked_certificates_leave_their_target_or_are_replaced(live: Live) -> None:
    directory = live.target_dir / certificate_dir_name(CID)
    await live.publish(live.topics.provisioning, ProvisionCertificate(
        certificate_id=CID, request_id="prov-1", profile="web", connector="sim", key_algorithm=KeyAlgorithm.EC_P256,
        common_name=CID, sans=[f"dns:{CID}"]))
    request = await live.wait_for(IssueRequested, "the deployer's IssueRequested", certificate_id=CID)
    first = await live.issue(request.data.csr, 1, request.data.request_id)
    await live.publish(live.topics.gateway_events, RenewalDue(
        certificate_id=CID, serial=first.serial, profile="web", connector="sim", key_generation=KeyGeneration.BOT,
        renew_at=datetime.now(UTC), not_after=first.not_after))
    renew = await live.wait_for(RenewRequested, "the deployer's RenewRequested", replaces_serial=first.serial)
    second = await live.issue(renew.data.csr, 2, renew.data.request_id)
    assert _served(directory) == second.serial

    # the profile says remove, through the gateway's admin event
    await live.publish(live.topics.gateway_events, ProfileUpdated(
        profile="web", actor="admin@example.com", outcome=AdminOutcome.SUCCEEDED, change={"on_revocation": "remove"}),
        subject="web")
    await poll_until(lambda: _on_revocation(live) == "remove", "the deployer to learn on_revocation", 30, interval_s=0.2,
                     in_thread=True)

    # the first serial is served nowhere any more: the target serving the newer serial is untouched
    await _revoke(live, first.serial, replace=False)
    undeployed = await live.wait_for(CertificateUndeployed, "the outcome for the superseded serial", serial=first.serial)
    assert [(t.target.name, t.outcome) for t in undeployed.data.targets] == [("files", UndeployOutcome.NOT_SERVING)]
    assert _served(directory) == second.serial and (directory / "current" / "privkey.pem").exists()

    # replace=true: nothing is removed, the replacement's deployment takes its place
    await _revoke(live, second.serial, replace=True)
    replacement = await live.wait_for(RenewRequested, "the replacement's RenewRequested", replaces_serial=second.serial)
    third = await live.issue(replacement.data.csr, 3, replacement.data.request_id)
    assert _served(directory) == third.serial

    # the served serial, no replacement: files and key gone, the outcome on events.deployer
    await _revoke(live, third.serial, replace=False)
    gone = await live.wait_for(CertificateUndeployed, "the served serial taken off", serial=third.serial)
    assert [(t.target.name, t.target.kind, t.outcome) for t in gone.data.targets] == [("files", "file", UndeployOutcome.REMOVED)]
    assert gone.data.profile == "web" and gone.data.reason is RevocationReason.CESSATION_OF_OPERATION
    assert not (directory / "current").exists()
    assert not [p for p in (directory / "versions").iterdir() if p.name.startswith(third.serial + "-")]
    # the relay publishes the outbox in order: had replace=true removed anything, its event would be here by now
    assert not [e for _, e in live.records if isinstance(e.data, CertificateUndeployed) and e.data.serial == second.serial]
    for raw, _ in live.records:
        assert b"PRIVATE KEY" not in raw
    text = live.metrics()
    assert _metric(text, "certrail_deployer_undeployments_total", {"kind": "file", "outcome": "removed"}) == 1
    assert _metric(text, "certrail_deployer_undeployments_total", {"kind": "file", "outcome": "not_serving"}) == 1
