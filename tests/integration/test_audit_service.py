"""`certrail serve auditor` as a real process against the real broker and a
SQLite file, and the investigator's commands (`certrail audit ...`) as real
processes against what it stored: health and metrics, signed checkpoints,
the trail, verify (clean, then naming a tampered row), replay --diff, export,
a clean stop."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiokafka import TopicPartition
from sqlalchemy import select

from services.auditor.inventory_read import get_certificate
from services.auditor.kafka_reader import kafka_reader
from services.auditor.records import envelope_attributes
from services.common import migrate
from services.common.contracts.envelope import encode, make_event
from services.common.contracts.events import CertificateDeployed, CertificateIssued, CertificateRevoked, RequestAccepted
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import AuditRecord
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.topics_admin import delete_topics, ensure_topics
from tests.conftest import free_ports, poll_until
from tests.integration.test_audit_kafka import produce
from tests.integration.test_audit_store import recompute_chain
from tests.unit.examples import CERT_ID, NOW, examples

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EX = examples()
REPO = Path(__file__).resolve().parents[2]


def _metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from services.cli.audit_cmd import app; app()", *args,
        env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def stack(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[dict[str, object]]:
    prefix = f"t{uuid.uuid4().hex[:10]}.certrail"
    topics = Topics(prefix)
    names = [*topics.fixed(), topics.commands("emca-test")]
    await ensure_topics(kafka_settings, names, partitions=2)
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    migrate.upgrade(db)
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "CERTRAIL_KAFKA_TOPIC_PREFIX": prefix,
        "CERTRAIL_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "CERTRAIL_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "CERTRAIL_DB_URL": db.url,
        "CERTRAIL_AUDITOR_HTTP_PORT": str(port),
        "CERTRAIL_AUDITOR_SIGNING_KEY_FILE": str(tmp_path / "keys" / "checkpoint.pem"),
        "CERTRAIL_AUDITOR_CHECKPOINT_INTERVAL_S": "1",
        "CERTRAIL_AUDITOR_TOPIC_REFRESH_INTERVAL_MS": "1000",
        "CERTRAIL_AUDITOR_HEARTBEAT_INTERVAL_S": "1",
    }
    log = (tmp_path / "auditor.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "services.cli.main", "serve", "auditor"],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield {"process": process, "env": env, "topics": topics, "db": db, "url": f"http://127.0.0.1:{port}",
               "kafka": kafka_settings.model_copy(update={"topic_prefix": prefix}), "tmp": tmp_path}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log.close()
        await delete_topics(kafka_settings, names)


def _event(data, event_id: str) -> bytes:  # type: ignore[no-untyped-def]
    return encode(make_event(data, id=event_id, source="/certrail/test", time=NOW, subject=CERT_ID, correlationid="req-1"))


async def test_the_auditor_service_and_the_investigators_commands(stack: dict[str, object]) -> None:
    process: subprocess.Popen[bytes] = stack["process"]  # type: ignore[assignment]
    env: dict[str, str] = stack["env"]  # type: ignore[assignment]
    topics: Topics = stack["topics"]  # type: ignore[assignment]
    url: str = stack["url"]  # type: ignore[assignment]
    tmp: Path = stack["tmp"]  # type: ignore[assignment]
    db: DatabaseSettings = stack["db"]  # type: ignore[assignment]

    def healthy() -> bool:
        assert process.poll() is None, (tmp / "auditor.log").read_text()
        try:
            response = httpx.get(url + "/health", timeout=2)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json()["checks"] == {"kafka": "ok", "database": "ok"}

    await poll_until(healthy, "the auditor to be healthy", 90, interval_s=0.3, in_thread=True)
    key = CERT_ID.encode()
    at = int(time.time() * 1000)  # one millisecond apart: the trail's order is the records' time
    await produce(stack["kafka"], [  # type: ignore[arg-type]
        (topics.gateway_events, key, _event(EX[RequestAccepted], "a-1"), at),
        (topics.issuer_events, key, _event(EX[CertificateIssued], "i-1"), at + 1),
        (topics.deployer_events, key, _event(EX[CertificateDeployed], "d-1"), at + 2),
        (topics.issuer_events, key, _event(EX[CertificateRevoked], "v-1"), at + 3),
        (topics.requests, b"poison", b"\xffnot json", at + 4),
        # forged: an issuance on the deployer's topic is stored and flagged, never folded (decision 0016)
        (topics.deployer_events, b"forged-1", encode(make_event(
            EX[CertificateIssued].model_copy(update={"certificate_id": "forged-1"}), id="forged-1", source="/certrail/deployer",
            time=NOW, subject="forged-1")), at + 5),
    ])

    def stored() -> bool:
        text = httpx.get(url + "/metrics", timeout=5).text
        return _metric_sum(text, "certrail_audit_records_stored_total", channel="events.issuer") >= 2 and \
            _metric_sum(text, "certrail_audit_invalid_records_total", channel="requests", code="UNDECODABLE") == 1 and \
            _metric_sum(text, "certrail_audit_invalid_records_total", channel="events.deployer",
                        code="PRODUCER_NOT_ALLOWED") == 1 and \
            "1 io.certrail.certificate.issued.v1 record(s) on " in (tmp / "auditor.log").read_text()

    await poll_until(stored, "the records to be stored", 60, interval_s=0.3, in_thread=True)
    metrics = httpx.get(url + "/metrics", timeout=5).text
    assert _metric_sum(metrics, "certrail_audit_records_stored_total", channel="events.issuer",
                       type=CertificateIssued.TYPE) == 1
    assert _metric_sum(metrics, "certrail_audit_records_stored_total", channel="events.deployer",
                       type=CertificateIssued.TYPE) == 1
    engine = make_engine(db)
    try:
        with read_session(engine) as session:
            assert get_certificate(session, "forged-1", NOW) is None  # not in the inventory
            assert get_certificate(session, CERT_ID, NOW).status == "revoked"  # type: ignore[union-attr]
    finally:
        engine.dispose()
    assert "certrail_audit_commit_duration_seconds_bucket" in metrics and "certrail_consumer_lag_records" in metrics

    async def checkpoints_published() -> int:
        async with kafka_reader(stack["kafka"]) as consumer:  # type: ignore[arg-type]
            tps = [TopicPartition(topics.audit_checkpoints, p) for p in (0, 1)]
            return sum((await consumer.end_offsets(tps)).values())

    await poll_until(checkpoints_published, "a checkpoint to be published", 30, interval_s=0.5)

    code, out, err = await _cli(env, "trail", CERT_ID, "--json")
    assert code == 0, err
    types = [json.loads(line)["event_type"] for line in out.splitlines()]
    assert types == [RequestAccepted.TYPE, CertificateIssued.TYPE, CertificateDeployed.TYPE, CertificateRevoked.TYPE]
    code, out, err = await _cli(env, "trail", CERT_ID)
    assert code == 0 and "certificate.deployed" in out
    code, _, err = await _cli(env, "trail", "no-such-thing")
    assert code == 1 and "nothing in the audit log matches" in err

    code, out, err = await _cli(env, "verify")
    assert code == 0, out + err
    assert out.startswith("audit log verify OK")

    code, out, err = await _cli(env, "replay", "--topic", topics.issuer_events, "--into", f"sqlite:///{tmp / 'replay.db'}",
                                "--diff")
    assert code == 0, out + err
    assert "diff: 2 rows compared, 0 differences" in out

    code, out, err = await _cli(env, "export", "--format", "csv", "--topic", topics.gateway_events,
                                "--topic", topics.issuer_events, "--topic", topics.deployer_events)
    assert code == 0, err
    exported = list(csv.DictReader(io.StringIO(out)))
    assert sorted(r["event_type"] for r in exported) == sorted([*types, CertificateIssued.TYPE])
    assert "exported 5 records" in err

    # Someone with write access rewrites history and recomputes the chain.
    engine = make_engine(db)
    try:
        with write_session(engine) as session:
            row = session.scalars(select(AuditRecord).where(AuditRecord.event_id == "v-1")).one()
            where = f"{row.topic}/{row.partition}@{row.offset} (row {row.id})"
            row.value = _event(EX[CertificateDeployed], "v-1")
            for name, value in envelope_attributes(row.value)._asdict().items():
                setattr(row, name, value)
            session.flush()
            recompute_chain(session, row.topic, row.partition)
    finally:
        engine.dispose()
    code, out, err = await _cli(env, "verify")
    assert code == 1, out + err
    assert "FAILED" in out and where in out and "differs_from_kafka" in out
    code, out, err = await _cli(env, "replay", "--topic", topics.issuer_events, "--into", f"sqlite:///{tmp / 'again.db'}",
                                "--diff")
    assert code == 1 and "differs: value" in out

    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert await asyncio.to_thread(process.wait, 30) in (0, -signal.SIGTERM)
    log = (tmp / "auditor.log").read_text()
    # the 5 records and the auditor's own checkpoints; then a final checkpoint on the way out
    stopped = re.search(r"auditor stopped: (\d+) records stored by this instance, 1 final checkpoint", log)
    assert stopped is not None and int(stopped.group(1)) >= 6, log[-2000:]
    assert "Traceback" not in log and "PRIVATE KEY" not in log
    async with kafka_reader(stack["kafka"]) as consumer:  # type: ignore[arg-type]
        dead = await consumer.end_offsets([TopicPartition(topics.deadletter, p) for p in (0, 1)])
    assert sum(dead.values()) == 0  # the auditor stores poison; it does not dead-letter it
