"""Keys retired on the real stack (issue 20): the four services as processes on the test run's broker, the
emCA simulator with 90-second certificates and the gateway's scheduler (the stack of
tests/e2e/test_renewal_live.py, reused), the deployer with a grace period of seconds.

A bot-held certificate renews itself; once the renewed serial is deployed and the grace period has passed,
the first serial's key is gone from the deployer's store and its version from the file target, and its
BotKeyDestroyed is on certrail.events.deployer (no key bytes) and in the auditor's store. A keyCompromise
revocation through the API destroys the live key at once, well inside the grace period."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import tests.e2e.test_renewal_live as renewal
from services.common.contracts.keys import BotKeyDestroyed, KeyCopyOutcome, KeyRetirementReason
from services.common.settings import KafkaSettings
from tests.conftest import wait_until
from tests.e2e.process_stack import ProcessStack, check

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RETENTION_S = 15


@pytest.fixture
def live(kafka_settings: KafkaSettings, tmp_path: Path) -> Iterator[ProcessStack]:
    yield from renewal.renewal_stack(kafka_settings, tmp_path, env={
        "CERTRAIL_DEPLOYER_KEY_RETENTION_S": str(RETENTION_S), "CERTRAIL_DEPLOYER_KEY_SWEEP_INTERVAL_S": "0.5"})


def _key_rows(live: ProcessStack, certificate_id: str) -> dict[str, tuple[bool, str | None]]:
    """serial -> (key material still stored, destroyed_at)."""
    rows = live.rows("SELECT serial, private_key IS NOT NULL, destroyed_at FROM deployer_bot_keys "
                     "WHERE certificate_id = ? AND serial IS NOT NULL", certificate_id)
    return {serial: (bool(held), destroyed) for serial, held, destroyed in rows}


def _versions(live: ProcessStack) -> list[str]:
    return sorted(p.name.rsplit("-", 1)[0] for p in (live.var / "deploy" / "versions").iterdir())


def _destroyed(live: ProcessStack, certificate_id: str, serial: str) -> BotKeyDestroyed | None:
    events = live.events(live.topics.deployer_events, BotKeyDestroyed.TYPE, certificate_id)
    found = [e.data for e in events if isinstance(e.data, BotKeyDestroyed) and e.data.serial == serial]
    return found[0] if found else None


def _audited(live: ProcessStack, certificate_id: str) -> list[bytes]:
    return [value for (value,) in live.rows("SELECT value FROM audit_records WHERE event_type = ? AND subject = ?",
                                            BotKeyDestroyed.TYPE, certificate_id)]


@pytest.mark.timeout(300)
def test_a_renewed_key_is_retired_after_its_grace_and_a_compromised_one_at_once(live: ProcessStack) -> None:
    bot_id = f"keys.{renewal.DOMAIN}"
    check(live.requester.post("/v1/certificates", json={
        "request_id": f"issue-{bot_id}", "profile": renewal.BOT_PROFILE, "certificate_id": bot_id,
        "sans": [f"dns:{bot_id}"]}), 202)

    def renewed() -> list[str] | None:
        ordered = [s for (s,) in live.rows("SELECT serial FROM gateway_issued_serials WHERE certificate_id = ?"
                                                     " ORDER BY issued_at", bot_id)]
        return ordered if len(ordered) >= 2 and set(ordered[:2]) <= set(renewal._deployed_serials(live, bot_id)) else None

    serials = wait_until(renewed, lambda: f"{bot_id} renewed by the scheduler and deployed (keys {_key_rows(live, bot_id)})",
                         150, interval_s=0.5)
    assert isinstance(serials, list)
    first = serials[0]

    # the first serial's key: destroyed once its grace has passed, in the store, on the target, audited
    event = wait_until(lambda: _destroyed(live, bot_id, first), f"BotKeyDestroyed for {bot_id} serial {first}",
                       RETENTION_S + 60, interval_s=1)
    assert isinstance(event, BotKeyDestroyed)
    assert event.reason is KeyRetirementReason.SUPERSEDED
    assert event.destroyed_at >= event.superseded_at + timedelta(seconds=RETENTION_S)
    assert [(c.target.name, c.outcome) for c in event.copies] == [(renewal.TARGET, KeyCopyOutcome.REMOVED)]
    assert _key_rows(live, bot_id)[first][0] is False
    assert first not in _versions(live)
    audited = wait_until(lambda: _audited(live, bot_id), "the auditor to store BotKeyDestroyed", 30, interval_s=0.5)
    assert isinstance(audited, list) and all(b"PRIVATE KEY" not in value for value in audited)

    # keyCompromise of the serial in service: its key destroyed at once (not after the grace period)
    current = renewal._current_serial(live, bot_id)
    assert current is not None and current != first
    check(live.requester.post(f"/v1/certificates/{bot_id}/revoke", json={
        "request_id": f"revoke-{current}", "reason": "keyCompromise", "serial": current}), 202)
    compromised = wait_until(lambda: _destroyed(live, bot_id, current), f"{bot_id} serial {current} destroyed", 60,
                             interval_s=0.5)
    assert isinstance(compromised, BotKeyDestroyed) and compromised.reason is KeyRetirementReason.KEY_COMPROMISE
    assert compromised.destroyed_at - compromised.superseded_at < timedelta(seconds=RETENTION_S)
    assert _key_rows(live, bot_id)[current][0] is False
    for envelope in live.events(live.topics.deployer_events, BotKeyDestroyed.TYPE, bot_id):
        assert "PRIVATE KEY" not in envelope.data.model_dump_json()
