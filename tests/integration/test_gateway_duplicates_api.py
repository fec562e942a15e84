"""``/v1/duplicates`` and the console's Duplicates page (services/gateway/api_duplicates.py, console/screens/duplicates.py)
over the issuer's real internal API and resolver (in-process, httpx's ASGI transport; no Kafka: published records are
collected), the real connector pool and emCA client against the emCA simulator (4.2.4: the same CSR and applicationId
submitted twice gives two certificates), and one SQLite database.

Who may do what (auditors list, admins resolve, requesters neither), the issuer's refusals passed through with their
code and status, the issuer unreachable as 503, and an admin resolving through the console form."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from emca_sim.server import SimServer, start_in_thread
from services.common.contracts.catalog import CATALOG
from services.common.contracts.duplicates import DuplicateResolutionRefused, DuplicateResolved
from services.common.contracts.envelope import decode
from services.common.contracts.errors import ErrorCode
from services.common.db import read_session, write_session
from services.common.db_schema import IssuerAdminOutbox
from services.common.emca.client import connect
from services.common.emca.types import EmcaVersion, IssuedCertificate
from services.common.settings import KafkaSettings
from services.gateway.api import create_api
from services.gateway.api_throttle import throttle_from
from services.gateway.issuer_api import Endpoint, IssuerApi
from services.gateway.policy.tokens import Role
from services.issuer import state
from services.issuer.connectors import ConnectorPool, RuntimeSettings
from services.issuer.duplicates import store
from services.issuer.duplicates.internal_api import create_internal_app
from services.issuer.duplicates.resolver import DuplicateResolver
from services.issuer.metrics import IssuerMetrics
from services.issuer.registry.registry import ConnectorRegistry
from services.issuer.state import NewOperation, StoredRecord
from tests.browser.test_console_http import sign_in
from tests.emca_sim_helpers import sim_spec
from tests.gateway_fixtures import INTERNAL_TOKEN, auditor_api
from tests.integration.test_gateway_api import Gateway, RecordingTopics, open_gateway
from tests.issuer_harness import make_csr

pytestmark = [pytest.mark.integration]

KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:9", topic_prefix="t-nokafka.certrail")
CONNECTOR = "emca-dup"
CERT_ID = "www.dup.example.test"
ISSUANCE = "5b0d7c1e-2f3a-5c4d-8e9f-0a1b2c3d4e5f"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    with start_in_thread(tmp_path_factory.mktemp("emca-sim-duplicates-api"), port=0, crl_port=0, admin_port=0) as server:
        yield server


@dataclass
class Rig:
    gw: Gateway
    sim: SimServer
    client: httpx.AsyncClient  # the gateway's API and console, with the issuer's internal API behind it
    published: list[StoredRecord]
    delivered: IssuedCertificate
    extra: IssuedCertificate

    def events(self, cls: type) -> list[object]:
        """Published by the resolver (refusals) or queued in the issuer's outbox (DuplicateResolved, for its relay)."""
        with read_session(self.gw.engine) as session:
            queued = [v.encode() for v in session.scalars(select(IssuerAdminOutbox.value).order_by(IssuerAdminOutbox.seq))]
        return [e.data for e in (decode(value, CATALOG) for value in [r.value for r in self.published] + queued)
                if isinstance(e.data, cls)]

    async def call(self, method: str, path: str, token: str, **kwargs: object) -> httpx.Response:
        return await self.client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)  # type: ignore[arg-type]


def _spki_sha256(certificate_pem: str) -> str:
    key = x509.load_pem_x509_certificate(certificate_pem.encode()).public_key()
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


async def _status(*_: object) -> None:
    return None


@pytest.fixture
async def rig(tmp_path: Path, sim: SimServer) -> AsyncIterator[Rig]:
    gw = open_gateway(tmp_path, KAFKA, registry_topics=RecordingTopics())
    await gw.client.aclose()
    registry = ConnectorRegistry(gw.engine, gw.runtime.box, connect=connect, topics=RecordingTopics(), usage_checks=[])
    spec = sim_spec(sim, EmcaVersion.V4_2_4, CONNECTOR)
    await registry.create(spec)
    metrics = IssuerMetrics(CollectorRegistry())
    pool = ConnectorPool(registry, metrics, RuntimeSettings(), _status)
    published: list[StoredRecord] = []

    async def publish(records: Sequence[StoredRecord]) -> None:
        published.extend(records)

    resolver = DuplicateResolver(engine=gw.engine, pool=pool, publish=publish, topics=gw.topics,
                                 gauge=metrics.duplicates_unresolved, clock=lambda: datetime.now(UTC),
                                 event_source="/certrail/issuer")
    issuer = IssuerApi(Endpoint("http://issuer", INTERNAL_TOKEN),
                       transport=httpx.ASGITransport(app=create_internal_app(resolver, INTERNAL_TOKEN)))
    app = create_api(gw.runtime, auditor=auditor_api(gw.engine), issuer=issuer,
                     throttle=throttle_from(gw.runtime.settings, CollectorRegistry()))
    # an uncertain first attempt and its retry: 4.2.4 signs the same CSR and applicationId twice
    runtime = await pool.get(CONNECTOR)
    assert runtime.connection is not None
    csr = make_csr(CERT_ID)
    first, second = [await runtime.connection.submit_csr(csr_pem=csr, profile_name="TLS Server",
                                                         subscriber_id=spec.subscriber_id, application_id=ISSUANCE)
                     for _ in range(2)]
    assert isinstance(first, IssuedCertificate) and isinstance(second, IssuedCertificate) and first.serial != second.serial
    new = NewOperation(ISSUANCE, "issue", "cmd-1", CERT_ID, "req-1", CONNECTOR, gw.topics.commands(CONNECTOR), 0, "{}")
    duplicate = store.new_duplicate(issuance_id=ISSUANCE, certificate_id=CERT_ID, request_id="req-1", correlation_id="req-1",
                                    detected_event_id="detected-1", connector=CONNECTOR, delivered_serial=second.serial,
                                    public_key_sha256=_spki_sha256(second.certificate_pem), now=datetime.now(UTC))
    with write_session(gw.engine) as session:
        state.begin_attempt_in(session.connection(), new, datetime.now(UTC))
        store.record_issued_in(session.connection(), ISSUANCE, [], datetime.now(UTC), duplicate=duplicate,
                               serial=second.serial, possible_duplicate=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        try:
            yield Rig(gw, sim, client, published, second, first)
        finally:
            await pool.close()
            await issuer.aclose()
            gw.engine.dispose()


async def test_auditors_list_admins_resolve_and_refusals_pass_through(rig: Rig) -> None:
    admin, auditor = rig.gw.token(Role.ADMIN, "ops-anna"), rig.gw.token(Role.AUDITOR, "audit-ben")
    requester = rig.gw.token(Role.REQUESTER, "web-team")
    assert (await rig.call("GET", "/v1/duplicates", requester)).status_code == 403
    listed = (await rig.call("GET", "/v1/duplicates", auditor)).json()["duplicates"]
    assert [(d["certificate_id"], d["delivered_serial"], d["state"]) for d in listed] == [
        (CERT_ID, rig.delivered.serial, "unresolved")]
    path = f"/v1/duplicates/{CERT_ID}/resolve"
    refused = await rig.call("POST", path, auditor, json={"extra_serial": rig.extra.serial})
    assert (refused.status_code, refused.json()["code"]) == (403, "REQUESTER_NOT_AUTHORISED")
    for body in ({}, {"extra_serial": "ab", "no_extra": True}, {"no_extra": True}, {"extra_serial": "not-hex"}):
        answer = await rig.call("POST", path, admin, json=body)
        assert (answer.status_code, answer.json()["code"]) == (422, "SCHEMA_VIOLATION"), body
    delivered = await rig.call("POST", path, admin, json={"extra_serial": rig.delivered.serial})
    assert (delivered.status_code, delivered.json()["code"]) == (409, ErrorCode.CERTIFICATE_MISMATCH.value)
    unknown = await rig.call("POST", "/v1/duplicates/nobody.example.test/resolve", admin, json={"extra_serial": "ab"})
    assert (unknown.status_code, unknown.json()["code"]) == (404, ErrorCode.CERTIFICATE_NOT_FOUND.value)
    assert [(e.extra_serial, e.actor) for e in rig.events(DuplicateResolutionRefused)] == [  # type: ignore[attr-defined]
        (rig.delivered.serial, "ops-anna")]
    assert rig.sim.backend.certificate(rig.extra.serial).revoked_at is None  # nothing revoked by a refusal

    done = await rig.call("POST", path, admin, json={"extra_serial": rig.extra.serial, "note": "emCA console"})
    assert done.status_code == 200, done.text
    assert (done.json()["duplicate"]["resolution"], done.json()["duplicate"]["resolved_by"]) == ("revoked", "ops-anna")
    [resolved] = rig.events(DuplicateResolved)
    assert (resolved.extra_serial, resolved.actor) == (rig.extra.serial, "ops-anna")  # type: ignore[attr-defined]
    assert rig.sim.backend.certificate(rig.extra.serial).revocation_reason == "superseded"
    assert rig.sim.backend.certificate(rig.delivered.serial).revoked_at is None
    assert (await rig.call("GET", "/v1/duplicates", auditor)).json()["duplicates"] == []
    [shown] = (await rig.call("GET", "/v1/duplicates?state=resolved", auditor)).json()["duplicates"]
    assert (shown["extra_serial"], shown["note"]) == (rig.extra.serial, "emCA console")


async def test_the_issuer_unreachable_is_503_with_retry_after(rig: Rig) -> None:
    down = IssuerApi(Endpoint("http://127.0.0.1:9", INTERNAL_TOKEN))
    app = create_api(rig.gw.runtime, auditor=auditor_api(rig.gw.engine), issuer=down,
                     throttle=throttle_from(rig.gw.runtime.settings, CollectorRegistry()))
    admin = rig.gw.token(Role.ADMIN, "ops-anna")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        answer = await client.get("/v1/duplicates", headers={"Authorization": f"Bearer {admin}"})
    await down.aclose()
    assert (answer.status_code, answer.json()["code"], answer.headers["retry-after"]) == (503, "SERVICE_UNAVAILABLE", "5")


async def test_an_admin_resolves_a_duplicate_on_the_console(rig: Rig) -> None:
    admin = rig.gw.token(Role.ADMIN, "ops-anna")
    csrf = await sign_in(rig.client, admin)
    page = await rig.client.get("/console/certificates/duplicates")
    assert page.status_code == 200 and CERT_ID in page.text and rig.delivered.serial in page.text
    assert 'href="/console/certificates/duplicates"' in page.text  # in the navigation
    form = {"csrf": csrf, "issuance_id": ISSUANCE, "extra_serial": rig.delivered.serial}
    refused = await rig.client.post(f"/console/certificates/duplicates/{CERT_ID}/resolve", data=form)
    assert refused.status_code == 303
    assert "CERTIFICATE_MISMATCH" in (await rig.client.get("/console/certificates/duplicates")).text
    done = await rig.client.post(f"/console/certificates/duplicates/{CERT_ID}/resolve",
                                 data={**form, "extra_serial": rig.extra.serial.upper()})
    assert done.status_code == 303
    after = await rig.client.get("/console/certificates/duplicates?state=resolved")
    assert f"extra serial {rig.extra.serial} checked and revoked" in after.text and "Resolved" in after.text
    assert rig.sim.backend.certificate(rig.extra.serial).revocation_reason == "superseded"
