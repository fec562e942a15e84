"""The issuer's internal connector API (services/issuer/registry/internal_api.py, decision 0034), over the real
registry with a fake emCA: the token and the acting identity are required, a change answers its admin events as
stored in the issuer's outbox (and the gateway's client folds them: the gateway's view), refusals keep their codes,
a body off the wire format is refused without echoing it, and a refusal reported by the gateway is recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from services.common.connectors.models import spec_to_wire
from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import decode
from services.common.db import make_engine, read_session
from services.common.emca.fake import FakeEmca
from services.common.emca.types import EmcaVersion
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway import connector_view
from services.gateway.api_connectors import _fold
from services.gateway.issuer_api import IssuerRefused
from tests.gateway_fixtures import INTERNAL_TOKEN, InProcessConnectors, issuer_connectors
from tests.unit.test_connector_registry import RecordingTopics
from tests.unit.test_connector_validation import spec_for


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'issuer.db'}")
    upgrade(db)
    return make_engine(db)


@pytest.fixture
async def rig(engine: Engine) -> AsyncIterator[tuple[InProcessConnectors, FakeEmca]]:
    emca = FakeEmca()
    connectors = issuer_connectors(engine, SecretBox([generate_key()]), connect=emca.connect, topics=RecordingTopics())
    yield connectors, emca
    await connectors.api.aclose()
    engine.dispose()


def _raw(connectors: InProcessConnectors) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=connectors.app), base_url="http://issuer")


def _view(engine: Engine, name: str) -> str | None:
    with read_session(engine) as session:
        return connector_view.live_status(session, name)


async def test_a_change_answers_its_events_and_the_gateway_folds_them(rig: tuple[InProcessConnectors, FakeEmca]) -> None:
    connectors, emca = rig
    spec = spec_for(emca, EmcaVersion.V4_2_4)
    answer = await connectors.api.create_connector(spec_to_wire(spec), "root-admin")
    assert (answer["connector"]["status"], answer["connector"]["password"]) == ("enabled", "***")
    [event] = [decode(e.encode(), CATALOG) for e in answer["events"]]
    assert [event.id] == [e.id for e in connectors.events()], "the event as stored in the issuer's outbox"
    assert (type(event.data).__name__, event.data.actor, event.source) == ("ConnectorCreated", "root-admin",
                                                                           "/certrail/issuer/config")
    assert _view(connectors.engine, spec.name) is None
    _fold(connectors.engine, answer)
    assert _view(connectors.engine, spec.name) == "enabled"
    _fold(connectors.engine, await connectors.api.deactivate_connector(spec.name, "maintenance", "root-admin"))
    assert _view(connectors.engine, spec.name) == "disabled"
    _fold(connectors.engine, await connectors.api.delete_connector(spec.name, "root-admin"))
    assert _view(connectors.engine, spec.name) is None
    assert [type(e.data).__name__ for e in connectors.events()] == ["ConnectorCreated", "ConnectorDeactivated",
                                                                  "ConnectorDeleted"]
    assert spec.secrets.password.get_secret_value() not in "".join(e.model_dump_json() for e in connectors.events())


async def test_refusals_keep_their_codes_and_are_recorded(rig: tuple[InProcessConnectors, FakeEmca]) -> None:
    connectors, emca = rig
    spec = spec_for(emca, EmcaVersion.V4_2_3)
    await connectors.api.create_connector(spec_to_wire(spec), "root-admin")
    with pytest.raises(IssuerRefused) as exists:
        await connectors.api.create_connector(spec_to_wire(spec), "root-admin")
    assert (exists.value.status, exists.value.code) == (409, "CONNECTOR_EXISTS")
    with pytest.raises(IssuerRefused) as missing:
        await connectors.api.update_connector("nope", {"concurrency": 2}, "root-admin")
    assert (missing.value.status, missing.value.code) == (404, "CONNECTOR_NOT_FOUND")
    await connectors.api.connector_refused("deleted", spec.name, "REQUESTER_NOT_AUTHORISED", "not an admin", {}, "alice")
    await connectors.api.connector_refused("created", "Not A Name", "SCHEMA_VIOLATION", "bad", {}, "alice")  # nothing named
    recorded = [(type(e.data).__name__, e.data.actor, e.data.outcome.value) for e in connectors.events()]
    assert recorded == [("ConnectorCreated", "root-admin", "succeeded"), ("ConnectorCreated", "root-admin", "refused"),
                        ("ConnectorDeleted", "alice", "refused")]  # an unknown connector's refused edit: nothing to audit


@pytest.mark.parametrize(("headers", "body", "status", "code"), [
    ({}, {}, 401, "UNAUTHENTICATED"),
    ({"Authorization": "Bearer " + INTERNAL_TOKEN.get_secret_value()}, {"concurrency": 2}, 400, "SCHEMA_VIOLATION"),
    ({"Authorization": "Bearer " + INTERNAL_TOKEN.get_secret_value(), "X-Certrail-Actor": "root-admin"},
     {"concurrency": "many", "password": "s3cret-value"}, 422, "INVALID_INPUT"),
    ({"Authorization": "Bearer " + INTERNAL_TOKEN.get_secret_value(), "X-Certrail-Actor": "root-admin"},
     [1, 2], 422, "INVALID_INPUT"),
])
async def test_the_call_itself_is_checked(rig: tuple[InProcessConnectors, FakeEmca], headers: dict[str, str], body: Any,
                                          status: int, code: str) -> None:
    connectors, emca = rig
    await connectors.api.create_connector(spec_to_wire(spec_for(emca, EmcaVersion.V4_2_4)), "root-admin")
    async with _raw(connectors) as client:
        answer = await client.patch("/internal/v1/connectors/c1", json=body, headers=headers)
    assert (answer.status_code, answer.json()["code"]) == (status, code)
    assert "s3cret-value" not in answer.text
