"""The gateway's Kafka door on FastStream's in-memory broker: a signed request on
certrail.requests becomes a command on the connector's topic and a RequestAccepted; a request
signed over different bytes is rejected; the raw record reaches the signature check."""

from __future__ import annotations

import json
from pathlib import Path

from faststream.kafka import TestKafkaBroker
from pydantic import SecretStr

from services.common.connectors.secretbox import SecretsSettings
from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import IssueCertificate
from services.common.contracts.envelope import decode, encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import RequestAccepted, RequestRejected
from services.common.contracts.requests import IssueRequested
from services.common.contracts.signing import signed
from services.common.db import make_engine
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.gateway_fixtures import HMAC_KEY, NOW, SECRETS_KEY, _csr, seed


async def test_signed_request_becomes_a_command_and_tampered_one_is_rejected(tmp_path: Path) -> None:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    upgrade(db)
    engine = make_engine(db)
    seed(engine)
    engine.dispose()
    settings = GatewaySettings(db=db, http_port=0, scheduler_enabled=False, secrets=SecretsSettings(keys=SecretStr(SECRETS_KEY)))
    _app, runtime = create_app(settings)
    commands: list[bytes] = []
    events: list[bytes] = []

    @runtime.broker.subscriber("certrail.commands.emca", group_id="test-commands")
    async def on_command(body: bytes) -> None:
        commands.append(body)

    @runtime.broker.subscriber("certrail.events.gateway", group_id="test-events")
    async def on_event(body: bytes) -> None:
        events.append(body)

    request = signed(IssueRequested(request_id="req-k1", requester="ci-pipeline", profile="web", certificate_id="cert-k1",
                                    csr=_csr(), sans=["dns:www.example.com"]), "k1", HMAC_KEY)
    event = make_event(request, id="up-1", source="/upstream/ci", time=NOW, subject="cert-k1", correlationid="req-k1")
    tampered = json.loads(encode(event))
    tampered["data"]["sans"] = ["dns:www.example.com", "dns:api.example.com"]
    tampered["id"] = "up-2"
    tampered["data"]["request_id"] = "req-k2"
    async with TestKafkaBroker(runtime.broker):  # what the service publishes
        await runtime.deliver("certrail.requests", encode(event), b"cert-k1")
        await runtime.deliver("certrail.requests", json.dumps(tampered).encode(), b"cert-k1")

    (command,) = [decode(raw, CATALOG).data for raw in commands]
    assert isinstance(command, IssueCertificate) and command.certificate_id == "cert-k1"
    decoded = [decode(raw, CATALOG).data for raw in events]
    accepted = [e for e in decoded if isinstance(e, RequestAccepted)]
    rejected = [e for e in decoded if isinstance(e, RequestRejected)]
    assert [a.request_id for a in accepted] == ["req-k1"]
    assert [(r.request_id, r.error.code) for r in rejected] == [("req-k2", ErrorCode.REQUEST_SIGNATURE_INVALID)]
    sample = runtime.registry.get_sample_value
    assert sample("certrail_gateway_requests_total", {"door": "kafka", "kind": "issue", "status": "accepted", "code": ""}) == 1
    assert sample("certrail_gateway_requests_total",
                  {"door": "kafka", "kind": "issue", "status": "rejected", "code": "REQUEST_SIGNATURE_INVALID"}) == 1
    # what the gateway publishes itself is counted per record, by type (docs/operations.md)
    published = {"service": "gateway"}
    assert sample("certrail_messages_published_total", published | {"type": RequestAccepted.TYPE}) == 1
    assert sample("certrail_messages_published_total", published | {"type": RequestRejected.TYPE}) == 1
    assert sample("certrail_messages_published_total", published | {"type": IssueCertificate.TYPE}) == 1
