"""Each service's app, on FastStream's in-memory test broker: a poison record
on each topic it consumes is dead-lettered with its reason, and so is a valid
message of a type whose producer does not own that topic (PRODUCER_NOT_ALLOWED);
the consumer goes on. (The
auditor stores every record instead: tests/integration/test_audit_*.py; the issuer
runs its own aiokafka loop: tests/integration/test_issuer_sim.py.)
(The same behaviour against a real broker: tests/integration/test_services_live.py.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faststream.kafka import TestKafkaBroker

from services.common.contracts.catalog import CATALOG
from services.common.contracts.deadletter import DeadLetter
from services.common.contracts.envelope import decode, encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateDeployed
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.deployer.app import create_app as deployer_app
from services.deployer.settings import DeployerSettings
from services.gateway.app import create_app as gateway_app
from services.gateway.settings import GatewaySettings
from tests.unit.examples import CERT_ID, NOW, examples

CASES: list[tuple[str, Callable[..., Any], type, str]] = [
    ("gateway", gateway_app, GatewaySettings, "certrail.requests"),
    ("gateway", gateway_app, GatewaySettings, "certrail.events.issuer"),
    ("deployer", deployer_app, DeployerSettings, "certrail.provisioning"),
    ("deployer", deployer_app, DeployerSettings, "certrail.events.gateway"),
    ("deployer", deployer_app, DeployerSettings, "certrail.events.issuer"),
]


@pytest.mark.parametrize(("service", "factory", "settings_cls", "topic"), CASES, ids=[f"{c[0]}:{c[3]}" for c in CASES])
async def test_poison_is_dead_lettered_and_consumer_goes_on(
    tmp_path: Path, service: str, factory: Callable[..., Any], settings_cls: type, topic: str
) -> None:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    upgrade(db)
    settings = settings_cls(db=db, http_port=0)
    _app, runtime = factory(settings)
    dead: list[bytes] = []

    @runtime.broker.subscriber("certrail.deadletter", group_id="test-observer")
    async def capture(body: bytes) -> None:
        dead.append(body)

    async with TestKafkaBroker(runtime.broker):  # what the service publishes
        await runtime.deliver(topic, b"{not json", b"k1")
        valid = encode(make_event(examples()[CertificateDeployed], id="e-1", source="/t", time=NOW, subject=CERT_ID))
        await runtime.deliver(topic, valid, CERT_ID.encode())
        await runtime.deliver(topic, b"[]", b"k2")

    letters = [decode(raw if isinstance(raw, bytes) else json.dumps(raw).encode(), CATALOG).data for raw in dead]
    assert all(isinstance(letter, DeadLetter) for letter in letters)
    assert [(letter.code, letter.source.key, letter.consumer) for letter in letters] == [
        (ErrorCode.UNDECODABLE, "k1", service),
        (ErrorCode.PRODUCER_NOT_ALLOWED, CERT_ID, service),  # only the deployer's events topic carries it
        (ErrorCode.UNDECODABLE, "k2", service),
    ]
    consumed = runtime.registry.get_sample_value(
        "certrail_messages_consumed_total",
        {"service": service, "channel": topic.removeprefix("certrail."), "type": CertificateDeployed.TYPE,
         "outcome": "dead_lettered"},
    )
    assert consumed == 1.0
