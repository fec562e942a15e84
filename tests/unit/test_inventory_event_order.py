"""The inventory folds by event time (decision 0016: order holds within a producer's
topic, not across the gateway's, the issuer's and the deployer's): the rows it builds do
not depend on how the three topics' records interleave on arrival, nor on the batches.
Against a real database (SQLite; the lifecycle also on PostgreSQL)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Table, select

from services.auditor.records import RawRecord, prepare_batch
from services.auditor.store import store_entries, store_records
from services.common import migrate
from services.common.contracts.envelope import Message, encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import (
    CertificateDeployed,
    CertificateIssued,
    CertificateRevoked,
    DeploymentFailed,
    IssuanceFailed,
    IssuancePending,
    RequestAccepted,
    RequestRejected,
    TargetRef,
)
from services.common.contracts.fields import RequestKind
from services.common.contracts.identity import issuance_id
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session
from services.common.db_schema import CertificateDeployment, CertificateInventory, CertificateSerial
from services.common.settings import DatabaseSettings
from tests.unit.examples import NOW, SERIAL, examples

TOPICS = Topics()
PRODUCERS = TOPICS.events_topics()  # gateway, issuer, deployer
EX = examples()
HEADERS = (("content-type", b"application/cloudevents+json"),)
RENEWED = "7a1b00c0ffee0002"
NGINX = TargetRef(kind="nginx", name="web-nginx")
FILE = TargetRef(kind="file", name="b")
STORED_AT = datetime(2026, 11, 28, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


@dataclass(frozen=True)
class Ev:
    topic: str
    id: str
    data: Message
    time: datetime
    partition: int = 0


def gateway(event_id: str, data: Message, seconds: float) -> Ev:
    return Ev(TOPICS.gateway_events, event_id, data, at(seconds))


def issuer(event_id: str, data: Message, seconds: float) -> Ev:
    return Ev(TOPICS.issuer_events, event_id, data, at(seconds))


def deployer(event_id: str, data: Message, seconds: float, partition: int = 0) -> Ev:
    return Ev(TOPICS.deployer_events, event_id, data, at(seconds), partition)


# -- the events of one certificate, by producer --------------------------------------------------

ISSUANCE_2 = issuance_id("web-frontend.example.com", 2)


def accepted(request_id: str = "req-1", **update: Any) -> Message:
    return EX[RequestAccepted].model_copy(update={"request_id": request_id, **update})


def renewal_accepted() -> Message:
    return accepted("req-2", requester="renewal-bot", kind=RequestKind.RENEW, issuance_id=ISSUANCE_2, profile=None)


def issued(serial: str = SERIAL, **update: Any) -> Message:
    return EX[CertificateIssued].model_copy(update={"serial": serial, **update})


def renewal_issued() -> Message:
    return issued(
        RENEWED, replaces_serial=SERIAL, request_id="req-2", issuance_id=ISSUANCE_2,
        not_before=at(61), not_after=at(61) + timedelta(days=90),
    )


def deployed(serial: str, target: TargetRef) -> Message:
    return EX[CertificateDeployed].model_copy(update={"serial": serial, "verified_serial": serial, "target": target})


def deployment_failed(serial: str, target: TargetRef) -> Message:
    return EX[DeploymentFailed].model_copy(update={"serial": serial, "target": target})


def lifecycle() -> list[Ev]:
    """Accepted, pending, issued, deployed on two targets, renewal accepted and issued,
    deployed, revoked: in event order."""
    return [
        gateway("a-1", accepted(), 0),
        issuer("p-1", EX[IssuancePending], 1),
        issuer("i-1", issued(), 2),
        deployer("d-1", deployed(SERIAL, NGINX), 3),
        deployer("d-2", deployed(SERIAL, FILE), 4),
        gateway("a-2", renewal_accepted(), 60),
        issuer("i-2", renewal_issued(), 61),
        deployer("d-3", deployed(RENEWED, NGINX), 62),
        issuer("v-1", EX[CertificateRevoked].model_copy(update={"serial": RENEWED, "revoked_at": at(120)}), 120),
    ]


# -- storing them in a given arrival order ----------------------------------------------------


#: each certificate's records go to partitions of their own (several certificates share a database)
_PARTITIONS = itertools.count(0, 2)


def records(events: Sequence[Ev], certificate_id: str) -> dict[str, RawRecord]:
    """Each event as the record it is on its producer's topic (offsets in that topic's order,
    whatever the arrival order), for ``certificate_id``: its id is ``<id>@<certificate_id>``
    (event ids are unique in the audit log; `inventory_rows` strips the suffix)."""
    offsets: dict[tuple[str, int], int] = {}
    base = next(_PARTITIONS)
    result = {}
    for ev in events:
        partition = base + ev.partition
        offset = offsets.get((ev.topic, partition), 0)
        offsets[(ev.topic, partition)] = offset + 1
        data = ev.data.model_copy(update={"certificate_id": certificate_id})
        event_id = f"{ev.id}@{certificate_id}"
        value = encode(make_event(data, id=event_id, source="/t", time=ev.time, subject=certificate_id, correlationid="req-1"))
        result[ev.id] = RawRecord(ev.topic, partition, offset, 1767225600000 + offset, 0, certificate_id.encode(), value, HEADERS)
    return result


def store(engine: Engine, events: Sequence[Ev], batches: Sequence[Sequence[str]], certificate_id: str, *,
          worker: bool = False) -> None:
    """Store ``batches`` (event ids, in arrival order); ``worker``: prepared as the worker
    process does for SQLite (times as text, folded against rows loaded as datetimes)."""
    by_id = records(events, certificate_id)
    for batch in batches:
        raws = [by_id[i] for i in batch]
        if worker:
            store_entries(engine, prepare_batch(raws, sqlite_times=True), inventory_topics=TOPICS, now=STORED_AT)
        else:
            store_records(engine, raws, inventory_topics=TOPICS, now=STORED_AT)


def inventory_rows(engine: Engine, certificate_id: str) -> dict[str, list[dict[str, Any]]]:
    """The certificate's inventory, serial and deployment rows (without the certificate id)."""
    tables: tuple[Table, ...] = (
        CertificateInventory.__table__, CertificateSerial.__table__, CertificateDeployment.__table__,  # type: ignore[assignment]
    )
    result = {}
    with read_session(engine) as session:
        for table in tables:
            query = select(table).where(table.c.certificate_id == certificate_id).order_by(*table.primary_key.columns)
            rows = [dict(r._mapping) for r in session.execute(query)]
            for row in rows:
                del row["certificate_id"]
                for name in ("last_event_id", "event_id"):
                    if name in row:
                        row[name] = row[name].removesuffix(f"@{certificate_id}")
            result[table.name] = rows
    return result


def certificate_row(engine: Engine, certificate_id: str = "c") -> dict[str, Any]:
    [row] = inventory_rows(engine, certificate_id)["certificate_inventory"]
    return row


def interleavings(events: Sequence[Ev], seeds: Sequence[int]) -> Iterator[list[list[str]]]:
    """Random merges of the producers' topics (each topic in its own order) cut into random batches."""
    for seed in seeds:
        rng = random.Random(seed)
        queues = {t: [e.id for e in events if e.topic == t] for t in PRODUCERS}
        arrival: list[str] = []
        while any(queues.values()):
            topic = rng.choice([t for t, q in queues.items() if q])
            arrival.append(queues[topic].pop(0))
        cuts = sorted(rng.sample(range(1, len(arrival)), rng.randint(0, 3)))
        yield [arrival[a:b] for a, b in zip([0, *cuts], [*cuts, len(arrival)], strict=True)]


@pytest.fixture
def engine(db_settings: DatabaseSettings) -> Iterator[Engine]:
    migrate.upgrade(db_settings)
    engine = make_engine(db_settings)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    migrate.upgrade(settings)
    engine = make_engine(settings)
    yield engine
    engine.dispose()


# -- the lifecycle in every arrival order --------------------------------------------------------


def test_a_lifecycle_folds_to_the_same_rows_in_every_arrival_order(engine: Engine) -> None:
    events = lifecycle()
    ids = [e.id for e in events]
    by_topic = [e.id for t in PRODUCERS for e in events if e.topic == t]
    orders: dict[str, list[list[str]]] = {
        "event order, one batch": [ids],
        "event order, a batch per event": [[i] for i in ids],
        "topic by topic": [[e.id for e in events if e.topic == t] for t in PRODUCERS],
        "topic by topic, all in one batch": [by_topic],
        "deployer, issuer, gateway, a batch per event": [
            [e.id] for t in reversed(PRODUCERS) for e in events if e.topic == t
        ],
    }
    for n, batches in enumerate(interleavings(events, seeds=range(6))):
        orders[f"interleaving {n}"] = batches
    # on SQLite also as the worker process prepares them: times as text, against rows loaded as datetimes
    prefixes = ("c", "w") if engine.dialect.name == "sqlite" else ("c",)
    for n, batches in enumerate(orders.values()):
        assert sorted(i for b in batches for i in b) == sorted(ids)
        for prefix in prefixes:
            store(engine, events, batches, f"{prefix}{n}", worker=prefix == "w")

    expected = inventory_rows(engine, "c0")  # event order, one batch
    assert expected["certificate_inventory"] == [{
        "status": "revoked", "serial": RENEWED, "subject": "CN=www.example.com", "sans": '["dns:www.example.com"]',
        "issuer": "CN=Issuing CA 1", "not_before": at(61), "not_after": at(61) + timedelta(days=90),
        "connector": "emca-prod", "profile": "web", "requester": "renewal-bot", "request_id": "req-2",
        "issuance_id": ISSUANCE_2, "public_key_sha256": EX[CertificateIssued].public_key_sha256,  # type: ignore[attr-defined]
        "revoked_at": at(120), "revocation_reason": "keyCompromise", "last_error_code": None,
        "last_event_id": "v-1", "last_event_type": CertificateRevoked.TYPE, "last_event_at": at(120),
        "created_at": at(0), "updated_at": at(61), "revocation_check": None, "revocation_checked_at": None,
    }]
    assert [(s["serial"], s["status"], s["issued_at"], s["request_id"]) for s in expected["certificate_serials"]] == [
        (SERIAL, "superseded", at(2), "req-1"), (RENEWED, "revoked", at(61), "req-2"),
    ]
    assert [(d["target_kind"], d["target_name"], d["status"], d["serial"], d["event_id"], d["updated_at"])
            for d in expected["certificate_deployments"]] == [
        ("file", "b", "deployed", SERIAL, "d-2", at(4)), ("nginx", "web-nginx", "deployed", RENEWED, "d-3", at(62)),
    ]
    for n, name in enumerate(orders):
        for prefix in prefixes:
            assert inventory_rows(engine, f"{prefix}{n}") == expected, (prefix, name)


# -- late arrivals across producers ---------------------------------------------------------------


def base_row(**update: Any) -> dict[str, Any]:
    """The row after the first request's issuance (accepted at 0, pending at 1, issued at 2)."""
    row = {
        "status": "active", "serial": SERIAL, "subject": "CN=www.example.com", "sans": '["dns:www.example.com"]',
        "issuer": "CN=Issuing CA 1", "not_before": NOW, "not_after": NOW + timedelta(days=90),
        "connector": "emca-prod", "profile": "web", "requester": "ci-pipeline", "request_id": "req-1",
        "issuance_id": EX[CertificateIssued].issuance_id,  # type: ignore[attr-defined]
        "public_key_sha256": EX[CertificateIssued].public_key_sha256,  # type: ignore[attr-defined]
        "revoked_at": None, "revocation_reason": None, "last_error_code": None,
        "last_event_id": "i-1", "last_event_type": CertificateIssued.TYPE, "last_event_at": at(2),
        "created_at": at(0), "updated_at": at(2), "revocation_check": None, "revocation_checked_at": None,
    }
    row.update(update)
    return row


FIRST_ISSUANCE = [gateway("a-1", accepted(), 0), issuer("p-1", EX[IssuancePending], 1), issuer("i-1", issued(), 2)]


def test_a_request_accepted_after_its_issuer_events_arrived_changes_only_the_requester(sqlite_engine: Engine) -> None:
    store(sqlite_engine, FIRST_ISSUANCE, [["p-1", "i-1"], ["a-1"]], "c")
    assert certificate_row(sqlite_engine) == base_row()


def test_a_late_issuance_does_not_clear_a_later_rejection(sqlite_engine: Engine) -> None:
    rejected = EX[RequestRejected].model_copy(update={"request_id": "req-9"})
    events = [*FIRST_ISSUANCE, gateway("r-9", rejected, 5)]
    store(sqlite_engine, events, [["a-1", "r-9"], ["p-1"], ["i-1"]], "c")
    assert certificate_row(sqlite_engine) == base_row(
        last_error_code=ErrorCode.KEY_POLICY_VIOLATION.value,
        last_event_id="r-9", last_event_type=RequestRejected.TYPE, last_event_at=at(5), updated_at=at(5),
    )


def test_deployments_that_arrive_before_the_issuance_they_refer_to(sqlite_engine: Engine) -> None:
    events = [*FIRST_ISSUANCE, deployer("d-1", deployed(SERIAL, NGINX), 3), deployer("f-1", deployment_failed(SERIAL, FILE), 4)]
    # the deployer's topic first: no inventory row yet, then the gateway's, then the issuer's
    store(sqlite_engine, events, [["d-1"], ["f-1", "a-1"], ["p-1", "i-1"]], "c")
    rows = inventory_rows(sqlite_engine, "c")
    assert rows["certificate_inventory"] == [base_row(
        last_event_id="f-1", last_event_type=DeploymentFailed.TYPE, last_event_at=at(4),
    )]
    assert rows["certificate_deployments"] == [
        {"target_kind": "file", "target_name": "b", "status": "failed", "serial": SERIAL, "verified_serial": None,
         "rolled_back": True, "error_code": ErrorCode.VERIFY_FAILED.value, "event_id": "f-1", "updated_at": at(4)},
        {"target_kind": "nginx", "target_name": "web-nginx", "status": "deployed", "serial": SERIAL,
         "verified_serial": SERIAL, "rolled_back": None, "error_code": None, "event_id": "d-1", "updated_at": at(3)},
    ]
    assert [(s["serial"], s["status"]) for s in rows["certificate_serials"]] == [(SERIAL, "active")]


def test_an_issuance_failure_arriving_after_a_later_retry_keeps_the_certificate_pending(sqlite_engine: Engine) -> None:
    retry = accepted("req-2", issuance_id=ISSUANCE_2)
    events = [gateway("a-1", accepted(), 0), issuer("f-1", EX[IssuanceFailed], 5), gateway("a-2", retry, 10)]
    store(sqlite_engine, events, [["a-1", "a-2"], ["f-1"]], "c")
    expected = {
        "status": "pending", "serial": None, "subject": None, "sans": None, "issuer": None, "not_before": None,
        "not_after": None, "connector": "emca-prod", "profile": "web", "requester": "ci-pipeline", "request_id": "req-2",
        "issuance_id": ISSUANCE_2, "public_key_sha256": None, "revoked_at": None, "revocation_reason": None,
        "last_error_code": None, "last_event_id": "a-2", "last_event_type": RequestAccepted.TYPE, "last_event_at": at(10),
        "created_at": at(0), "updated_at": at(10), "revocation_check": None, "revocation_checked_at": None,
    }
    assert certificate_row(sqlite_engine) == expected
    # in event order the retry's acceptance ends the failure the same way
    store(sqlite_engine, events, [["a-1"], ["f-1"], ["a-2"]], "e")
    assert certificate_row(sqlite_engine, "e") == expected


def test_a_renewals_acceptance_arriving_after_its_issuance(sqlite_engine: Engine) -> None:
    events = [*FIRST_ISSUANCE, gateway("a-2", renewal_accepted(), 60), issuer("i-2", renewal_issued(), 61)]
    store(sqlite_engine, events, [["a-1"], ["p-1", "i-1", "i-2"], ["a-2"]], "c")
    rows = inventory_rows(sqlite_engine, "c")
    assert rows["certificate_inventory"] == [base_row(
        serial=RENEWED, not_before=at(61), not_after=at(61) + timedelta(days=90), requester="renewal-bot",
        request_id="req-2", issuance_id=ISSUANCE_2,
        last_event_id="i-2", last_event_at=at(61), updated_at=at(61),
    )]
    assert [(s["serial"], s["status"]) for s in rows["certificate_serials"]] == [(SERIAL, "superseded"), (RENEWED, "active")]


def test_an_older_deployment_outcome_arriving_late_does_not_overwrite_a_newer_one(sqlite_engine: Engine) -> None:
    # the older outcome on another partition of the deployer's topic (its order holds per partition only)
    events = [*FIRST_ISSUANCE, deployer("f-1", deployment_failed(SERIAL, NGINX), 3, partition=1),
              deployer("d-1", deployed(SERIAL, NGINX), 9)]
    store(sqlite_engine, events, [["a-1", "p-1", "i-1"], ["d-1"], ["f-1"]], "c")
    rows = inventory_rows(sqlite_engine, "c")
    assert rows["certificate_deployments"] == [
        {"target_kind": "nginx", "target_name": "web-nginx", "status": "deployed", "serial": SERIAL,
         "verified_serial": SERIAL, "rolled_back": None, "error_code": None, "event_id": "d-1", "updated_at": at(9)},
    ]
    assert rows["certificate_inventory"] == [base_row(
        last_event_id="d-1", last_event_type=CertificateDeployed.TYPE, last_event_at=at(9),
    )]


def test_events_of_one_time_are_ordered_by_their_ids(sqlite_engine: Engine) -> None:
    events = [*FIRST_ISSUANCE, gateway("x-2", EX[RequestRejected].model_copy(update={"request_id": "req-9"}), 2)]
    store(sqlite_engine, events, [["a-1", "x-2"], ["p-1", "i-1"]], "c")  # the issuer's last, its issuance ties
    store(sqlite_engine, events, [["a-1", "p-1", "i-1", "x-2"]], "e")
    assert certificate_row(sqlite_engine, "c") == certificate_row(sqlite_engine, "e") == base_row(
        last_error_code=ErrorCode.KEY_POLICY_VIOLATION.value, last_event_id="x-2", last_event_type=RequestRejected.TYPE,
    )


def test_the_current_requests_failure_arriving_after_a_newer_rejection_still_fails_it(sqlite_engine: Engine) -> None:
    rejected = EX[RequestRejected].model_copy(update={"request_id": "req-9"})
    events = [gateway("a-1", accepted(), 0), issuer("f-1", EX[IssuanceFailed], 5), gateway("r-9", rejected, 10)]
    store(sqlite_engine, events, [["a-1", "r-9"], ["f-1"]], "c")
    store(sqlite_engine, events, [["a-1"], ["f-1"], ["r-9"]], "e")
    expected = {
        "status": "failed", "serial": None, "subject": None, "sans": None, "issuer": None, "not_before": None,
        "not_after": None, "connector": "emca-prod", "profile": "web", "requester": "ci-pipeline", "request_id": "req-1",
        "issuance_id": EX[RequestAccepted].issuance_id,  # type: ignore[attr-defined]
        "public_key_sha256": None, "revoked_at": None, "revocation_reason": None,
        "last_error_code": ErrorCode.KEY_POLICY_VIOLATION.value, "last_event_id": "r-9",
        "last_event_type": RequestRejected.TYPE, "last_event_at": at(10), "created_at": at(0), "updated_at": at(10),
        "revocation_check": None, "revocation_checked_at": None,
    }
    assert certificate_row(sqlite_engine, "c") == certificate_row(sqlite_engine, "e") == expected
