"""The audit store on SQLite and PostgreSQL (db_settings), without Kafka:
one row per offset, linked duplicates, chains that concurrent writers cannot
fork, the inventory read model, the timeline, the export, and what the
database-only half of verify finds."""

from __future__ import annotations

import csv
import io
import json
import pickle
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, delete, func, select, update

from services.auditor.chain import GENESIS, content_hash, row_hash
from services.auditor.export import exported_rows, write_csv, write_jsonl
from services.auditor.inventory_read import get_certificate
from services.auditor.records import RawRecord, prepare_batch
from services.auditor.store import store_entries, store_records
from services.auditor.trail import trail
from services.auditor.verify_store import ProblemKind, scan_store, stored_content
from services.common import migrate
from services.common.contracts.envelope import Message, encode, make_event
from services.common.contracts.events import (
    CertificateDeployed,
    CertificateIssued,
    CertificateRevoked,
    IssuanceFailed,
    IssuancePending,
    RequestAccepted,
    TargetRef,
)
from services.common.contracts.fields import RevocationReason
from services.common.contracts.requests import IssueRequested
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import AuditChainHead, AuditRecord, CertificateInventory
from services.common.settings import DatabaseSettings
from tests.unit.examples import CERT_ID, NOW, SERIAL, examples, private_key_pem

pytestmark = pytest.mark.integration

TOPICS = Topics()
#: most cases here run on the single events topic of installations before decision 0016, whose
#: history the inventory still folds; test_the_inventory_folds_an_event_only_from_its_producers_topic
#: covers the producers' topics
EVENTS = TOPICS.legacy_events
REQUESTS = "certrail.requests"
EX = examples()
HEADERS = (("content-type", b"application/cloudevents+json"),)


@pytest.fixture
def engine(db_settings: DatabaseSettings) -> Iterator[Engine]:
    migrate.upgrade(db_settings)
    engine = make_engine(db_settings)
    yield engine
    engine.dispose()


def value(data: Message, event_id: str, *, at: datetime = NOW, subject: str = CERT_ID, request: str = "req-1") -> bytes:
    return encode(make_event(data, id=event_id, source="/t", time=at, subject=subject, correlationid=request))


def raw(offset: int, payload: bytes | None, *, topic: str = EVENTS, partition: int = 0, ts: int | None = None) -> RawRecord:
    return RawRecord(
        topic, partition, offset, ts if ts is not None else 1767225600000 + offset, 0, CERT_ID.encode(), payload, HEADERS
    )


def store(engine: Engine, records: list[RawRecord]):  # type: ignore[no-untyped-def]
    return store_records(engine, records, inventory_topics=TOPICS, now=datetime.now(UTC))


def rows(engine: Engine, topic: str = EVENTS) -> list[AuditRecord]:
    with read_session(engine) as session:
        found = session.scalars(
            select(AuditRecord).where(AuditRecord.topic == topic).order_by(AuditRecord.partition, AuditRecord.offset)
        ).all()
        for row in found:
            session.expunge(row)
    return list(found)


def problems(engine: Engine) -> list[tuple[ProblemKind, int | None]]:
    with read_session(engine) as session:
        scan = scan_store(session, {})
    return [(p.kind, p.offset) for p in scan.problems]


def deployed(event_id: str) -> bytes:
    return value(EX[CertificateDeployed], event_id)


def test_redelivery_keeps_one_row_per_offset_and_links_repeated_event_ids(engine: Engine) -> None:
    first = store(engine, [raw(0, deployed("e-0")), raw(1, deployed("e-1"))])
    assert first.stored == 2 and first.redelivered == 0
    again = store(engine, [raw(0, deployed("e-0")), raw(1, deployed("e-1")), raw(2, deployed("e-1"))])
    assert again.stored == 1 and again.redelivered == 2 and sum(again.duplicates.values()) == 1
    stored = rows(engine)
    assert [r.offset for r in stored] == [0, 1, 2]
    assert (stored[2].first_topic, stored[2].first_partition, stored[2].first_offset) == (EVENTS, 0, 1)
    assert stored[1].first_offset is None
    # a duplicate in the same batch, and one in another partition, link to the first too
    store(engine, [raw(3, deployed("e-9")), raw(4, deployed("e-9")), raw(0, deployed("e-9"), partition=1)])
    linked = {(r.partition, r.offset): r.first_offset for r in rows(engine)}
    assert linked[(0, 4)] == 3 and linked[(1, 0)] == 3
    assert problems(engine) == []


def test_the_chain_links_every_row_of_a_partition(engine: Engine) -> None:
    store(engine, [raw(o, deployed(f"e-{o}")) for o in range(5)])
    store(engine, [raw(o, deployed(f"e-{o}")) for o in range(3, 8)])  # overlapping redelivery
    stored = rows(engine)
    assert [r.offset for r in stored] == list(range(8))
    previous_hash, previous_offset = GENESIS, None
    for row in stored:
        assert (row.prev_hash, row.prev_offset) == (previous_hash, previous_offset)
        assert row.row_hash == row_hash(previous_hash, previous_offset, content_hash(stored_content(row)))
        previous_hash, previous_offset = row.row_hash, row.offset
    with read_session(engine) as session:
        head = session.get(AuditChainHead, (EVENTS, 0))
        assert head is not None and (head.offset, head.row_hash, head.records) == (7, previous_hash, 8)


def test_offsets_kafka_skipped_are_recorded_as_gaps(engine: Engine) -> None:
    result = store(engine, [raw(0, deployed("a")), raw(1, deployed("b")), raw(5, deployed("c"))])
    assert [(g.first_missing, g.last_missing) for g in result.gaps] == [(2, 4)]
    assert rows(engine)[2].prev_offset == 1  # the chain links across what Kafka did not deliver
    assert problems(engine) == []


def test_concurrent_writers_of_one_partition_never_fork_its_chain(engine: Engine) -> None:
    # Two instances overlapping during a rebalance: both read the partition from the
    # same committed offset and write the same (overlapping) batches at once.
    batches = [[raw(o, deployed(f"e-{o}")) for o in range(start, start + 50)] for start in range(0, 300, 25)]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer() -> None:
        try:
            start.wait()
            for batch in batches:
                store(engine, batch)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [r.offset for r in rows(engine)] == list(range(325))  # each offset once, none missing
    assert problems(engine) == []


def test_undecodable_records_are_stored_raw_with_their_error(engine: Engine) -> None:
    result = store(engine, [raw(0, b"\xffpoison"), raw(1, None), raw(2, b'{"specversion":"1.0"}')])
    assert result.stored == 3 and dict(result.invalid_by_code) == {
        (EVENTS, "UNDECODABLE"): 2,
        (EVENTS, "NOT_CLOUDEVENT"): 1,
    }
    stored = rows(engine)
    assert [r.decode_error for r in stored] == ["UNDECODABLE", "UNDECODABLE", "NOT_CLOUDEVENT"]
    assert stored[0].value == b"\xffpoison" and stored[1].value is None
    assert problems(engine) == []


def _lifecycle(engine: Engine) -> None:
    later = NOW + timedelta(minutes=5)
    issued = EX[CertificateIssued]
    store(engine, [raw(0, value(EX[IssueRequested], "r-1"), topic=REQUESTS, ts=1767225600000)])
    store(
        engine,
        [
            raw(0, value(EX[RequestAccepted], "a-1"), ts=1767225600001),
            raw(1, value(EX[IssuancePending], "p-1"), ts=1767225600002),
            raw(2, value(issued, "i-1"), ts=1767225600003),
            raw(3, value(EX[CertificateDeployed], "d-1"), ts=1767225600004),
            raw(4, value(EX[CertificateDeployed], "d-1"), ts=1767225600005),  # redelivered at a new offset
            raw(
                5,
                value(issued.model_copy(update={"serial": "abc1", "replaces_serial": SERIAL}), "i-2", at=later),
                ts=1767225600006,
            ),
            raw(6, value(EX[CertificateRevoked].model_copy(update={"serial": "abc1"}), "v-1", at=later), ts=1767225600007),
        ],
    )


def test_inventory_follows_issue_deploy_renew_revoke(engine: Engine) -> None:
    _lifecycle(engine)
    now = NOW + timedelta(days=1)
    with read_session(engine) as session:
        view = get_certificate(session, CERT_ID, now)
    assert view is not None
    assert (view.status, view.serial, view.past_serials) == ("revoked", "abc1", (SERIAL,))
    assert view.sans == ("dns:www.example.com",) and view.issuer == "CN=Issuing CA 1"
    assert (view.connector, view.profile, view.requester) == ("emca-prod", "web", "ci-pipeline")
    assert view.deployments == (("nginx", "web-nginx", "deployed", SERIAL),)
    assert view.last_event_type == CertificateRevoked.TYPE


def test_inventory_statuses(engine: Engine) -> None:
    store(engine, [raw(0, value(EX[IssuanceFailed], "f-1"))])
    with read_session(engine) as session:
        assert get_certificate(session, CERT_ID, NOW).status == "failed"  # type: ignore[union-attr]
    store(engine, [raw(1, value(EX[IssuancePending], "p-1"))])
    with read_session(engine) as session:
        assert get_certificate(session, CERT_ID, NOW).status == "pending"  # type: ignore[union-attr]
    store(engine, [raw(2, value(EX[CertificateIssued], "i-1"))])
    with read_session(engine) as session:
        assert get_certificate(session, CERT_ID, NOW).status == "active"  # type: ignore[union-attr]
        assert get_certificate(session, CERT_ID, NOW + timedelta(days=91)).status == "expired"  # type: ignore[union-attr]
    revoked_other = EX[CertificateRevoked].model_copy(update={"serial": "ffff", "reason": RevocationReason.SUPERSEDED})
    store(engine, [raw(3, value(revoked_other, "v-1"))])  # revoking an old serial keeps the current one active
    with read_session(engine) as session:
        assert get_certificate(session, CERT_ID, NOW).status == "active"  # type: ignore[union-attr]


def test_the_inventory_folds_an_event_only_from_its_producers_topic(engine: Engine) -> None:
    issued = raw(0, value(EX[CertificateIssued], "i-1"), topic=TOPICS.issuer_events)
    result = store(engine, [issued])
    assert result.inventory_events == 1 and not result.misrouted
    with read_session(engine) as session:
        assert get_certificate(session, CERT_ID, NOW).status == "active"  # type: ignore[union-attr]
    # a revocation on the deployer's topic (a stolen deployer credential) and one on the gateway's
    forged = [raw(0, value(EX[CertificateRevoked], "v-forged"), topic=TOPICS.deployer_events),
              raw(0, value(EX[CertificateRevoked], "v-forged-2"), topic=TOPICS.gateway_events)]
    result = store(engine, forged)
    assert result.stored == 2 and result.inventory_events == 0  # stored as every record, never folded
    assert result.misrouted == {(TOPICS.deployer_events, CertificateRevoked.TYPE): 1,
                                (TOPICS.gateway_events, CertificateRevoked.TYPE): 1}
    with read_session(engine) as session:
        view = get_certificate(session, CERT_ID, NOW)
        assert view is not None and view.status == "active" and view.last_event_type == CertificateIssued.TYPE
    result = store(engine, [raw(1, value(EX[CertificateRevoked], "v-1"), topic=TOPICS.issuer_events)])
    assert result.inventory_events == 1
    with read_session(engine) as session:
        assert get_certificate(session, CERT_ID, NOW).status == "revoked"  # type: ignore[union-attr]


def test_a_duplicate_event_does_not_change_the_inventory_twice(engine: Engine) -> None:
    store(engine, [raw(0, value(EX[CertificateIssued], "i-1"))])
    deployment = EX[CertificateDeployed].model_copy(update={"target": TargetRef(name="b", kind="file")})
    later = NOW + timedelta(seconds=1)  # the inventory's last event is the newest by event time (then id)
    store(engine, [raw(1, value(deployment, "d-1", at=later)), raw(2, value(deployment, "d-1", at=later))])
    with read_session(engine) as session:
        row = session.get(CertificateInventory, CERT_ID)
        assert row is not None and row.last_event_id == "d-1"
        assert session.scalar(select(func.count()).select_from(AuditRecord)) == 3


def test_trail_shows_issue_then_deploy_then_revoke(engine: Engine) -> None:
    _lifecycle(engine)
    with read_session(engine) as session:
        by_certificate = trail(session, CERT_ID)
        by_serial = trail(session, "AB:C1")  # any spelling of the serial
        by_request = trail(session, "req-1")
    types = [e.event_type for e in by_certificate.entries]
    assert types == [
        IssueRequested.TYPE,
        RequestAccepted.TYPE,
        IssuancePending.TYPE,
        CertificateIssued.TYPE,
        CertificateDeployed.TYPE,
        CertificateDeployed.TYPE,
        CertificateIssued.TYPE,
        CertificateRevoked.TYPE,
    ]
    assert by_certificate.entries[5].duplicate_of == f"{EVENTS}/0@3"
    assert "serial=abc1" in by_certificate.entries[-1].summary
    assert [e.row_id for e in by_serial.entries] == [e.row_id for e in by_certificate.entries]
    assert by_serial.certificate_ids == (CERT_ID,)
    assert {e.event_type for e in by_request.entries} >= {IssueRequested.TYPE, RequestAccepted.TYPE}
    with read_session(engine) as session:
        assert trail(session, "nothing-like-this").entries == ()


def test_export_jsonl_and_csv_never_contain_a_private_key(engine: Engine) -> None:
    _lifecycle(engine)
    store(engine, [raw(7, json.dumps({"leak": private_key_pem()}).encode())])
    with read_session(engine) as session:
        out = io.StringIO()
        assert write_jsonl(exported_rows(session), out) == 9
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        csv_out = io.StringIO()
        since = datetime(2026, 1, 1, 0, 0, 0, 3500, tzinfo=UTC)  # between offsets 2 (...003 ms) and 3 (...004 ms)
        assert write_csv(exported_rows(session, topics=[EVENTS], since=since), csv_out) == 5
    assert "PRIVATE KEY-----" not in out.getvalue() + csv_out.getvalue()
    assert private_key_pem().splitlines()[1] not in out.getvalue() + csv_out.getvalue()
    leaked = lines[-1] if lines[-1]["offset"] == 7 else next(x for x in lines if x["offset"] == 7 and x["topic"] == EVENTS)
    assert leaked["private_keys_removed"] == 1 and leaked["decode_error"] == "PRIVATE_KEY_SUBMITTED"
    assert json.loads(lines[0]["value"])["id"] == lines[0]["event_id"]  # the value as text, byte for byte
    parsed = list(csv.DictReader(io.StringIO(csv_out.getvalue())))
    assert [int(r["offset"]) for r in parsed] == [3, 4, 5, 6, 7]


def test_the_database_half_of_verify_names_modified_and_missing_rows(engine: Engine) -> None:
    store(engine, [raw(o, deployed(f"e-{o}")) for o in range(6)])
    assert problems(engine) == []
    with write_session(engine) as session:
        session.execute(update(AuditRecord).where(AuditRecord.offset == 2).values(value=b'{"forged":true}'))
        session.execute(update(AuditRecord).where(AuditRecord.offset == 3).values(event_type="io.certrail.other.v1"))
        session.execute(delete(AuditRecord).where(AuditRecord.offset == 4))
    found = problems(engine)
    assert (ProblemKind.MODIFIED, 2) in found
    assert (ProblemKind.DERIVED_MISMATCH, 3) in found
    assert (ProblemKind.GAP, 5) in found  # the row after the deleted one links to offset 4
    with write_session(engine) as session:
        session.execute(delete(AuditRecord).where(AuditRecord.offset == 5))
    assert (ProblemKind.HEAD_MISMATCH, 5) in problems(engine)  # the chain head still says 5


def test_a_recomputed_chain_passes_the_database_checks_alone(engine: Engine) -> None:
    # Why checkpoints exist: whoever can write the database can rewrite a chain consistently.
    store(engine, [raw(o, deployed(f"e-{o}")) for o in range(4)])
    with write_session(engine) as session:
        session.execute(update(AuditRecord).where(AuditRecord.offset == 1).values(key=b"forged"))
        recompute_chain(session, EVENTS, 0)
    assert problems(engine) == []


def recompute_chain(session, topic: str, partition: int) -> None:  # type: ignore[no-untyped-def]
    """What an attacker with write access does after changing rows: recompute every hash and the head."""
    previous_hash, previous_offset = GENESIS, None
    for row in session.scalars(
        select(AuditRecord).where(AuditRecord.topic == topic, AuditRecord.partition == partition).order_by(AuditRecord.offset)
    ):
        row.prev_hash, row.prev_offset = previous_hash, previous_offset
        row.row_hash = row_hash(previous_hash, previous_offset, content_hash(stored_content(row)))
        previous_hash, previous_offset = row.row_hash, row.offset
    head = session.get(AuditChainHead, (topic, partition))
    head.offset, head.row_hash = previous_offset, previous_hash
    session.flush()


def test_an_export_is_enough_to_recompute_the_chain(engine: Engine) -> None:
    # the recomputation docs/audit.md shows, run on an export
    import base64
    import hashlib
    import struct

    def field(b: bytes | None) -> bytes:
        return b"\x00" if b is None else b"\x01" + struct.pack(">q", len(b)) + b

    def num(n: int | None) -> bytes:
        return b"\x00" if n is None else b"\x01" + struct.pack(">q", n)

    def raw_bytes(text: str | None, encoding: str | None) -> bytes | None:
        return None if text is None else (text.encode() if encoding == "utf-8" else base64.b64decode(text))

    store(
        engine,
        [raw(0, deployed("e-0")), raw(1, b"\xff\x00binary"), raw(2, None), raw(3, json.dumps({"k": private_key_pem()}).encode())],
    )
    with read_session(engine) as session:
        out = io.StringIO()
        write_jsonl(exported_rows(session, topics=[EVENTS]), out)
    prev = bytes(32)
    for line in out.getvalue().splitlines():
        r = json.loads(line)
        content = field(b"certrail.audit.chain.v1") + field(r["topic"].encode()) + num(r["partition"]) + num(r["offset"])
        content += num(r["timestamp_ms"]) + num(r["timestamp_type"]) + field(raw_bytes(r["key"], r["key_encoding"]))
        content += field(raw_bytes(r["value"], r["value_encoding"])) + num(len(r["headers"]))
        for h in r["headers"]:
            content += field(h["name"].encode()) + field(raw_bytes(h["value"], h["encoding"]))
        content += num(r["private_keys_removed"]) + field(r["original_sha256"] and r["original_sha256"].encode())
        content += num(r["original_size"])
        row_hash_hex = hashlib.sha256(prev + num(r["prev_offset"]) + hashlib.sha256(content).digest()).hexdigest()
        assert row_hash_hex == r["row_hash"], r["offset"]
        prev = bytes.fromhex(row_hash_hex)


def test_listing_the_inventory_for_renewals(engine: Engine) -> None:
    issued = EX[CertificateIssued]
    soon = issued.model_copy(update={"certificate_id": "soon.example.com", "serial": "a1", "not_after": NOW + timedelta(days=5)})
    later = issued.model_copy(update={"certificate_id": "later.example.com", "serial": "a2"})
    store(
        engine,
        [
            raw(0, value(soon, "s-1", subject="soon.example.com")),
            raw(1, value(later, "l-1", subject="later.example.com")),
            raw(
                2,
                value(
                    EX[IssuanceFailed].model_copy(update={"certificate_id": "never.example.com"}),
                    "f-1",
                    subject="never.example.com",
                ),
            ),
        ],
    )
    from services.auditor.inventory_read import list_certificates

    with read_session(engine) as session:
        assert [v.certificate_id for v in list_certificates(session, NOW)] == [
            "soon.example.com",
            "later.example.com",
            "never.example.com",
        ]
        expiring = list_certificates(session, NOW, not_after_before=NOW + timedelta(days=30))
        assert [v.certificate_id for v in expiring] == ["soon.example.com"]
        assert [v.certificate_id for v in list_certificates(session, NOW + timedelta(days=6), status="expired")] == [
            "soon.example.com"
        ]
        assert [v.certificate_id for v in list_certificates(session, NOW, status="failed")] == ["never.example.com"]


def _lifecycle_records() -> list[RawRecord]:
    later = NOW + timedelta(minutes=5, microseconds=123_456)
    issued = EX[CertificateIssued]
    return [
        raw(0, value(EX[RequestAccepted], "a-1", at=NOW + timedelta(microseconds=1))),
        raw(1, value(EX[IssuancePending], "p-1", at=NOW + timedelta(seconds=1, microseconds=999_999))),
        raw(2, value(issued, "i-1", at=NOW + timedelta(seconds=2))),
        raw(3, value(EX[CertificateDeployed], "d-1", at=NOW + timedelta(seconds=3))),
        raw(4, value(EX[CertificateDeployed], "d-1", at=NOW + timedelta(seconds=3))),  # redelivered at a new offset
        raw(5, value(issued.model_copy(update={"serial": "abc1", "replaces_serial": SERIAL}), "i-2", at=later)),
        raw(6, value(EX[CertificateRevoked].model_copy(update={"serial": "abc1"}), "v-1", at=later)),
        raw(7, b"not json"),
    ]


def _dump(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the audit and inventory tables, as SQLite holds them (times as their stored text)."""
    tables = ("audit_records", "audit_chain_heads", "certificate_inventory", "certificate_serials", "certificate_deployments")
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return {t: connection.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall() for t in tables}
    finally:
        connection.close()


def test_batches_prepared_by_the_worker_for_sqlite_store_exactly_what_the_writer_would(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """prepare_batch(sqlite_times=True) hands the writer its times as SQLite text already:
    the stored rows (audit log, chain heads, inventory) are byte for byte those of the in-thread path."""
    records = _lifecycle_records()
    now = datetime(2026, 1, 15, 9, 30, 0, 250_000, tzinfo=UTC)
    urls = {}
    for path in ("writer", "worker"):
        settings = DatabaseSettings(url=f"sqlite:///{tmp_path / path}.db")
        migrate.upgrade(settings)
        engine = make_engine(settings)
        try:
            for batch in (records[:3], records[3:]):  # the second batch loads and updates what the first stored
                if path == "writer":
                    store_records(engine, batch, inventory_topics=TOPICS, now=now)
                else:
                    entries = pickle.loads(pickle.dumps(prepare_batch(batch, sqlite_times=True)))  # as from the worker process
                    assert isinstance(entries[0].attributes.event_time, str)
                    store_entries(engine, entries, inventory_topics=TOPICS, now=now)
            with read_session(engine) as session:
                assert scan_store(session, {}).problems == []  # verify re-derives each event time and compares
        finally:
            engine.dispose()
        urls[path] = settings.url
    writer, worker = _dump(urls["writer"]), _dump(urls["worker"])
    assert len(writer["audit_records"]) == len(records) and len(writer["certificate_serials"]) == 2
    assert worker == writer
