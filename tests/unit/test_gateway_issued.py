"""The gateway's own projection of issued certificates (services/gateway/issued.py, decision 0017):
CertificateIssued and CertificateRevoked from events.issuer folded into gateway_issued_serials,
redelivery harmless, foreign certificate ids ignored; migration 0011 fills it once from the
auditor's inventory, so an upgraded installation keeps renewing and revoking what it had."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import Engine, insert, select

from services.common.certificate_trust import public_key_sha256
from services.common.contracts.envelope import Envelope, make_event
from services.common.contracts.events import CertificateIssued, CertificateRevoked
from services.common.contracts.fields import RevocationReason
from services.common.contracts.identity import issuance_id
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import CertificateInventory, CertificateSerial, GatewayIssuedSerial
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway import issued, store
from services.gateway.scheduler import load_snapshot
from tests.deployer_support import MiniCA
from tests.gateway_fixtures import NOW

CA = MiniCA()
CERT = "www"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'gw.db'}")
    upgrade(db)
    engine = make_engine(db)
    _managed(engine, CERT)
    yield engine
    engine.dispose()


def _managed(engine: Engine, certificate_id: str) -> None:
    with write_session(engine) as session:
        store.ensure_certificate(session, certificate_id=certificate_id, profile="web", connector="emca",
                                 requester="ci-pipeline", key_generation="requester", sans=["dns:www.example.com"], now=NOW)


def _issued(serial: int, at: timedelta, certificate_id: str = CERT, replaces: str | None = None) -> Envelope:
    """The issuer's CertificateIssued for ``serial``, its event time ``NOW + at``."""
    pem, _ = CA.leaf(["www.example.com"], serial=serial)
    cert = x509.load_pem_x509_certificate(pem.encode())
    data = CertificateIssued(
        issuance_id=issuance_id(certificate_id, 1), certificate_id=certificate_id, request_id=f"req-{serial:x}",
        connector="emca", profile="web", serial=format(serial, "x"), certificate=pem, chain=list(CA.chain),
        subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(), sans=["dns:www.example.com"],
        not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc, public_key_sha256=public_key_sha256(cert),
        replaces_serial=replaces)
    return make_event(data, id=f"issued-{serial:x}", source="/certrail/issuer", time=NOW + at, subject=certificate_id)


def _revoked(serial: int, at: timedelta, certificate_id: str = CERT) -> Envelope:
    data = CertificateRevoked(certificate_id=certificate_id, serial=format(serial, "x"), request_id=f"rv-{serial:x}",
                              connector="emca", reason=RevocationReason.KEY_COMPROMISE, revoked_at=NOW + at)
    return make_event(data, id=f"revoked-{serial:x}", source="/certrail/issuer", time=NOW + at, subject=certificate_id)


def _rows(engine: Engine, certificate_id: str = CERT) -> dict[str, dict[str, Any]]:
    with read_session(engine) as session:
        found = session.scalars(select(GatewayIssuedSerial).where(GatewayIssuedSerial.certificate_id == certificate_id))
        return {row.serial: {c.name: getattr(row, c.name) for c in GatewayIssuedSerial.__table__.columns} for row in found}


def _statuses(engine: Engine, certificate_id: str = CERT) -> dict[str, str]:
    return {serial: row["status"] for serial, row in _rows(engine, certificate_id).items()}


def _current(engine: Engine, certificate_id: str = CERT) -> str | None:
    with read_session(engine) as session:
        return issued.current_serial(session, certificate_id)


def test_issued_renewed_revoked_and_every_record_redelivered(engine: Engine) -> None:
    first, renewal = _issued(0x1A, timedelta(0)), _issued(0x2B, timedelta(days=60), replaces="1a")
    assert issued.apply_event(engine, first)
    assert _statuses(engine) == {"1a": "active"} and _current(engine) == "1a"
    row = _rows(engine)["1a"]
    assert (row["event_id"], row["issued_at"], row["request_id"], row["connector"], row["profile"]) == (
        "issued-1a", NOW, "req-1a", "emca", "web")
    assert json.loads(row["sans"]) == ["dns:www.example.com"] and row["not_after"] == first.data.not_after

    issued.apply_event(engine, renewal)
    assert _statuses(engine) == {"1a": "superseded", "2b": "active"} and _current(engine) == "2b"
    after_renewal = _rows(engine)
    for event in (first, renewal, renewal):  # redelivered, in and out of order: nothing changes
        issued.apply_event(engine, event)
    assert _rows(engine) == after_renewal

    issued.apply_event(engine, _revoked(0x1A, timedelta(days=61)))  # an old serial: the current one stays
    assert _statuses(engine) == {"1a": "revoked", "2b": "active"} and _current(engine) == "2b"
    issued.apply_event(engine, _revoked(0x2B, timedelta(days=62)))  # the current one: the certificate is revoked
    assert _statuses(engine) == {"1a": "revoked", "2b": "revoked"} and _current(engine) == "2b"
    revoked = _rows(engine)
    assert (revoked["2b"]["revoked_at"], revoked["2b"]["revocation_reason"]) == (NOW + timedelta(days=62), "keyCompromise")
    issued.apply_event(engine, _revoked(0x2B, timedelta(days=62)))
    issued.apply_event(engine, renewal)  # a revoked serial stays revoked
    assert _rows(engine) == revoked
    with read_session(engine) as session:
        assert issued.certificates_with_serial(session, "1a") == [CERT]
        assert issued.serials_of(session, CERT) == {"1a", "2b"}
        assert issued.certificates_with_serial(session, "3c") == []


def test_an_older_issuance_arriving_late_is_superseded(engine: Engine) -> None:
    issued.apply_event(engine, _issued(0x2B, timedelta(days=60)))
    issued.apply_event(engine, _issued(0x1A, timedelta(0)))
    assert _statuses(engine) == {"1a": "superseded", "2b": "active"} and _current(engine) == "2b"


def test_a_revocation_before_its_issuance_is_kept(engine: Engine) -> None:
    issued.apply_event(engine, _issued(0x1A, timedelta(0)))
    issued.apply_event(engine, _revoked(0x2B, timedelta(days=61)))
    assert _statuses(engine) == {"1a": "active", "2b": "revoked"} and _current(engine) == "1a"
    issued.apply_event(engine, _issued(0x2B, timedelta(days=60)))
    assert _statuses(engine) == {"1a": "superseded", "2b": "revoked"} and _current(engine) == "2b"
    assert _rows(engine)["2b"]["not_after"] is not None


def test_a_certificate_id_the_gateway_does_not_manage_is_ignored(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="services.gateway.issued"):
        assert not issued.apply_event(engine, _issued(0x1A, timedelta(0), certificate_id="forged.example.com"))
        assert not issued.apply_event(engine, _revoked(0x1A, timedelta(0), certificate_id="forged.example.com"))
    assert _rows(engine, "forged.example.com") == {}
    assert [r.getMessage() for r in caplog.records if "not managed" in r.getMessage()] == [
        f"{CertificateIssued.TYPE} issued-1a ignored: certificate id 'forged.example.com' is not managed by this gateway "
        "(forged or foreign)",
        f"{CertificateRevoked.TYPE} revoked-1a ignored: certificate id 'forged.example.com' is not managed by this gateway "
        "(forged or foreign)"]
    with read_session(engine) as session:
        assert issued.certificates_with_serial(session, "1a") == []


def test_the_scheduler_watches_the_current_serial_only(engine: Engine) -> None:
    issued.apply_event(engine, _issued(0x1A, timedelta(0)))
    issued.apply_event(engine, _issued(0x2B, timedelta(minutes=1)))
    with read_session(engine) as session:
        snapshot = load_snapshot(session, NOW)
    assert [(c.certificate_id, c.serial, c.requester, c.request_id) for c in snapshot.certificates] == [
        (CERT, "2b", "ci-pipeline", "req-2b")]
    issued.apply_event(engine, _revoked(0x2B, timedelta(minutes=2)))
    with read_session(engine) as session:
        assert load_snapshot(session, NOW).certificates == []


# -- migration 0011 ----------------------------------------------------------------------------------


def _inventory(engine: Engine, certificate_id: str, serial: str, status: str, serials: dict[str, str]) -> None:
    """An inventory row as the auditor kept it before 0011, and its serials (serial -> status): Core
    inserts of the columns that existed then (the ORM classes have later columns too)."""
    with write_session(engine) as session:
        session.execute(insert(CertificateInventory.__table__).values(
            certificate_id=certificate_id, status=status, serial=serial, sans=json.dumps([f"dns:{certificate_id}"]),
            issuer="CN=CA", not_before=NOW, not_after=NOW + timedelta(days=90), connector="emca", profile="web",
            requester="ci-pipeline", request_id=f"req-{serial}", revoked_at=NOW if status == "revoked" else None,
            revocation_reason="superseded" if status == "revoked" else None, last_event_id="e", last_event_type="t",
            last_event_at=NOW, created_at=NOW, updated_at=NOW))
        for i, (old, old_status) in enumerate(serials.items()):
            session.execute(insert(CertificateSerial.__table__).values(
                certificate_id=certificate_id, serial=old, status=old_status, issuer="CN=CA",
                not_before=NOW - timedelta(days=90 * (len(serials) - 1 - i)), not_after=NOW + timedelta(days=90),
                request_id=f"req-{old}", issued_at=NOW - timedelta(days=90 * (len(serials) - 1 - i)),
                revoked_at=NOW if old_status == "revoked" else None))


def test_migration_0011_fills_the_projection_once_from_the_inventory(db_settings: DatabaseSettings) -> None:
    db = db_settings  # SQLite and PostgreSQL
    upgrade(db, "0010")
    engine = make_engine(db)
    try:
        for certificate_id in ("renewed", "revoked", "current-only"):
            _managed(engine, certificate_id)
        _inventory(engine, "renewed", "0b", "active", {"0a": "superseded", "0b": "active"})
        _inventory(engine, "revoked", "1a", "revoked", {"1a": "revoked"})
        _inventory(engine, "current-only", "2a", "active", {})  # a current serial the serials table lacks
        _inventory(engine, "foreign", "3a", "active", {"3a": "active"})  # never accepted by this gateway
        upgrade(db)
        assert _statuses(engine, "renewed") == {"0a": "superseded", "0b": "active"}
        assert _statuses(engine, "revoked") == {"1a": "revoked"}
        assert _statuses(engine, "current-only") == {"2a": "active"}
        assert _rows(engine, "foreign") == {}
        row = _rows(engine, "renewed")["0b"]
        assert (row["event_id"], row["issued_at"], row["profile"], row["connector"], row["request_id"]) == (
            "migration-0011", NOW, "web", "emca", "req-0b")
        assert json.loads(row["sans"]) == ["dns:renewed"] and row["not_after"] == NOW + timedelta(days=90)
        assert [_current(engine, c) for c in ("renewed", "revoked", "current-only")] == ["0b", "1a", "2a"]
        with read_session(engine) as session:  # what the scheduler renews after the upgrade
            assert [(c.certificate_id, c.serial) for c in load_snapshot(session, NOW).certificates] == [
                ("current-only", "2a"), ("renewed", "0b")]
        # the gateway's first run reads events.issuer from its start: older issuances replayed stay superseded
        with write_session(engine) as session:
            for certificate_id, old in (("renewed", "0a"), ("current-only", "1f")):
                issued.fold_issued(session, issued.Issued(
                    certificate_id, old, "CN=CA", NOW - timedelta(days=90), NOW, "web", "emca", [], f"req-{old}", None,
                    f"ev-{old}", NOW - timedelta(days=90)))
        assert _statuses(engine, "renewed") == {"0a": "superseded", "0b": "active"}
        assert _statuses(engine, "current-only") == {"1f": "superseded", "2a": "active"}

        # once: the inventory's later rows are not the gateway's concern (it folds events.issuer)
        _managed(engine, "later")
        _inventory(engine, "later", "4a", "active", {"4a": "active"})
        upgrade(db)
        assert _rows(engine, "later") == {}
    finally:
        engine.dispose()


def test_an_issuance_its_renewal_and_a_revocation_folded_in_one_transaction(engine: Engine) -> None:
    # the service folds the records in flight in one write transaction: each fold sees the ones before it
    _managed(engine, CERT)
    with write_session(engine) as session:
        issued.apply_in(session, _issued(1, timedelta(minutes=1)))
        issued.apply_in(session, _issued(2, timedelta(minutes=2)))
        issued.apply_in(session, _revoked(2, timedelta(minutes=3)))
        issued.apply_in(session, _issued(3, timedelta(minutes=4)))
    assert _statuses(engine) == {"1": "superseded", "2": "revoked", "3": "active"} and _current(engine) == "3"
