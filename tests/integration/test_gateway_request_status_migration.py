"""Migration 0012 fills the gateway's request status (gateway_request_status) once from the audit log,
by the fold's rules, on SQLite and PostgreSQL: an upgraded installation answers the status of its
past requests as before (the same result keys), and the gateway's later folds of the same events
are redeliveries. The audit log is written by the auditor's real store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from services.auditor.records import RawRecord
from services.auditor.store import store_records
from services.common.consumer import Outbound
from services.common.contracts.envelope import Envelope
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import GatewayRequestStatus
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway import request_status, store
from services.gateway.request_status import Fold
from tests.gateway_fixtures import NOW
from tests.request_status_support import audit_log_result, failed, issued, pending

TOPICS = Topics("certrail")


def _request(engine: Engine, request_id: str, certificate_id: str = "www", status: str = "accepted") -> None:
    with write_session(engine) as session:
        store.add_request(session, store.StoredAnswer(request_id, "0" * 64, "ci-pipeline", "issue", certificate_id, status,
                                                      {"request_id": request_id}, [], NOW))


def _renamed(event: Envelope, request_id: str, event_id: str) -> Envelope:
    """The same outcome for another request id (and a new event id)."""
    return event.model_copy(update={"id": event_id, "correlationid": request_id,
                                    "data": event.data.model_copy(update={"request_id": request_id})})


class AuditLog:
    """The auditor's store, fed record by record (offsets counted per topic). Only the audit log: migration
    0012 reads ``audit_records``, and today's inventory fold writes columns that revision 0011 lacks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.offsets: dict[str, int] = {}

    def store(self, *events: Envelope, topic: str = TOPICS.issuer_events) -> None:
        records = []
        for event in events:
            offset = self.offsets.get(topic, 0)
            self.offsets[topic] = offset + 1
            value = Outbound(topic, event, key=event.subject).value()
            records.append(RawRecord(topic, 0, offset, int(NOW.timestamp() * 1000), 0, (event.subject or "").encode(),
                                     value, ()))
        store_records(self.engine, records, inventory_topics=None, now=datetime.now(UTC))


def _statuses(engine: Engine) -> dict[str, tuple[str, str]]:
    with read_session(engine) as session:
        return {row.request_id: (row.state, row.event_id) for row in session.scalars(select(GatewayRequestStatus))}


def _result(engine: Engine, request_id: str) -> dict[str, Any] | None:
    with read_session(engine) as session:
        found = request_status.status_of(session, request_id)
    return None if found is None else found[1]


def test_migration_0012_fills_the_request_status_once_from_the_audit_log(db_settings: DatabaseSettings) -> None:
    db = db_settings  # SQLite and PostgreSQL
    upgrade(db, "0011")
    engine = make_engine(db)
    try:
        for request_id in ("req-1", "req-2", "req-3", "legacy-1", "elsewhere-1"):
            _request(engine, request_id)
        _request(engine, "rejected-1", status="rejected")
        _request(engine, "other-1", certificate_id="other.example.com")
        log = AuditLog(engine)
        the_issuance = issued(timedelta(minutes=5))
        log.store(pending(), the_issuance, the_issuance)  # redelivered: stored twice
        log.store(_renamed(failed(timedelta(minutes=3)), "req-2", "f-2"),  # the later terminal outcome wins,
                  _renamed(issued(timedelta(minutes=1)), "req-2", "i-2"))  # not the one stored last
        log.store(_renamed(pending(), "req-3", "p-3"))
        log.store(_renamed(failed(), "legacy-1", "f-legacy"), topic=TOPICS.legacy_events)  # before decision 0016
        log.store(_renamed(failed(), "elsewhere-1", "f-elsewhere"), topic=TOPICS.deployer_events)  # not the issuer's
        log.store(_renamed(failed(), "rejected-1", "f-rejected"), _renamed(failed(), "nobody-1", "f-nobody"),
                  _renamed(failed(), "other-1", "f-other"))  # never accepted, unknown, another certificate's

        upgrade(db)
        assert _statuses(engine) == {"req-1": ("issued", "ev-issued"), "req-2": ("failed", "f-2"),
                                     "req-3": ("pending_approval", "p-3"), "legacy-1": ("failed", "f-legacy")}
        assert _result(engine, "req-1") == audit_log_result(the_issuance)  # what the API answered before
        assert _result(engine, "req-3") == audit_log_result(pending())
        with read_session(engine) as session:
            row = session.get(GatewayRequestStatus, "req-1")
            assert row is not None and (row.event_type, row.event_time) == (the_issuance.type, NOW + timedelta(minutes=5))

        # the gateway folds the same events again (a replay): nothing changes
        assert request_status.apply_event(engine, the_issuance) is Fold.REDELIVERED
        assert request_status.apply_event(engine, pending()) is Fold.KEPT
        assert request_status.apply_event(engine, _renamed(issued(timedelta(minutes=1)), "req-2", "i-2")) is Fold.KEPT
        assert _statuses(engine)["req-2"] == ("failed", "f-2")

        # once: what the auditor stores later is not copied (the gateway folds events.issuer itself)
        _request(engine, "later-1")
        log.store(_renamed(failed(), "later-1", "f-later"))
        upgrade(db)
        with read_session(engine) as session:
            assert session.scalar(select(func.count()).select_from(GatewayRequestStatus)) == 4
    finally:
        engine.dispose()
