"""Revocations made outside certrail, on the real stack (issue 20, decision 0030): the four services as processes on
the test run's Kafka broker and a SQLite file, the emCA simulator, the issuer's CRL watch every few seconds.

Two certificates issued through certrail: a bot-held one of a profile with ``on_external_revocation: replace``,
deployed to a file target, and a requester-held one of a profile that only notifies (the default). Both are revoked
DIRECTLY at the CA with ``certrail emca-sim revoke`` (the simulator's admin API, as an emCA administrator would).
Within one watch interval the issuer publishes RevokedOutOfBand for each (once), the auditor's inventory shows both
revoked out of band, the deployer destroys the bot-held key at once (keyCompromise), and the bot-held certificate
is replaced by itself: RenewalDue -> the deployer's fresh key and
RenewRequested -> a new serial issued and deployed to the target. The notify profile's certificate gets no renewal.
A third, bot-held, of a profile that notifies and says ``on_revocation: remove``, is taken off its file target.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from emca_sim.server import start_in_thread
from services.common.contracts.events import CertificateDeployed, CertificateIssued, RenewalDue
from services.common.contracts.identity import renewal_due_id
from services.common.contracts.keys import BotKeyDestroyed, KeyRetirementReason
from services.common.contracts.requests import RenewRequested
from services.common.contracts.revocation import RevokedOutOfBand
from services.common.contracts.undeploy import CertificateUndeployed
from services.common.settings import KafkaSettings
from tests.conftest import wait_until
from tests.e2e.process_stack import DEPLOYER, ProcessStack, process_stack
from tests.e2e.process_stack import check as _check
from tests.e2e.process_stack import csr as _csr

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONNECTOR, BOT_PROFILE, CSR_PROFILE, TARGET = "emca-oob", "oob-bot", "oob-csr", "oob-files"
REMOVE_PROFILE, REMOVE_TARGET = "oob-remove", "oob-gone"  # on_revocation: remove, on_external_revocation: notify
REQUESTER = "web-team"
DOMAIN = "oob.certrail.test"
WATCH_INTERVAL_S = 4
WATCHER_IDLE_S = 5  # WatchSettings.idle_s: how often the watcher looks at its connectors


@pytest.fixture
def live(kafka_settings: KafkaSettings, tmp_path: Path) -> Iterator[ProcessStack]:
    with start_in_thread(tmp_path / "emca-sim", port=0, crl_port=0, admin_port=0) as sim, \
            process_stack(kafka_settings, tmp_path, requester=REQUESTER, description="out-of-band e2e", env={
                "CERTRAIL_ISSUER_CRL_WATCH_INTERVAL_S": str(WATCH_INTERVAL_S),
                "CERTRAIL_ISSUER_CRL_WATCH_RETRY_S": "1"}) as stack:
        stack.add_connector(CONNECTOR, sim)
        stack.add_deployer_key()
        common = {"connector": CONNECTOR, "ca_profile": "TLS Server", "domain_rules": {"dns_suffixes": [DOMAIN]},
                  "validity_days": 1}
        _check(stack.admin.post("/v1/profiles", json={
            **common, "name": BOT_PROFILE, "key_generation": "bot", "bot_key_algorithm": "EC-P256",
            "allowed_requesters": [REQUESTER, DEPLOYER], "deployment_target": TARGET,
            "on_external_revocation": "replace"}), 201)
        _check(stack.admin.post("/v1/profiles", json={  # on_external_revocation: notify, the default
            **common, "name": CSR_PROFILE, "key_generation": "requester", "allowed_requesters": [REQUESTER]}), 201)
        _check(stack.admin.post("/v1/profiles", json={
            **common, "name": REMOVE_PROFILE, "key_generation": "bot", "bot_key_algorithm": "EC-P256",
            "allowed_requesters": [REQUESTER, DEPLOYER], "deployment_target": REMOVE_TARGET, "on_revocation": "remove"}), 201)
        stack.file_target(TARGET, BOT_PROFILE)
        stack.file_target(REMOVE_TARGET, REMOVE_PROFILE, "deploy-gone")
        yield stack


def _issued(live: ProcessStack, certificate_id: str) -> CertificateIssued:
    found = wait_until(lambda: live.events(live.topics.issuer_events, CertificateIssued.TYPE, certificate_id),
                       f"{certificate_id} issued", 90, interval_s=0.5)
    assert isinstance(found, list)
    return found[0].data


def _deployed(live: ProcessStack, certificate_id: str, target: str = TARGET) -> set[str]:
    return {s for (s,) in live.rows("SELECT serial FROM deployer_deployments WHERE certificate_id = ? AND target_name = ?"
                                " AND status = 'deployed'", certificate_id, target)}


def _revoke_at_ca(live: ProcessStack, serial: str) -> datetime:
    """``certrail emca-sim revoke``: the CA's administrator, not certrail."""
    certrail = Path(sys.executable).parent / "certrail"
    done = subprocess.run([str(certrail), "emca-sim", "revoke", serial, "--reason", "keyCompromise", "--data-dir",
                           str(live.sims[CONNECTOR].data_dir)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return datetime.now(UTC)


def _inventory(live: ProcessStack, certificate_id: str, serial: str) -> tuple[Any, ...] | None:
    found = live.rows("SELECT status, revocation_check, revocation_reason FROM certificate_serials"
                        " WHERE certificate_id = ? AND serial = ?", certificate_id, serial)
    return found[0] if found else None


@pytest.mark.timeout(300)
def test_a_revocation_made_at_the_ca_is_noticed_and_replaced_per_profile(live: ProcessStack) -> None:
    bot_id, csr_id = f"www.{DOMAIN}", f"api.{DOMAIN}"
    _check(live.requester.post("/v1/certificates", json={
        "request_id": f"issue-{bot_id}", "profile": BOT_PROFILE, "certificate_id": bot_id, "sans": [f"dns:{bot_id}"]}), 202)
    _check(live.requester.post("/v1/certificates", json={
        "request_id": f"issue-{csr_id}", "profile": CSR_PROFILE, "certificate_id": csr_id, "csr": _csr(csr_id)}), 202)
    gone_id = f"gone.{DOMAIN}"
    _check(live.requester.post("/v1/certificates", json={
        "request_id": f"issue-{gone_id}", "profile": REMOVE_PROFILE, "certificate_id": gone_id,
        "sans": [f"dns:{gone_id}"]}), 202)
    bot, csr, gone = _issued(live, bot_id), _issued(live, csr_id), _issued(live, gone_id)
    wait_until(lambda: bot.serial in _deployed(live, bot_id), f"{bot_id} deployed", 60, interval_s=0.5)
    wait_until(lambda: gone.serial in _deployed(live, gone_id, REMOVE_TARGET), f"{gone_id} deployed", 60, interval_s=0.5)
    assert (live.var / "deploy-gone" / "current" / "cert.pem").exists()

    revoked_at = {bot_id: _revoke_at_ca(live, bot.serial), csr_id: _revoke_at_ca(live, csr.serial)}
    _revoke_at_ca(live, gone.serial)

    # -- noticed within one watch interval (plus the watcher's idle round), once per serial
    for certificate_id, serial, request_id in ((bot_id, bot.serial, bot.request_id), (csr_id, csr.serial, csr.request_id)):
        found = wait_until(lambda c=certificate_id: live.events(live.topics.issuer_events, RevokedOutOfBand.TYPE, c),
                           f"RevokedOutOfBand for {certificate_id}", WATCH_INTERVAL_S + WATCHER_IDLE_S + 30, interval_s=0.5)
        assert isinstance(found, list) and len(found) == 1
        event = found[0].data
        assert isinstance(event, RevokedOutOfBand)
        assert (event.serial, event.reason, event.connector) == (serial, "keyCompromise", CONNECTOR)
        assert event.detected_at - revoked_at[certificate_id] <= timedelta(seconds=WATCH_INTERVAL_S + WATCHER_IDLE_S + 5)
        assert event.distribution_point.startswith(live.sims[CONNECTOR].endpoints.public_base_url)
        assert found[0].correlationid == request_id  # the issuance's request (the deployer's, for a bot-held key)
        wait_until(lambda c=certificate_id, s=serial: _inventory(live, c, s) == ("revoked", "out_of_band", "keyCompromise"),
                   lambda c=certificate_id, s=serial: f"the inventory to show {c} revoked out of band: {_inventory(live, c, s)}",
                   30, interval_s=0.5)

    # -- the bot-held key revoked for keyCompromise at the CA is destroyed at once by the deployer
    destroyed = wait_until(lambda: [e for e in live.events(live.topics.deployer_events, BotKeyDestroyed.TYPE, bot_id)
                                    if e.data.serial == bot.serial], f"the key of {bot_id} serial {bot.serial} destroyed",
                           30, interval_s=0.5)
    assert isinstance(destroyed, list) and len(destroyed) == 1
    assert destroyed[0].data.reason is KeyRetirementReason.KEY_COMPROMISE

    # -- notify with on_revocation: remove: nothing replaces it, so the deployer takes it off its target
    undeployed = wait_until(lambda: live.events(live.topics.deployer_events, CertificateUndeployed.TYPE, gone_id),
                            f"{gone_id} taken off its target", WATCH_INTERVAL_S + WATCHER_IDLE_S + 30, interval_s=0.5)
    assert isinstance(undeployed, list) and len(undeployed) == 1
    assert (undeployed[0].data.serial, undeployed[0].data.request_id) == (gone.serial, None)
    assert [(t.target.name, t.outcome.value) for t in undeployed[0].data.targets] == [(REMOVE_TARGET, "removed")]
    assert not (live.var / "deploy-gone" / "current").exists() and gone.serial not in _deployed(live, gone_id, REMOVE_TARGET)
    assert not live.events(live.topics.gateway_events, RenewalDue.TYPE, gone_id)

    # -- replace: a new key, a new serial, deployed; caused by the RenewalDue of the revoked serial
    def replaced() -> str | None:
        issued = [e.data for e in live.events(live.topics.issuer_events, CertificateIssued.TYPE, bot_id)]
        new = [i.serial for i in issued if i.replaces_serial == bot.serial]
        return new[0] if new and new[0] in _deployed(live, bot_id) else None

    new_serial = wait_until(replaced, lambda: f"{bot_id} replaced and deployed (deployed: {_deployed(live, bot_id)})",
                            90, interval_s=0.5)
    assert isinstance(new_serial, str) and new_serial != bot.serial
    [due] = live.events(live.topics.gateway_events, RenewalDue.TYPE, bot_id)
    assert due.id == renewal_due_id(bot_id, bot.serial) and due.data.key_generation.value == "bot"
    [request] = [e for e in live.events(live.topics.requests, RenewRequested.TYPE, bot_id)
                 if e.data.replaces_serial == bot.serial]
    assert request.data.requester == DEPLOYER and request.causationid == due.id
    wait_until(lambda: format(x509.load_pem_x509_certificate(
        (live.var / "deploy" / "current" / "cert.pem").read_bytes()).serial_number, "x") == new_serial,
        "the target to serve the new serial", 30, interval_s=0.5)
    assert any(e.data.serial == new_serial for e in live.events(live.topics.deployer_events, CertificateDeployed.TYPE, bot_id))
    wait_until(lambda: _inventory(live, bot_id, new_serial) == ("active", None, None),
               lambda: f"the inventory to show {new_serial} active: {_inventory(live, bot_id, new_serial)}", 30, interval_s=0.5)

    # -- notify: nothing but the event and the inventory state
    assert not live.events(live.topics.gateway_events, RenewalDue.TYPE, csr_id)
    assert len(live.events(live.topics.issuer_events, RevokedOutOfBand.TYPE, bot_id)) == 1  # not again next interval
    assert live.rows("SELECT COUNT(*) FROM issuer_watched_serials WHERE state = ?", "revoked_out_of_band") == [(3,)]
