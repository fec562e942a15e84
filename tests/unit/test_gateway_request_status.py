"""The gateway's own projection of its requests' outcomes (services/gateway/request_status.py,
decision 0017): the issuer's outcome events folded into gateway_request_status with the ranking
the API had over the audit log (terminal over pending, then the latest), redelivery harmless,
outcomes of requests the gateway did not accept (or about another certificate) ignored; the
result keeps the keys the API answered from the audit log."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from services.common.contracts.envelope import make_event
from services.common.contracts.events import CertificateIssued, IssuanceFailed, RequestAccepted
from services.common.contracts.fields import RequestKind
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import GatewayRequestStatus
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway import request_status, store
from services.gateway.request_status import Fold
from tests.gateway_fixtures import NOW
from tests.request_status_support import (
    CA,
    CERT,
    ISSUANCE,
    audit_log_result,
    failed,
    issued,
    pending,
    revocation_failed,
    revoked,
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'gw.db'}")
    upgrade(db)
    engine = make_engine(db)
    _request(engine, "req-1")
    yield engine
    engine.dispose()


def _request(engine: Engine, request_id: str, certificate_id: str | None = CERT, status: str = "accepted") -> None:
    with write_session(engine) as session:
        store.add_request(session, store.StoredAnswer(request_id, "0" * 64, "ci-pipeline", "issue", certificate_id, status,
                                                      {"request_id": request_id, "status": status}, [], NOW))


def _status(engine: Engine, request_id: str = "req-1") -> tuple[str, dict[str, Any]] | None:
    with read_session(engine) as session:
        return request_status.status_of(session, request_id)


def _row(engine: Engine, request_id: str = "req-1") -> tuple[str, str, datetime] | None:
    with read_session(engine) as session:
        row = session.get(GatewayRequestStatus, request_id)
        return None if row is None else (row.state, row.event_id, row.event_time)


def _rows(engine: Engine) -> int:
    with read_session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(GatewayRequestStatus)) or 0)


# -- the ranking ------------------------------------------------------------------------------------

T0, T1 = NOW, NOW + timedelta(seconds=1)


@pytest.mark.parametrize(("new", "old", "expected"), [
    pytest.param(("issued", T0), ("pending_approval", T1), True, id="terminal-over-a-later-pending"),
    pytest.param(("failed", T0), ("pending_approval", T0), True, id="terminal-over-pending-same-time"),
    pytest.param(("pending_approval", T1), ("issued", T0), False, id="pending-never-over-terminal"),
    pytest.param(("pending_approval", T1), ("pending_approval", T0), True, id="the-later-pending"),
    pytest.param(("issued", T1), ("failed", T0), True, id="the-later-terminal"),
    pytest.param(("failed", T0), ("issued", T1), False, id="an-older-terminal-arriving-late"),
    pytest.param(("revoked", T0), ("failed", T0), False, id="a-tie-keeps-the-recorded-one"),
])
def test_outranks(new: tuple[str, datetime], old: tuple[str, datetime], expected: bool) -> None:
    assert request_status.outranks(*new, *old) is expected


# -- the fold ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [pending, issued, failed, revoked, revocation_failed],
                         ids=["pending", "issued", "failed", "revoked", "revocation-failed"])
def test_the_result_is_what_the_api_answered_from_the_audit_log(engine: Engine, make: Any) -> None:
    event = make()
    assert request_status.apply_event(engine, event) is Fold.FOLDED
    state, result = _status(engine)  # type: ignore[misc]
    assert state == request_status.Outcome.of(event).state
    assert result == audit_log_result(event)
    assert json.dumps(result) == json.dumps(audit_log_result(event))  # the same keys, in the same order


def test_pending_then_issued_and_every_record_redelivered(engine: Engine) -> None:
    assert _status(engine) is None  # queued: nothing folded yet
    assert request_status.apply_event(engine, pending()) is Fold.FOLDED
    assert _status(engine) == ("pending_approval", {"ca_request_id": "CA-77", "issuance_id": ISSUANCE})
    assert request_status.apply_event(engine, issued()) is Fold.FOLDED
    state, result = _status(engine)  # type: ignore[misc]
    assert (state, result["serial"], result["chain"]) == ("issued", "1a", list(CA.chain))
    assert _row(engine) == ("issued", "ev-issued", NOW + timedelta(minutes=5))
    before = _status(engine)
    assert request_status.apply_event(engine, issued()) is Fold.REDELIVERED
    assert request_status.apply_event(engine, pending()) is Fold.KEPT  # redelivered after the issuance
    assert request_status.apply_event(engine, pending(timedelta(hours=1), event_id="ev-pending-2")) is Fold.KEPT
    assert _status(engine) == before and _row(engine) == ("issued", "ev-issued", NOW + timedelta(minutes=5))
    assert _rows(engine) == 1


def test_among_terminal_outcomes_the_latest_wins(engine: Engine) -> None:
    request_status.apply_event(engine, issued(timedelta(minutes=5)))
    assert request_status.apply_event(engine, failed(timedelta(minutes=3))) is Fold.KEPT  # older, arriving late
    assert _row(engine) == ("issued", "ev-issued", NOW + timedelta(minutes=5))
    assert request_status.apply_event(engine, failed(timedelta(minutes=7), event_id="ev-failed-2")) is Fold.FOLDED
    assert _status(engine) == ("failed", {"error": {"code": "CA_REJECTED", "message": "emCA refused the CSR"},
                                          "issuance_id": ISSUANCE})
    assert request_status.apply_event(engine, issued(timedelta(minutes=5))) is Fold.KEPT  # a replay changes nothing
    assert _row(engine) == ("failed", "ev-failed-2", NOW + timedelta(minutes=7))


def test_outcomes_of_one_request_in_one_transaction(engine: Engine) -> None:
    """The service folds the records in flight in one transaction (SessionWriter): a later fold of the
    same request sees the earlier one."""
    with write_session(engine) as session:
        folds = [request_status.apply_in(session, event) for event in (pending(), issued(), pending(), issued())]
    assert folds == [Fold.FOLDED, Fold.FOLDED, Fold.KEPT, Fold.REDELIVERED]
    assert _row(engine) == ("issued", "ev-issued", NOW + timedelta(minutes=5))


def test_outcomes_the_gateway_did_not_accept_change_nothing(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    _request(engine, "rejected-1", status="rejected")
    _request(engine, "other-1", certificate_id="other.example.com")
    with caplog.at_level(logging.WARNING, logger="services.gateway.request_status"):
        assert request_status.apply_event(engine, failed(request_id="nobody-1")) is Fold.UNKNOWN_REQUEST
        assert request_status.apply_event(engine, failed(request_id="rejected-1")) is Fold.NOT_ACCEPTED
        assert request_status.apply_event(engine, failed(request_id="other-1")) is Fold.CERTIFICATE_MISMATCH
        assert request_status.apply_event(engine, issued(certificate_id="forged.example.com")) is Fold.CERTIFICATE_MISMATCH
    assert _rows(engine) == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"{IssuanceFailed.TYPE} ev-failed ignored (unknown_request): request id 'nobody-1', certificate id 'www'",
        f"{IssuanceFailed.TYPE} ev-failed ignored (not_accepted): request id 'rejected-1', certificate id 'www'",
        f"{IssuanceFailed.TYPE} ev-failed ignored (certificate_mismatch): request id 'other-1', certificate id 'www'",
        f"{CertificateIssued.TYPE} ev-issued ignored (certificate_mismatch): request id 'req-1', "
        "certificate id 'forged.example.com'"]
    # a forgery about another certificate does not displace the real outcome either
    request_status.apply_event(engine, pending())
    request_status.apply_event(engine, failed(timedelta(hours=1), certificate_id="forged.example.com", event_id="ev-x"))
    assert _row(engine) == ("pending_approval", "ev-pending", NOW)


def test_an_event_that_is_no_outcome_is_refused(engine: Engine) -> None:
    accepted = make_event(RequestAccepted(request_id="req-1", requester="ci-pipeline", kind=RequestKind.ISSUE, certificate_id=CERT),
                          id="ev-acc", source="/certrail/gateway", time=NOW, subject=CERT)
    with pytest.raises(TypeError, match="folds no io.certrail.request.accepted.v1"):
        request_status.apply_event(engine, accepted)
