"""Runs the real issuer (``certrail serve issuer``, a subprocess) against a real Kafka, a SQLite
database and emCA simulators, and drives it: connectors created through the registry, commands
produced to their topics, events read back from the issuer's ``certrail.events.issuer`` (only there)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine

from emca_sim.server import SimServer
from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import IssueCertificate, RenewCertificate, RevokeCertificate
from services.common.contracts.envelope import TYPE_HEADER, Envelope, decode, encode, make_event
from services.common.contracts.fields import RevocationReason
from services.common.contracts.identity import issuance_id, message_id
from services.common.contracts.topics import Topics
from services.common.db import make_engine
from services.common.emca.client import connect
from services.common.emca.types import EmcaVersion
from services.common.kafka_config import consumer_kwargs, producer_kwargs
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.topics_admin import ensure_topics
from services.issuer.registry.registry import ConnectorRegistry, KafkaTopicCreator
from tests.conftest import free_ports, poll_until
from tests.emca_sim_helpers import sim_spec

ROOT = Path(__file__).resolve().parents[1]


def make_csr(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def metric(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in (labels or {}).items()):
            total += float(match.group(2))
    return total


@dataclass
class IssuerProcess:
    env: dict[str, str]
    log_file: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        env = {**os.environ, **self.env, "CERTRAIL_ISSUER_HTTP_PORT": str(self.port), **(extra_env or {})}
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "services.cli.main", "serve", "issuer"], cwd=ROOT, env=env, stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_healthy(self, timeout_s: float = 60.0) -> None:
        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the issuer exited with {self.process.returncode}:\n{self.tail()}")
            try:
                return httpx.get(self.base_url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        await poll_until(healthy, "the issuer to be healthy", timeout_s, interval_s=0.2)

    def metrics(self) -> str:
        return httpx.get(self.base_url + "/metrics", timeout=5).text

    def health(self) -> dict[str, Any]:
        return httpx.get(self.base_url + "/health", timeout=5).json()

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(60)

    async def wait_exit(self, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        await poll_until(lambda: self.process.poll() is not None, "the issuer to exit", timeout_s,  # type: ignore[union-attr]
                         interval_s=0.2)
        return self.process.returncode

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@dataclass
class IssuerBench:
    """Everything one test needs: topics under a unique prefix, a database, a secrets key, a registry,
    a producer of commands, a reader of events and issuer processes."""

    kafka: KafkaSettings
    tmp: Path
    topics: Topics = field(init=False)
    db: DatabaseSettings = field(init=False)
    engine: Engine = field(init=False)
    registry: ConnectorRegistry = field(init=False)
    env: dict[str, str] = field(init=False)
    events: list[Envelope] = field(default_factory=list)
    type_headers: dict[str, str | None] = field(default_factory=dict)
    """each event's ``ce_type`` record header, by event id"""
    processes: list[IssuerProcess] = field(default_factory=list)
    _producer: AIOKafkaProducer | None = None
    _consumer: AIOKafkaConsumer | None = None
    _reader: asyncio.Task[None] | None = None
    _serial: int = 0

    def __post_init__(self) -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}.certrail"
        self.topics = Topics(prefix)
        self.db = DatabaseSettings(url=f"sqlite:///{self.tmp / 'certrail.db'}")
        upgrade(self.db)
        self.engine = make_engine(self.db)
        key = generate_key()
        kafka = self.kafka.model_copy(update={"topic_prefix": prefix})
        self.registry = ConnectorRegistry(self.engine, SecretBox([key]), connect=connect,
                                          topics=KafkaTopicCreator(kafka, partitions=3), usage_checks=[])
        self.env = {
            "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "CERTRAIL_KAFKA_TOPIC_PREFIX": prefix,
            "CERTRAIL_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "CERTRAIL_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
            "CERTRAIL_DB_URL": self.db.url,
            "CERTRAIL_SECRETS_KEYS": key,
            "CERTRAIL_ISSUER_GROUP_ID": f"issuer-{prefix}",
            "CERTRAIL_ISSUER_TOPIC_REFRESH_INTERVAL_MS": "1000",
            "CERTRAIL_ISSUER_PROBE_INITIAL_S": "0.3",
            "CERTRAIL_ISSUER_PROBE_MAX_S": "1.5",
            "CERTRAIL_ISSUER_REGISTRY_POLL_S": "0.5",
            "CERTRAIL_ISSUER_APPROVAL_POLL_INITIAL_S": "0.3",
            "CERTRAIL_ISSUER_APPROVAL_POLL_MAX_S": "1",
            "CERTRAIL_ISSUER_PENDING_POLL_INTERVAL_S": "0.3",
            "CERTRAIL_ISSUER_REVOKE_GRACE_S": "10",
            "CERTRAIL_ISSUER_HEARTBEAT_INTERVAL_S": "2",
        }

    async def __aenter__(self) -> IssuerBench:
        await ensure_topics(self.kafka, list(self.topics.fixed()), partitions=3)
        self._producer = AIOKafkaProducer(**producer_kwargs(self.kafka))
        await self._producer.start()
        # fetches of up to 64 KiB or 50 ms rather than one per event: the reader shares the CPUs with what it
        # watches (bench/issuer_throughput.py measured a quarter less broker CPU per certificate this way)
        self._consumer = AIOKafkaConsumer(self.topics.issuer_events, self.topics.deadletter,
                                          **{**consumer_kwargs(self.kafka, f"reader-{uuid.uuid4().hex[:8]}"),
                                             "fetch_min_bytes": 65536, "fetch_max_wait_ms": 50})
        await self._consumer.start()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.process is not None and process.process.poll() is None:
                process.kill(signal.SIGTERM)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        self.engine.dispose()

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            for records in (await self._consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    event = decode(record.value, CATALOG)
                    headers = dict(record.headers or ())
                    self.type_headers[event.id] = headers[TYPE_HEADER].decode() if TYPE_HEADER in headers else None
                    self.events.append(event)

    # -- connectors and processes ------------------------------------------------------------------------

    async def connector(self, sim: SimServer, version: EmcaVersion, name: str, **overrides: Any) -> str:
        spec = sim_spec(sim, version, name, **overrides)
        await self.registry.create(spec)
        return name

    def issuer(self, name: str = "issuer") -> IssuerProcess:
        process = IssuerProcess(self.env, self.tmp / f"{name}.log", free_ports(1)[0])
        self.processes.append(process)
        return process

    # -- commands ---------------------------------------------------------------------------------------------

    async def send(self, connector: str, data: IssueCertificate | RenewCertificate | RevokeCertificate, *,
                   event_id: str | None = None) -> Envelope:
        assert self._producer is not None
        envelope = make_event(data, id=event_id or message_id(data.request_id, data.TYPE), source="/tests/gateway",
                              time=datetime.now(UTC), subject=data.certificate_id, correlationid=data.request_id)
        await self._producer.send_and_wait(self.topics.commands(connector), encode(envelope),
                                           key=data.certificate_id.encode())
        return envelope

    async def send_raw(self, connector: str, value: bytes, key: bytes) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(self.topics.commands(connector), value, key=key)

    def issue_command(self, connector: str, *, n: int | None = None, csr: str | None = None, profile: str = "TLS Server",
                      revision: int = 1, renew_of: str | None = None, deadline: datetime | None = None) -> IssueCertificate:
        if n is None:
            self._serial += 1
            n = self._serial
        certificate_id = f"cert-{connector}-{n}"
        name = f"host-{n}.{connector}.example.com"
        values: dict[str, Any] = dict(
            issuance_id=issuance_id(certificate_id, revision), certificate_id=certificate_id, revision=revision,
            request_id=f"req-{connector}-{n}-{revision}", connector=connector, profile="web", ca_profile=profile,
            csr=csr or make_csr(name), sans=[f"dns:{name}"], deadline=deadline,
        )
        if renew_of is not None:
            return RenewCertificate(**values, replaces_serial=renew_of)
        return IssueCertificate(**values)

    def revoke_command(self, connector: str, certificate_id: str, serial: str, request_id: str,
                       reason: RevocationReason = RevocationReason.KEY_COMPROMISE) -> RevokeCertificate:
        return RevokeCertificate(certificate_id=certificate_id, serial=serial, request_id=request_id, connector=connector,
                                 reason=reason)

    # -- events -------------------------------------------------------------------------------------------

    def of_type(self, cls: type, **match: Any) -> list[Any]:
        return [e for e in self.events if isinstance(e.data, cls)
                and all(getattr(e.data, k) == v for k, v in match.items())]

    async def wait_for(self, cls: type, count: int = 1, timeout_s: float = 60.0, **match: Any) -> list[Any]:
        await poll_until(lambda: len(self.of_type(cls, **match)) >= count,
                         lambda: f"{count} {cls.__name__} {match or ''} (have {len(self.of_type(cls, **match))})\n"
                         + "\n".join(p.tail(20) for p in self.processes), timeout_s, interval_s=0.2)
        return self.of_type(cls, **match)
