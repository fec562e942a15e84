"""The four services as processes (services/common/stack.py) on the test run's Kafka broker and one SQLite file,
with their own topic prefix, an admin and a requester token, for the lifecycle e2e tests (renewal, revocation
confirmed, out-of-band revocations, key retention, duplicates). Each test starts its simulators, adds its
connectors, profiles and targets through the HTTP API, and reads what happened from the topics and the tables.

``process_stack(kafka_settings, tmp_path, env={...})`` yields a :class:`ProcessStack`; the settings every such test
needs (short session timeouts, fast registry polls, fresh secret keys) are in :func:`base_env`, ``env`` adds to them.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from emca_sim.server import SimServer
from services.common.connectors.secretbox import generate_key
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import Envelope, decode
from services.common.contracts.topics import Topics
from services.common.db import make_engine
from services.common.emca.types import EmcaVersion
from services.common.kafka_config import client_kwargs
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.stack import SERVICES, Stack
from services.common.topics_admin import delete_topics, ensure_topics
from services.gateway.api_tokens import create_token
from services.gateway.policy.tokens import Role
from tests.conftest import free_ports
from tests.emca_sim_helpers import ISSUING_CA, sim_endpoint

DEPLOYER = "certrail-deployer"  # the deployer's requester identity (its renewal requests are signed with its key)


@dataclass
class ProcessStack:
    stack: Stack
    var: Path  # the test's tmp_path: the database, the simulators' and the targets' directories
    db: Path
    topics: Topics
    kafka: KafkaSettings
    ports: dict[str, int]
    admin: httpx.Client
    requester: httpx.Client
    request_key: str  # the deployer's request-signing key (CERTRAIL_DEPLOYER_REQUEST_KEY)
    sims: dict[str, SimServer] = field(default_factory=dict)  # connector name -> its simulator

    @property
    def connectors(self) -> list[str]:
        return list(self.sims)

    @property
    def issuer_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['issuer']}"

    def add_connector(self, name: str, sim: SimServer, *, default_profile: str = "TLS Server") -> None:
        """A V4.2.4+ connector to ``sim`` through the HTTP API; its command topic is deleted with the stack's."""
        endpoint = sim_endpoint(sim, EmcaVersion.V4_2_4)
        check(self.admin.post("/v1/connectors", json={
            "name": name, "version": "V4.2.4+", "base_url": endpoint.base_url, "username": endpoint.username,
            "issuing_ca": ISSUING_CA, "subscriber_id": "SUB-0001", "default_profile": default_profile,
            "ca_bundle_pem": endpoint.ca_bundle_pem, "password": endpoint.password, "client_id": endpoint.client_id}), 201)
        self.sims[name] = sim

    def add_deployer_key(self) -> None:
        """The deployer's request-signing key, registered for its requester identity (bot-held renewals)."""
        check(self.admin.post(f"/v1/requesters/{DEPLOYER}/keys", json={
            "key_id": "deployer-1", "secret_base64": base64.b64encode(self.request_key.encode()).decode()}), 201)

    def file_target(self, name: str, profile: str, subdir: str = "deploy") -> Path:
        """A file target under ``var/<subdir>`` bound to ``profile``; returns its directory."""
        directory = self.var / subdir
        check(self.admin.put(f"/v1/targets/{name}", json={"kind": "file", "config": {"dir": str(directory)}}), 201)
        check(self.admin.put(f"/v1/profiles/{profile}/targets/{name}"), 201)
        return directory

    def events(self, topic: str, event_type: str, subject: str) -> list[Envelope]:
        return [e for e in asyncio.run(read_topic(self.kafka, topic)) if e.type == event_type and e.subject == subject]

    def rows(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        connection = sqlite3.connect(self.db, timeout=10)
        try:
            return connection.execute(sql, args).fetchall()
        finally:
            connection.close()


def base_env(kafka_settings: KafkaSettings, prefix: str, db_url: str, tmp_path: Path, request_key: str) -> dict[str, str]:
    return {
        "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "CERTRAIL_KAFKA_TOPIC_PREFIX": prefix,
        "CERTRAIL_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "CERTRAIL_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "CERTRAIL_DB_URL": db_url,
        "CERTRAIL_SECRETS_KEYS": generate_key(),
        "CERTRAIL_DEPLOYER_KEYS": generate_key(),
        "CERTRAIL_DEPLOYER_REQUEST_KEY": request_key,
        "CERTRAIL_AUDITOR_SIGNING_KEY_FILE": str(tmp_path / "auditor" / "checkpoint-signing-key.pem"),
        "CERTRAIL_ISSUER_TOPIC_REFRESH_INTERVAL_MS": "1000",
        "CERTRAIL_ISSUER_REGISTRY_POLL_S": "0.5",
    }


@contextmanager
def process_stack(kafka_settings: KafkaSettings, tmp_path: Path, *, requester: str, env: dict[str, str] | None = None,
                  description: str = "e2e") -> Iterator[ProcessStack]:
    """Topics under a fresh prefix, the migrated SQLite database, an admin and a ``requester`` token, the four
    services started (stopped and the topics deleted on exit)."""
    prefix = f"t{uuid.uuid4().hex[:8]}.certrail"
    topics = Topics(prefix)
    kafka = kafka_settings.model_copy(update={"topic_prefix": prefix})
    asyncio.run(ensure_topics(kafka, list(topics.fixed()), partitions=1))
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    upgrade(db)
    engine = make_engine(db)
    try:
        tokens = {identity: create_token(engine, identity=identity, role=role, profiles=None, description=description,
                                         created_by="tests", now=now(), expires_at=None)[0].token
                  for identity, role in (("platform-admin", Role.ADMIN), (requester, Role.REQUESTER))}
    finally:
        engine.dispose()
    ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    request_key = secrets.token_urlsafe(32)
    stack = Stack(var_dir=tmp_path / "var", ports=ports,
                  env={**base_env(kafka_settings, prefix, db.url, tmp_path, request_key), **(env or {})})
    base = f"http://127.0.0.1:{ports['gateway']}"
    live: ProcessStack | None = None
    with ExitStack() as clients:
        admin, user = (clients.enter_context(httpx.Client(base_url=base, timeout=30,
                                                          headers={"Authorization": f"Bearer {tokens[identity]}"}))
                       for identity in ("platform-admin", requester))
        try:
            stack.start(120.0)
            live = ProcessStack(stack, tmp_path, tmp_path / "certrail.db", topics, kafka, ports, admin, user, request_key)
            yield live
        finally:
            stack.stop()
            connectors = live.connectors if live else []
            asyncio.run(delete_topics(kafka, [*topics.fixed(), *(topics.commands(name) for name in connectors)]))


def now() -> datetime:
    """A little in the past: tokens made now are valid at once whatever the clocks' granularity."""
    return datetime.now(UTC) - timedelta(seconds=5)


def check(response: httpx.Response, *ok: int) -> dict[str, Any]:
    assert response.status_code in ok, f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
    return response.json() if response.content else {}


def csr(name: str) -> str:
    """A fresh P-256 CSR for ``name`` (CN and SAN)."""
    key = ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
               .sign(key, hashes.SHA256()))
    return request.public_bytes(serialization.Encoding.PEM).decode()


async def read_topic(kafka: KafkaSettings, topic: str) -> list[Envelope]:
    """Every record of ``topic`` from its beginning up to its end now, decoded."""
    consumer = AIOKafkaConsumer(**client_kwargs(kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out: list[Envelope] = []
        async with asyncio.timeout(30):
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                for records in (await consumer.getmany(*partitions, timeout_ms=500)).values():
                    out += [decode(record.value, CATALOG) for record in records]
        return out
    finally:
        await consumer.stop()
