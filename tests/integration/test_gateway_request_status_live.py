"""A request's status from the gateway's own projection on the real broker (decision 0017): the
gateway's consumer of events.issuer folds the issuer's outcome events into gateway_request_status,
so ``GET /v1/requests/{id}`` answers queued, then pending_approval, then issued with no auditor
running; outcomes about another certificate or for a request the gateway never accepted change
nothing and are counted by reason."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from services.common.connectors.secretbox import SecretsSettings
from services.common.contracts.commands import IssueCertificate
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import IssuanceFailed, IssuancePending
from services.common.contracts.fields import ErrorInfo
from services.common.contracts.requests import IssueRequested
from services.common.contracts.signing import signed
from services.common.contracts.topics import Topics
from services.common.db import make_engine
from services.common.kafka_config import producer_kwargs
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.topics_admin import delete_topics, ensure_topics
from services.gateway.api_tokens import create_token
from services.gateway.app import create_app
from services.gateway.policy.tokens import Role
from services.gateway.settings import GatewaySettings
from tests.conftest import poll_until
from tests.deployer_support import MiniCA
from tests.gateway_fixtures import HMAC_KEY, SECRETS_KEY, _csr, seed
from tests.integration.test_gateway_issued_live import _commands, _issued, _send

pytestmark = pytest.mark.integration


async def test_the_status_of_a_request_comes_from_the_gateways_own_fold(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}.certrail")
    kafka = kafka_settings.model_copy(update={"topic_prefix": topics.prefix})
    created = [*topics.fixed(), topics.commands("emca")]
    await ensure_topics(kafka_settings, created, partitions=1)
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'gw.db'}")
    upgrade(db)
    seeded = make_engine(db)
    seed(seeded)  # connector emca, profile web (requester ci-pipeline, HMAC key k1)
    token, _ = create_token(seeded, identity="ci-pipeline", role=Role.REQUESTER, profiles=None, description=None,
                            created_by="tests", now=datetime.now(UTC) - timedelta(seconds=1), expires_at=None)
    seeded.dispose()
    settings = GatewaySettings(kafka=kafka, db=db, group_id=f"gw-{uuid.uuid4().hex[:8]}", scheduler_enabled=False,
                               secrets=SecretsSettings(keys=SecretStr(SECRETS_KEY)))
    app, runtime = create_app(settings)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway",
                               headers={"Authorization": f"Bearer {token.token}"})
    producer = AIOKafkaProducer(**producer_kwargs(kafka))
    await producer.start()
    await runtime.broker.start()
    runtime.service.start_consumers()

    async def status() -> dict[str, Any]:
        answer = await client.get("/v1/requests/req-1")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    async def state_is(expected: str) -> dict[str, Any] | None:
        found = await status()
        return found if found["state"] == expected else None

    def folds(outcome: str) -> float | None:
        return runtime.registry.get_sample_value("certrail_gateway_request_status_folds_total", {"outcome": outcome})

    try:
        issue = signed(IssueRequested(request_id="req-1", requester="ci-pipeline", profile="web", certificate_id="www",
                                      csr=_csr(), sans=["dns:www.example.com"]), "k1", HMAC_KEY)
        await _send(producer, topics.requests, "www", issue, "ev-req-1")
        command = (await _commands(kafka, topics.commands("emca"), "req-1")).data
        assert isinstance(command, IssueCertificate)
        assert ((await status())["status"], (await status())["state"]) == ("accepted", "queued")  # nothing folded yet

        pending = IssuancePending(issuance_id=command.issuance_id, certificate_id="www", request_id="req-1",
                                  connector="emca", ca_request_id="ca-1")
        await _send(producer, topics.issuer_events, "www", pending, "ev-pending")
        found = await poll_until(lambda: state_is("pending_approval"), "the gateway to fold the IssuancePending", 60)
        assert found["result"] == {"ca_request_id": "ca-1", "issuance_id": command.issuance_id}  # type: ignore[index]

        ca = MiniCA()
        await _send(producer, topics.issuer_events, "www", _issued(command, ca, 0x1A2B), "ev-issued")
        found = await poll_until(lambda: state_is("issued"), "the gateway to fold the CertificateIssued", 60)
        result = found["result"]  # type: ignore[index]
        assert (result["serial"], result["chain"], result["issuance_id"]) == ("1a2b", list(ca.chain), command.issuance_id)
        assert result["certificate"].startswith("-----BEGIN CERTIFICATE-----")

        # a forged failure about another certificate under this request id, one for a request nobody made
        def failure(request_id: str, certificate_id: str) -> IssuanceFailed:
            return IssuanceFailed(issuance_id=command.issuance_id, certificate_id=certificate_id, request_id=request_id,
                                  connector="emca", error=ErrorInfo(code=ErrorCode.CA_REJECTED, message="forged"))

        await _send(producer, topics.issuer_events, "forged", failure("req-1", "forged"), "ev-forged")
        await _send(producer, topics.issuer_events, "www", failure("nobody-1", "www"), "ev-nobody")
        await poll_until(lambda: folds("certificate_mismatch") == 1 and folds("unknown_request") == 1,
                         lambda: f"both ignored (mismatch {folds('certificate_mismatch')}, unknown {folds('unknown_request')})",
                         60)
        after = await status()
        assert (after["state"], after["result"]) == ("issued", result)
        assert folds("folded") == 2
    finally:
        await runtime.service.stop_consumers()
        await runtime.broker.stop()
        await producer.stop()
        await client.aclose()
        runtime.engine.dispose()
        await delete_topics(kafka_settings, created)
