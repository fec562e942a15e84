"""Revocations made outside certrail (services/issuer/revocation/watch*.py, decision 0030): the watch's decisions as
tables of named cases, and the watcher's rounds against a fake CRL source, a manual clock and the issuer's real
tables (SQLite)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from services.common.consumer import Outbound
from services.common.contracts.envelope import make_event
from services.common.contracts.events import CertificateIssued
from services.common.contracts.revocation import RevokedOutOfBand
from services.common.contracts.topics import Topics
from services.common.db import write_session
from services.common.emca.types import TransientError
from services.issuer import state
from services.issuer.revocation import watch_store
from services.issuer.revocation.crl_check import verify_crl
from services.issuer.revocation.source import FakeCrlSource
from services.issuer.revocation.watch_decision import (
    CrlEntry,
    LiveSerial,
    listed_entries,
    next_watch,
    out_of_band,
    owned_connectors,
    watch_due,
)
from services.issuer.revocation.watch_metrics import WatchMetrics
from services.issuer.revocation.watcher import CrlWatcher, WatchSettings, out_of_band_id
from services.issuer.state import NewOperation, StoredRecord
from tests.unit.examples import examples
from tests.unit.test_revocation_confirm import CDP, CONNECTOR, T0, TOPICS, Ca, Clock, Published

OTHER_CDP = "http://pki.example.test/crl/issuing-2.crl"


# -- the decisions (pure) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "assigned", "owned"), [
    ("partition 0 of a command topic", [("certrail.commands.emca-a", 0)], {"emca-a"}),
    ("other partitions only", [("certrail.commands.emca-a", 1), ("certrail.commands.emca-a", 2)], set()),
    ("several connectors", [("certrail.commands.emca-a", 0), ("certrail.commands.emca-b", 0)], {"emca-a", "emca-b"}),
    ("another prefix's topic", [("other.commands.emca-a", 0)], set()),
    ("not a command topic", [("certrail.events.issuer", 0)], set()),
])
def test_the_owner_of_partition_0_watches_the_connector(name: str, assigned: list[tuple[str, int]], owned: set[str]) -> None:
    assert owned_connectors(assigned, Topics("certrail")) == owned, name


@pytest.mark.parametrize(("name", "next_at", "due"), [
    ("never watched", None, True),
    ("due now", T0, True),
    ("overdue", T0 - timedelta(seconds=1), True),
    ("not yet", T0 + timedelta(seconds=1), False),
])
def test_a_watch_is_due_at_its_stored_time(name: str, next_at: datetime | None, due: bool) -> None:
    assert watch_due(next_at, T0) is due, name


@pytest.mark.parametrize(("name", "ok", "interval", "retry", "after"), [
    ("a good round waits an interval", True, 3600, 300, 3600),
    ("a failed round retries sooner", False, 3600, 300, 300),
    ("a retry never waits past the interval", False, 60, 300, 60),
])
def test_the_next_round(name: str, ok: bool, interval: float, retry: float, after: float) -> None:
    assert next_watch(T0, ok=ok, interval_s=interval, retry_s=retry) == T0 + timedelta(seconds=after), name


_A = LiveSerial("cert-a", "7b01", "req-a", CDP)
_B = LiveSerial("cert-b", "7b02", "req-b", CDP)
_ENTRY = CrlEntry("keyCompromise", T0)


@pytest.mark.parametrize(("name", "listed", "by_certrail", "found"), [
    ("nothing listed", {}, set(), []),
    ("listed, not certrail's", {"7b01": _ENTRY}, set(), ["7b01"]),
    ("listed, revoked by certrail", {"7b01": _ENTRY}, {"7b01"}, []),
    ("one of each", {"7b01": _ENTRY, "7b02": _ENTRY}, {"7b02"}, ["7b01"]),
])
def test_out_of_band_is_listed_and_not_certrails(name: str, listed: dict[str, CrlEntry], by_certrail: set[str],
                                                  found: list[str]) -> None:
    assert [f.live.serial for f in out_of_band([_A, _B], listed, by_certrail)] == found, name


def test_one_pass_over_the_crl_finds_the_entries_asked_about() -> None:
    ca = Ca.make()
    ca.revoke("7b01", x509.ReasonFlags.key_compromise)
    ca.revoke("7b03", None)
    ca.revoke("7b04", x509.ReasonFlags.certificate_hold)
    crl = verify_crl(ca.crl(), ca.pin.chain_pem, ca.pin.sha256)
    assert listed_entries(crl, ["7b01", "7b02", "7b03", "7b04"]) == {
        "7b01": CrlEntry("keyCompromise", T0), "7b03": CrlEntry("unspecified", T0), "7b04": CrlEntry("certificateHold", T0)}


# -- the watcher ----------------------------------------------------------------------------------------------------


@dataclass
class Rig:
    engine: Engine
    ca: Ca
    source: FakeCrlSource
    clock: Clock
    published: Published
    registry: CollectorRegistry
    watcher: CrlWatcher
    owned: set[str]

    def issue(self, serial: str, *, cdp: str | None = CDP, days: int = 90) -> None:
        """The issuer's own record of an issuance (its stored CertificateIssued), as the processor leaves it."""
        certificate_id = f"cert-{serial}"
        data = examples()[CertificateIssued].model_copy(update={
            "certificate_id": certificate_id, "serial": serial, "certificate": self.ca.leaf(int(serial, 16), cdp=cdp),
            "not_after": T0 + timedelta(days=days)})
        event = make_event(data, id=f"issued-{serial}", source="/t", time=T0, subject=certificate_id)
        record = StoredRecord.of(Outbound(TOPICS.issuer_events, event, key=certificate_id))
        op_key = f"iss-{serial}"
        new = NewOperation(op_key, "issue", "c", certificate_id, f"req-{serial}", CONNECTOR, TOPICS.commands(CONNECTOR), 0,
                           "{}")
        with write_session(self.engine) as session:
            state.begin_attempt_in(session.connection(), new, T0)
            state.record_outcome_in(session.connection(), op_key, state.OpState.ISSUED, [record], T0, serial=serial)

    def certrail_revokes(self, serial: str, *, answered: bool) -> None:
        """certrail's own revocation command (its intent; ``answered``: with its outcome, serial recorded)."""
        command = json.dumps({"data": {"serial": serial}})
        op_key = f"revoke:{serial}"
        new = NewOperation(op_key, "revoke", "c", f"cert-{serial}", "r", CONNECTOR, TOPICS.commands(CONNECTOR), 0, command)
        with write_session(self.engine) as session:
            state.begin_attempt_in(session.connection(), new, self.clock())
            if answered:
                state.record_outcome_in(session.connection(), op_key, state.OpState.REVOKED, [], self.clock(), serial=serial)

    def publish_crl(self, url: str = CDP) -> None:
        self.source.crls[url] = self.ca.crl()

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


SETTINGS = WatchSettings(interval_s=60, retry_s=10, idle_s=0.01)


def _rig(engine: Engine, settings: WatchSettings = SETTINGS) -> Rig:
    ca = Ca.make()
    source = FakeCrlSource(ca.pin)
    clock, published, registry = Clock(), Published(), CollectorRegistry()
    owned = {CONNECTOR}
    watcher = CrlWatcher(engine=engine, source=source, publish=published, topics=TOPICS,
                         metrics=WatchMetrics(registry, settings.interval_s), clock=clock, settings=settings,
                         owned=lambda: set(owned), event_source="/certrail/issuer")
    return Rig(engine, ca, source, clock, published, registry, watcher, owned)


async def test_a_serial_revoked_at_the_ca_is_reported_once_with_one_read_per_interval(engine: Engine) -> None:
    rig = _rig(engine)
    for serial in ("7c01", "7c02", "7c03", "7c04"):
        rig.issue(serial)
    rig.certrail_revokes("7c02", answered=True)  # certrail's own revocation: confirmed elsewhere, never out of band
    rig.certrail_revokes("7c03", answered=False)  # in flight: the serial is only in the stored command yet
    rig.ca.revoke("7c01", x509.ReasonFlags.key_compromise)
    rig.ca.revoke("7c02", x509.ReasonFlags.key_compromise)
    rig.ca.revoke("7c03", x509.ReasonFlags.superseded)
    rig.publish_crl()

    assert await rig.watcher.run_once() == ["7c01"]
    assert rig.source.fetched == [CDP]  # one read for the four certificates
    [event] = rig.published.events()
    assert isinstance(event.data, RevokedOutOfBand)
    assert event.id == out_of_band_id(CONNECTOR, "7c01") and event.subject == "cert-7c01" and event.correlationid == "req-7c01"
    assert (event.data.serial, event.data.reason, event.data.revoked_at_ca, event.data.crl_number) == (
        "7c01", "keyCompromise", T0, "1")
    assert event.data.distribution_point == CDP and event.data.detected_at == T0
    assert rig.metric("certrail_issuer_revocations_out_of_band_total", connector=CONNECTOR) == 1
    assert rig.metric("certrail_issuer_crl_watch_live_serials", connector=CONNECTOR) == 2  # 7c02 and 7c03 are certrail's
    assert rig.metric("certrail_issuer_crl_watch_last_success_timestamp_seconds", connector=CONNECTOR) == T0.timestamp()

    rig.clock.advance(30)
    assert await rig.watcher.run_once() == [] and rig.source.fetched == [CDP], "not due again within the interval"
    rig.clock.advance(30)
    assert await rig.watcher.run_once() == [] and rig.source.fetched == [CDP, CDP]
    assert len(rig.published.records) == 1, "once per serial, not once per round"

    restarted = _rig(engine)  # another instance (or a restart): the stored schedule and finding hold
    restarted.clock.now = rig.clock.now
    assert await restarted.watcher.run_once() == [] and restarted.source.fetched == []
    row = watch_store.finding(engine, CONNECTOR, "7c01")
    assert row is not None and row["state"] == "revoked_out_of_band" and row["published_at"] is not None


async def test_a_failed_publish_is_published_again_with_the_same_bytes(engine: Engine) -> None:
    rig = _rig(engine)
    rig.issue("7d01")
    rig.ca.revoke("7d01", None)
    rig.publish_crl()
    rig.published.fail = True
    with pytest.raises(RuntimeError, match="Kafka is down"):
        await rig.watcher.run_once()
    rig.published.fail = False
    await rig.watcher.run_once()
    [event] = rig.published.events()
    assert event.data.reason == "unspecified" and event.id == out_of_band_id(CONNECTOR, "7d01")
    row = watch_store.finding(engine, CONNECTOR, "7d01")
    assert row is not None and row["published_at"] is not None
    assert state.decode_outcome(row["outcome"])[0].value == rig.published.records[0].value


async def test_an_unreadable_or_forged_crl_fails_the_round_and_reports_nothing(engine: Engine) -> None:
    rig = _rig(engine)
    rig.issue("7e01")
    rig.issue("7e02", cdp=OTHER_CDP)
    rig.issue("7e03", cdp=None)  # never checkable: counted, not fetched
    rig.ca.revoke("7e01", x509.ReasonFlags.key_compromise)
    rig.source.crls[CDP] = rig.ca.crl(signer=ec.generate_private_key(ec.SECP256R1()))
    rig.source.crls[OTHER_CDP] = TransientError("connection refused")

    assert await rig.watcher.run_once() == []
    assert sorted(rig.source.fetched) == sorted([CDP, OTHER_CDP]) and rig.published.records == []
    assert rig.metric("certrail_issuer_crl_watch_rounds_total", connector=CONNECTOR, result="failed") == 1
    assert rig.metric("certrail_issuer_crl_watch_consecutive_failures", connector=CONNECTOR) == 1
    rig.clock.advance(SETTINGS.retry_s)  # retried sooner than the interval
    rig.publish_crl()
    rig.source.crls[OTHER_CDP] = rig.ca.crl()
    assert await rig.watcher.run_once() == ["7e01"]
    assert rig.metric("certrail_issuer_crl_watch_consecutive_failures", connector=CONNECTOR) == 0
    assert rig.metric("certrail_issuer_crl_watch_last_success_timestamp_seconds", connector=CONNECTOR) == (
        T0 + timedelta(seconds=SETTINGS.retry_s)).timestamp()


async def test_expired_serials_and_connectors_of_other_instances_are_not_watched(engine: Engine) -> None:
    rig = _rig(engine)
    rig.issue("7f01", days=-1)  # expired: the CA may drop it from the CRL, nobody trusts it anyway
    rig.ca.revoke("7f01", x509.ReasonFlags.key_compromise)
    rig.publish_crl()
    rig.owned.clear()
    assert await rig.watcher.run_once() == [] and rig.source.fetched == []
    rig.owned.add(CONNECTOR)
    assert await rig.watcher.run_once() == [] and rig.source.fetched == []  # no live serial: no read at all
    assert rig.metric("certrail_issuer_crl_watch_rounds_total", connector=CONNECTOR, result="ok") == 1
    assert rig.metric("certrail_issuer_crl_watch_live_serials", connector=CONNECTOR) == 0
    rig.owned.clear()  # the connector is deleted (or nobody watches it): its gauges go after three intervals
    rig.clock.advance(3 * SETTINGS.interval_s + 1)
    await rig.watcher.run_once()
    assert rig.registry.get_sample_value("certrail_issuer_crl_watch_last_success_timestamp_seconds",
                                         {"connector": CONNECTOR}) is None
